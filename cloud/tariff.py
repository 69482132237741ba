"""One year of CTPL (交强险) and its vehicle and vessel tax (车船税). Pure: no I/O, no clock.

    ctpl  = base × (1 + A)        rounded half-up to the fen (Decimal, never float)
    total = ctpl + vehicle_vessel_tax

1. ``base`` by vehicle kind and seats, from the 2008 national base-rate table
   (《机动车交通事故责任强制保险基础费率表》(2008版); seat bands include their start and
   exclude their end, 含起点不含终点): ``family_car`` (家庭自用汽车) and
   ``enterprise_passenger`` (企业非营业客车) only; every other kind is refused.
2. ``A`` from the region's scheme (方案 A..E of 银保监会《关于调整交强险责任限额和费率浮动
   系数的公告》, 2020年9月) and the claims record: rows A1..A6, or no floating (``new``) for a
   vehicle insured for the first time. A region is a GB/T 2260 code: the city (the five
   计划单列市) is looked up first, then the province. When several rows apply, the highest
   rate wins (A is one row, never a sum): A6 > A5 > A4 > the claim-free rows.
3. The tax of a passenger car (乘用车, at most 9 seats) by displacement band, from the
   province's table (cities use their province's); new-energy vehicles (``bev``, ``phev``,
   ``fcev``) pay none, with the reason ``new_energy`` (财税〔2018〕74号). More than 9 seats is
   a 商用客车, taxed per vehicle: not modelled, refused when a tax is due.

Errors (``str(err)`` is ``"<code>: <message>"``)::

    ValueError
    └── TariffError                   .code, .message
        ├── vehicle_kind_unsupported  a kind with no base premium here (taxi, truck, …)
        ├── region_unsupported        not a 6-digit code of one of the 31 mainland provinces,
        │                             or a plate whose abbreviation is not one of theirs
        ├── tax_table_missing         a tax is due, but no table is kept for the province
        │                             (or the vehicle is a 商用客车)
        └── bad_facts                 seats, displacement, fuel or claims record out of range
"""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Final, Literal

ErrorCode = Literal[
    "vehicle_kind_unsupported", "region_unsupported", "tax_table_missing", "bad_facts"
]
Scheme = Literal["A", "B", "C", "D", "E"]
Row = Literal["new", "A1", "A2", "A3", "A4", "A5", "A6"]
Exemption = Literal["new_energy"]

FEN: Final = Decimal("0.01")
MAX_SEATS: Final = 60
PASSENGER_CAR_MAX_SEATS: Final = 9
"""乘用车: at most 9 seats (车船税法 annex); more is a 商用客车, taxed per vehicle."""
NEW_ENERGY: Final = frozenset({"bev", "phev", "fcev"})
FUELS: Final = frozenset({"petrol", "diesel", "hybrid"}) | NEW_ENERGY
"""``hybrid`` is a non-plug-in hybrid: taxed in full (the 节能汽车 half rate is not modelled)."""

_D = Decimal
BASE_PREMIUM: Final[Mapping[str, tuple[tuple[int, Decimal], ...]]] = MappingProxyType({
    "family_car": ((1, _D(950)), (6, _D(1100))),
    "enterprise_passenger": ((1, _D(1000)), (6, _D(1130)), (10, _D(1220)), (20, _D(1270))),
})  # fmt: skip
"""Per kind: (from this many seats, base premium CNY), ascending; a band runs to the next."""

ROWS: Final[tuple[Row, ...]] = ("A1", "A2", "A3", "A4", "A5", "A6")
"""No at-fault accident in 1, 2, 3+ years; one, two or more at-fault non-fatal accidents
last year; an at-fault fatal accident last year."""
SCHEME_RATES: Final[Mapping[Scheme, tuple[Decimal, ...]]] = MappingProxyType({
    "A": (_D("-0.30"), _D("-0.40"), _D("-0.50"), _D("0.00"), _D("0.10"), _D("0.30")),
    "B": (_D("-0.25"), _D("-0.35"), _D("-0.45"), _D("0.00"), _D("0.10"), _D("0.30")),
    "C": (_D("-0.20"), _D("-0.30"), _D("-0.40"), _D("0.00"), _D("0.10"), _D("0.30")),
    "D": (_D("-0.15"), _D("-0.25"), _D("-0.35"), _D("0.00"), _D("0.10"), _D("0.30")),
    "E": (_D("-0.10"), _D("-0.20"), _D("-0.30"), _D("0.00"), _D("0.10"), _D("0.30")),
})  # fmt: skip
"""Per scheme, the rate A of rows A1..A6 (2020 notice)."""

PROVINCES: Final[Mapping[str, tuple[str, Scheme]]] = MappingProxyType({
    "110000": ("北京市", "D"),
    "120000": ("天津市", "D"),
    "130000": ("河北省", "D"),
    "140000": ("山西省", "C"),
    "150000": ("内蒙古自治区", "A"),
    "210000": ("辽宁省", "E"),
    "220000": ("吉林省", "C"),
    "230000": ("黑龙江省", "C"),
    "310000": ("上海市", "E"),
    "320000": ("江苏省", "E"),
    "330000": ("浙江省", "E"),
    "340000": ("安徽省", "E"),
    "350000": ("福建省", "E"),
    "360000": ("江西省", "E"),
    "370000": ("山东省", "E"),
    "410000": ("河南省", "E"),
    "420000": ("湖北省", "E"),
    "430000": ("湖南省", "E"),
    "440000": ("广东省", "E"),
    "450000": ("广西壮族自治区", "B"),
    "460000": ("海南省", "A"),
    "500000": ("重庆市", "E"),
    "510000": ("四川省", "E"),
    "520000": ("贵州省", "E"),
    "530000": ("云南省", "B"),
    "540000": ("西藏自治区", "A"),
    "610000": ("陕西省", "B"),
    "620000": ("甘肃省", "C"),
    "630000": ("青海省", "A"),
    "640000": ("宁夏回族自治区", "D"),
    "650000": ("新疆维吾尔自治区", "C"),
})  # fmt: skip
"""The 31 mainland provinces (GB/T 2260): name and 2020 scheme."""
CITIES: Final[Mapping[str, tuple[str, Scheme]]] = MappingProxyType({
    "440300": ("深圳市", "E"),
    "350200": ("厦门市", "E"),
    "210200": ("大连市", "E"),
    "370200": ("青岛市", "E"),
    "330200": ("宁波市", "E"),
})  # fmt: skip
"""The separately planned cities (计划单列市), which the notice lists on their own."""
PLATE_PROVINCES: Final[Mapping[str, str]] = MappingProxyType({
    "京": "110000", "津": "120000", "冀": "130000", "晋": "140000", "蒙": "150000",
    "辽": "210000", "吉": "220000", "黑": "230000", "沪": "310000", "苏": "320000",
    "浙": "330000", "皖": "340000", "闽": "350000", "赣": "360000", "鲁": "370000",
    "豫": "410000", "鄂": "420000", "湘": "430000", "粤": "440000", "桂": "450000",
    "琼": "460000", "渝": "500000", "川": "510000", "贵": "520000", "云": "530000",
    "藏": "540000", "陕": "610000", "甘": "620000", "青": "630000", "宁": "640000",
    "新": "650000",
})  # fmt: skip
"""A plate's first character (the province abbreviation on plates) → province code."""

TAX_BAND_UPTO_L: Final = (_D("1.0"), _D("1.6"), _D("2.0"), _D("2.5"), _D("3.0"), _D("4.0"))
"""Upper bounds of the displacement bands, litres, each included; a 7th band is above 4.0."""
NATIONAL_TAX_RANGES: Final[tuple[tuple[Decimal, Decimal], ...]] = tuple(
    (_D(low), _D(high))
    for low, high in (
        (60, 360), (300, 540), (360, 660), (660, 1200), (1200, 2400), (2400, 3600), (3600, 5400)
    )
)  # fmt: skip
"""车船税法 annex (车船税税目税额表): the yearly range per band, CNY, within which a
province sets its figure."""
PROVINCIAL_TAX: Final[Mapping[str, tuple[Decimal, ...]]] = MappingProxyType({
    "310000": tuple(map(_D, (180, 360, 450, 720, 1500, 3000, 4500))),
    "110000": tuple(map(_D, (300, 420, 480, 900, 1920, 3480, 5280))),
    "440000": tuple(map(_D, (180, 360, 420, 720, 1800, 3000, 4500))),
})  # fmt: skip
"""Yearly tax per band, CNY, by province: transcribed from each province's implementing
measures of the 车船税法; check against the current notice before production use."""


class TariffError(ValueError):
    """A vehicle this tariff refuses to price: a stable ``code`` and a human ``message``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClaimsRecord:
    """The claims facts A depends on; ``claim_free_years`` is capped at 3 (three or more)."""

    first_insured: bool
    """No record at all: insured for the first time (a new car); then the rest is 0."""
    claim_free_years: int
    """Consecutive policy years without an at-fault accident, up to last year."""
    at_fault_claims_last_year: int
    """At-fault accidents last year that killed no one."""
    fatal_last_year: bool
    """An at-fault accident last year that killed someone."""

    def __post_init__(self) -> None:
        for name in ("first_insured", "fatal_last_year"):
            if not isinstance(getattr(self, name), bool):
                raise TariffError("bad_facts", f"{name} must be a bool")
        for name in ("claim_free_years", "at_fault_claims_last_year"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TariffError("bad_facts", f"{name} must be an int >= 0, not {value!r}")
        accidents = self.at_fault_claims_last_year > 0 or self.fatal_last_year
        if self.first_insured and (self.claim_free_years or accidents):
            raise TariffError("bad_facts", "a vehicle insured for the first time has no record")
        if not self.first_insured and self.claim_free_years == 0 and not accidents:
            raise TariffError(
                "bad_facts", "insured before with no at-fault accident last year: at least 1 "
                "claim-free year",
            )  # fmt: skip
        object.__setattr__(self, "claim_free_years", min(self.claim_free_years, 3))


@dataclass(frozen=True, slots=True)
class Vehicle:
    """What the tariff needs of a vehicle; ``displacement_l`` is a Decimal (0 for a bev)."""

    region: str
    kind: str
    seats: int
    displacement_l: Decimal
    fuel: str
    claims: ClaimsRecord


@dataclass(frozen=True, slots=True)
class Premium:
    """One year's lines in CNY, and which scheme and row made the rate (to explain it)."""

    base: Decimal
    floating_rate: Decimal
    row: Row
    scheme: Scheme
    ctpl: Decimal
    vehicle_vessel_tax: Decimal
    tax_exemption: Exemption | None

    @property
    def total(self) -> Decimal:
        """CTPL plus the tax."""
        return self.ctpl + self.vehicle_vessel_tax

    def wire(self) -> dict[str, str | None]:
        """As a quote's ``premium`` object: amounts and the rate as strings with two places."""
        return {
            "currency": "CNY",
            "base": money(self.base),
            "floating_rate": money(self.floating_rate),
            "row": self.row,
            "scheme": self.scheme,
            "ctpl": money(self.ctpl),
            "vehicle_vessel_tax": money(self.vehicle_vessel_tax),
            "tax_exemption": self.tax_exemption,
            "total": money(self.total),
        }


def money(amount: Decimal) -> str:
    """``amount`` as a decimal string with two places, rounded half-up."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise TariffError("bad_facts", f"not a finite Decimal amount: {amount!r}")
    return f"{amount.quantize(FEN, rounding=ROUND_HALF_UP)}"


def _region(code: str) -> tuple[str, Scheme]:
    """(name, scheme) of the city if it is listed, else of its province."""
    if not (isinstance(code, str) and len(code) == 6 and code.isascii() and code.isdigit()):
        raise TariffError("region_unsupported", f"not a 6-digit GB/T 2260 code: {code!r}")
    found = CITIES.get(code[:4] + "00") or PROVINCES.get(code[:2] + "0000")
    if found is None:
        raise TariffError("region_unsupported", f"{code} is in none of the 31 provinces")
    return found


def scheme_of(region: str) -> Scheme:
    """The 2020 floating-rate scheme ("A".."E") of a GB/T 2260 region code."""
    return _region(region)[1]


def region_name(code: str) -> str:
    """The Chinese name of the listed city holding ``code``, else of its province."""
    return _region(code)[0]


def region_of_plate(plate: str) -> str:
    """The province code of a plate, from its first character (沪A12345 → 310000)."""
    first = plate.strip()[:1] if isinstance(plate, str) else ""
    if first not in PLATE_PROVINCES:
        raise TariffError("region_unsupported", f"no province abbreviation {first!r} on plates")
    return PLATE_PROVINCES[first]


def floating_rate(region: str, claims: ClaimsRecord) -> tuple[Row, Decimal]:
    """The row that applies and its rate A: the highest of those that apply, 0 if new."""
    rates = SCHEME_RATES[scheme_of(region)]
    if claims.first_insured:
        return "new", Decimal("0.00")
    applies = [i for i, hit in enumerate(_row_facts(claims)) if hit]
    best = max(applies, key=lambda i: rates[i])
    return ROWS[best], rates[best]


def _row_facts(claims: ClaimsRecord) -> tuple[bool, ...]:
    """Whether each of rows A1..A6 describes ``claims``."""
    years, count = claims.claim_free_years, claims.at_fault_claims_last_year
    return (years == 1, years == 2, years >= 3, count == 1, count >= 2, claims.fatal_last_year)


def _check_seats(seats: int) -> None:
    if not isinstance(seats, int) or isinstance(seats, bool) or not 1 <= seats <= MAX_SEATS:
        raise TariffError("bad_facts", f"seats must be 1..{MAX_SEATS}, not {seats!r}")


def base_premium(kind: str, seats: int) -> Decimal:
    """The base CTPL premium (CNY) of a kind of vehicle with ``seats`` seats."""
    bands = BASE_PREMIUM.get(kind)
    if bands is None:
        raise TariffError("vehicle_kind_unsupported", f"no base premium for {kind!r} here")
    _check_seats(seats)
    return next(base for start, base in reversed(bands) if seats >= start)


def vehicle_vessel_tax(
    region: str, displacement_l: Decimal, fuel: str, *, seats: int
) -> tuple[Decimal, Exemption | None]:
    """The year's tax (CNY) and the exemption that zeroed it, if any."""
    _region(region)
    _check_seats(seats)
    if fuel not in FUELS:
        raise TariffError("bad_facts", f"unknown fuel {fuel!r}")
    # A float is refused, not converted: 1.6 as a float is above the 1.6 L band edge.
    if not isinstance(displacement_l, Decimal) or not displacement_l.is_finite():
        raise TariffError("bad_facts", f"displacement must be a finite Decimal: {displacement_l!r}")
    if displacement_l < 0:
        raise TariffError("bad_facts", f"negative displacement {displacement_l}")
    if fuel in NEW_ENERGY:
        return Decimal("0.00"), "new_energy"
    if displacement_l == 0:
        raise TariffError("bad_facts", f"a {fuel} engine has a displacement above 0")
    if seats > PASSENGER_CAR_MAX_SEATS:
        raise TariffError("tax_table_missing", f"{seats} seats: a 商用客车, taxed per vehicle")
    table = PROVINCIAL_TAX.get(region[:2] + "0000")
    if table is None:
        raise TariffError("tax_table_missing", f"no 车船税 table kept for {region_name(region)}")
    band = next((i for i, upto in enumerate(TAX_BAND_UPTO_L) if displacement_l <= upto), 6)
    return table[band], None


def premium(vehicle: Vehicle) -> Premium:
    """One year's CTPL and tax for ``vehicle``; TariffError for what cannot be priced."""
    base = base_premium(vehicle.kind, vehicle.seats)
    scheme = scheme_of(vehicle.region)
    if not isinstance(vehicle.claims, ClaimsRecord):
        raise TariffError("bad_facts", "claims must be a ClaimsRecord")
    row, rate = floating_rate(vehicle.region, vehicle.claims)
    ctpl = (base * (1 + rate)).quantize(FEN, rounding=ROUND_HALF_UP)
    tax, exemption = vehicle_vessel_tax(
        vehicle.region, vehicle.displacement_l, vehicle.fuel, seats=vehicle.seats
    )
    return Premium(base, rate, row, scheme, ctpl, tax, exemption)
