"""CTPL premium arithmetic as the simulated insurers quote it (pure, ``decimal`` only).

ctpl = base × (1 + A), rounded half-up to the fen; the vehicle and vessel tax (车船税)
is its own line; total = ctpl + tax. Base: a private car under 6 seats 950 CNY, 6 or
more 1100. A is the 2020-reform floating rate (方案一) for the claims history. The tax
goes by engine displacement, in bands whose upper bounds include their limit.
"""

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Final, Literal, get_args

from agent.protocol import calendar

History = Literal[
    "none_1y", "none_2y", "none_3y", "one_claim", "two_plus_claims", "fatal", "new_vehicle"
]
HISTORIES: Final[tuple[str, ...]] = get_args(History)
Use = Literal["private"]

FEN: Final = Decimal("0.01")
BASE_UNDER_6_SEATS: Final = Decimal("950")
BASE_6_SEATS_UP: Final = Decimal("1100")
FLOATING_RATE: Final[dict[str, Decimal]] = {
    "none_1y": Decimal("-0.30"),
    "none_2y": Decimal("-0.40"),
    "none_3y": Decimal("-0.50"),
    "one_claim": Decimal("0.00"),
    "two_plus_claims": Decimal("0.10"),
    "fatal": Decimal("0.30"),
    "new_vehicle": Decimal("0.00"),
}
"""A by claims history: no claim for 1, 2, 3+ years; one claim; two or more; a fatal one."""
TAX_BANDS: Final[tuple[tuple[Decimal, Decimal], ...]] = (
    (Decimal("1.0"), Decimal("180")),
    (Decimal("1.6"), Decimal("360")),
    (Decimal("2.0"), Decimal("450")),
    (Decimal("2.5"), Decimal("720")),
    (Decimal("3.0"), Decimal("1800")),
    (Decimal("4.0"), Decimal("3000")),
)
"""(displacement up to and including, litres; yearly tax, CNY)."""
TAX_ABOVE_4_L: Final = Decimal("4500")


@dataclass(frozen=True, slots=True)
class Premium:
    """One year's premium lines, in CNY."""

    base: Decimal
    floating_rate: Decimal
    ctpl: Decimal
    vehicle_vessel_tax: Decimal

    @property
    def total(self) -> Decimal:
        return self.ctpl + self.vehicle_vessel_tax

    def wire(self) -> dict[str, str]:
        """As the quote's ``premium`` object: decimal strings with two places."""
        return {
            "currency": "CNY",
            "base": money(self.base),
            "floating_rate": f"{self.floating_rate.quantize(FEN)}",
            "ctpl": money(self.ctpl),
            "vehicle_vessel_tax": money(self.vehicle_vessel_tax),
            "total": money(self.total),
        }


def money(amount: Decimal) -> str:
    """``amount`` as a decimal string with two places (half-up)."""
    return f"{amount.quantize(FEN, rounding=ROUND_HALF_UP)}"


def base_premium(seats: int, use: str = "private") -> Decimal:
    """The base CTPL premium of a private car by seats."""
    if use != "private":
        raise ValueError(f"only private cars are quoted, not {use!r}")
    if seats < 1:
        raise ValueError("a car has at least one seat")
    return BASE_UNDER_6_SEATS if seats < 6 else BASE_6_SEATS_UP


def vehicle_vessel_tax(displacement_l: Decimal) -> Decimal:
    """The yearly vehicle and vessel tax for an engine of ``displacement_l`` litres."""
    if displacement_l <= 0:
        raise ValueError("displacement must be positive")
    for upto, tax in TAX_BANDS:
        if displacement_l <= upto:
            return tax
    return TAX_ABOVE_4_L


def premium_for(seats: int, use: str, displacement_l: float | Decimal, history: str) -> Premium:
    """The premium lines for one year; ValueError for what cannot be quoted."""
    if history not in FLOATING_RATE:
        raise ValueError(f"unknown claims history {history!r}")
    base = base_premium(seats, use)
    rate = FLOATING_RATE[history]
    # str() first: Decimal(1.6) is 1.600000000000000088817841970012523…, above the band.
    litres = displacement_l if isinstance(displacement_l, Decimal) else Decimal(str(displacement_l))
    ctpl = (base * (1 + rate)).quantize(FEN, rounding=ROUND_HALF_UP)
    return Premium(base, rate, ctpl, vehicle_vessel_tax(litres))


def term_for(start: date) -> tuple[date, date]:
    """The one-year term that starts on ``start``: (start, start + 1 year - 1 day)."""
    return start, calendar.one_year_end(start)
