"""What the policy sources send and are sent (pure): strict wire models of their answers,
the plain values the clients return, and the request bodies. The contract is
docs/sources.md; ``cloud.sources`` does the HTTP and the checks that need the call's
context (which source was asked, about which vehicle).

Every model validates strictly (no coercion, bounded lengths, money as ``-?d.dd``); a
conversion raises ValueError when an answer is well formed but contradicts itself.
"""

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from agent.protocol import calendar

from .aggregate import SourcePolicy
from .tariff import ClaimsRecord, Vehicle

MAX_POLICIES: Final = 100
ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""A quote or order id."""
IDEMPOTENCY_KEY: Final = re.compile(r"^[\x21-\x7e]{1,255}$")
_VIN: Final = r"^[A-HJ-NPR-Z0-9]{17}$"
_MONEY: Final = r"^-?\d{1,9}\.\d{2}$"


@dataclass(frozen=True, slots=True)
class Premium:
    """A quote's premium lines (CNY); ``total`` = ``ctpl`` + ``vehicle_vessel_tax``."""

    base: Decimal
    floating_rate: Decimal
    ctpl: Decimal
    vehicle_vessel_tax: Decimal
    total: Decimal
    currency: str = "CNY"
    row: str | None = None
    """The floating-rate row applied (``A1``…``A6``, ``new``), when the insurer says."""
    tax_exemption: str | None = None
    """Why the tax is 0 (``new_energy``)."""


@dataclass(frozen=True, slots=True)
class Quote:
    """An insurer's priced offer, bindable until ``expires_at``."""

    quote_id: str
    insurer_code: str
    insurer_name: str
    start: date
    end: date
    expires_at: datetime
    premium: Premium
    start_rule: str = "midnight"
    """``midnight``: cover from 00:00 China time of ``start``; ``on_payment``: from payment."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A registered vehicle as the national platform knows it: its plate and facts."""

    vin: str
    plate: str
    vehicle: Vehicle


@dataclass(frozen=True, slots=True)
class Order:
    """A bound quote: pay at ``payment_url``; ``policy`` once paid and issued."""

    order_id: str
    quote_id: str
    amount: Decimal
    currency: str
    payment_url: str
    status: str
    paid_at: datetime | None
    policy: SourcePolicy | None
    created: bool = False
    """True when this call made the order (201); False when the key had made it before."""


# ---- wire models (strict) ----------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


Money = Annotated[str, Field(pattern=_MONEY)]


class WirePolicy(_Strict):
    policy_no: str = Field(min_length=4, max_length=40)
    insurer_code: str = Field(min_length=1, max_length=16)
    insurer_name: str = Field(min_length=1, max_length=64)
    plate: str = Field(min_length=2, max_length=16)
    vin: str = Field(pattern=_VIN)
    start: date
    end: date
    status: Literal["in_force", "cancelled"]
    issued_at: AwareDatetime
    starts_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError("the term ends before it starts")
        if self.starts_at is not None and calendar.china_date(self.starts_at) != self.start:
            raise ValueError("starts_at does not fall on the start date (China time)")
        return self

    def policy(self) -> SourcePolicy:
        return SourcePolicy(**self.model_dump())


class WireAnswer(_Strict):
    source: str
    as_of: AwareDatetime
    policies: list[WirePolicy] = Field(max_length=MAX_POLICIES)


class _WirePremium(_Strict):
    currency: Literal["CNY"]
    base: Money
    floating_rate: Money
    ctpl: Money
    vehicle_vessel_tax: Money
    total: Money
    row: str | None = Field(None, pattern=r"^(A[1-6]|new)$")
    tax_exemption: Literal["new_energy"] | None = None

    def premium(self) -> Premium:
        p = Premium(
            Decimal(self.base), Decimal(self.floating_rate), Decimal(self.ctpl),
            Decimal(self.vehicle_vessel_tax), Decimal(self.total), row=self.row,
            tax_exemption=self.tax_exemption,
        )  # fmt: skip
        if p.total != p.ctpl + p.vehicle_vessel_tax:
            raise ValueError("the premium's total is not ctpl + tax")
        return p


class WireQuote(_Strict):
    quote_id: str = Field(pattern=ID.pattern)
    insurer_code: str
    insurer_name: str = Field(min_length=1, max_length=64)
    start: date
    end: date
    expires_at: AwareDatetime
    premium: _WirePremium
    start_rule: Literal["midnight", "on_payment"] = "midnight"

    def quote(self) -> Quote:
        premium = self.premium.premium()
        if self.end < self.start:
            raise ValueError("the term ends before it starts")
        return Quote(self.quote_id, self.insurer_code, self.insurer_name, self.start, self.end,
                     self.expires_at, premium, self.start_rule)  # fmt: skip


class _WireClaims(_Strict):
    first_insured: bool
    claim_free_years: int = Field(ge=0, le=99)
    at_fault_claims_last_year: int = Field(ge=0, le=99)
    fatal_last_year: bool


class _WireVehicle(_Strict):
    vin: str = Field(pattern=_VIN)
    plate: str = Field(min_length=2, max_length=16)
    region: str = Field(pattern=r"^[0-9]{6}$")
    kind: str = Field(pattern=r"^[a-z_]{1,32}$")
    seats: int = Field(ge=1, le=99)
    displacement_l: str = Field(pattern=r"^[0-9]{1,2}\.[0-9]{1,3}$")
    fuel: str = Field(pattern=r"^[a-z_]{1,16}$")
    claims: _WireClaims

    def registered(self) -> Registered:
        c = self.claims
        claims = ClaimsRecord(first_insured=c.first_insured,
                              claim_free_years=min(c.claim_free_years, 3),
                              at_fault_claims_last_year=c.at_fault_claims_last_year,
                              fatal_last_year=c.fatal_last_year)  # fmt: skip
        vehicle = Vehicle(region=self.region, kind=self.kind, seats=self.seats,
                          displacement_l=Decimal(self.displacement_l), fuel=self.fuel,
                          claims=claims)  # fmt: skip
        return Registered(self.vin, self.plate, vehicle)


class WireVehicleAnswer(_Strict):
    source: str
    as_of: AwareDatetime
    vehicle: _WireVehicle


class WireOrder(_Strict):
    order_id: str = Field(pattern=ID.pattern)
    quote_id: str = Field(pattern=ID.pattern)
    amount: Money
    currency: Literal["CNY"]
    payment_url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    status: Literal["awaiting_payment", "paid"]
    paid_at: AwareDatetime | None = None
    policy: WirePolicy | None = None

    def order(self) -> Order:
        policy = None if self.policy is None else self.policy.policy()
        return Order(self.order_id, self.quote_id, Decimal(self.amount), self.currency,
                     self.payment_url, self.status, self.paid_at, policy)  # fmt: skip


def normal_plate(plate: str) -> str:
    """A plate as compared: no spaces or middle dot, upper case."""
    return plate.strip().replace("·", "").replace(" ", "").upper()


def litres(value: Decimal) -> str:
    """Litres as the wire writes them: a decimal with a point (``1.5``, ``0.0``)."""
    text = format(value, "f")
    return text if "." in text else f"{text}.0"


def quote_body(plate: str, vin: str, vehicle: Vehicle, start: date | None) -> dict[str, Any]:
    """The ``POST /v1/quotes`` body for ``vehicle`` (``start`` None: the earliest allowed)."""
    c = vehicle.claims
    return {
        "plate": plate, "vin": vin, "region": vehicle.region, "kind": vehicle.kind,
        "seats": vehicle.seats, "displacement_l": litres(vehicle.displacement_l),
        "fuel": vehicle.fuel,
        "claims": {
            "first_insured": c.first_insured, "claim_free_years": c.claim_free_years,
            "at_fault_claims_last_year": c.at_fault_claims_last_year,
            "fatal_last_year": c.fatal_last_year,
        },
        "start": None if start is None else start.isoformat(),
    }  # fmt: skip
