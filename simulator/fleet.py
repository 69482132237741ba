"""A synthetic fleet: policies with varied end dates, and each car's facts as the national
platform records them (region, kind, seats, displacement, fuel, claims record).

``synthetic_policies`` is the test fleet (every reminder stage, one lapsed, every tenth
with no policy). ``demo_policies`` is the demo's: the first ten cars show every case a
driver meets, the uncovered ones first (see ``DEMO_ROLES``).
"""

from datetime import date, datetime, timedelta
from typing import Any, Final

from agent.protocol import calendar

INSURERS: Final = (("PICC", "中国人保财险"), ("PINGAN", "平安产险"), ("CPIC", "太平洋产险"))
# Days until the end date, cycled over the fleet: mostly covered, some in every
# reminder stage, one lapsed; every tenth car has no policy on record.
_DAYS_LEFT: Final = (200, 120, 45, 29, 14, 6, 2, 0, -3, 300)

DEMO_ROLES: Final[tuple[tuple[int | None, str], ...]] = (
    (200, "covered (a Beijing car)"),
    (-2, "lapsed, parked, electric: renews on its head unit"),
    (45, "covered (a Shenzhen car)"),
    (29, "30-day prompt: renews on its head unit"),
    (14, "15-day prompt: renewed at a counter"),
    (6, "7-day prompt; drives and parks in turn"),
    (2, "3-day prompt (a 7-seat car)"),
    (0, "cover ends today at 24:00"),
    (-3, "lapsed and driving: a fleet alert"),
    (None, "a term bought after a lapse, starting tomorrow; driving: a fleet alert"),
)
"""The demo's cars by index mod 10: days until the end (None: the term starts tomorrow),
and what the car shows. Cars 10, 20, … have no policy on record."""
LAPSED_RENEWS: Final = 1
RENEWS: Final = 3
COUNTER: Final = 4
COMMUTER: Final = 5
LAPSED_DRIVING: Final = 8
PENDING_DRIVING: Final = 9


def synthetic_policies(ids: list[str], now: datetime, key: str = "vid") -> list[dict[str, str]]:
    """Policy rows for ``ids`` (vids, or VINs with ``key="vin"``); the 10th, 20th … get none."""
    today = calendar.china_date(now)
    rows = []
    for i, ident in enumerate(ids):
        if i % 10 == 9:
            continue
        end = today + timedelta(days=_DAYS_LEFT[i % len(_DAYS_LEFT)])
        rows.append(_row(i, ident, key, _year_before(end), end, now, synthetic_plate(i)))
    return rows


def demo_policies(vins: list[str], now: datetime) -> list[dict[str, str]]:
    """The demo's policy rows by VIN (``DEMO_ROLES``)."""
    today = calendar.china_date(now)
    rows = []
    for i, vin in enumerate(vins):
        days, _ = DEMO_ROLES[i % 10]
        if i >= 10 and i % 10 == 0:
            continue  # no policy on record
        if days is None:
            start = today + timedelta(days=1)
            end = calendar.one_year_end(start)
        else:
            end = today + timedelta(days=days)
            start = _year_before(end)
        rows.append(_row(i, vin, "vin", start, end, now, demo_plate(i)))
    return rows


def _row(
    i: int, ident: str, key: str, start: date, end: date, now: datetime, plate: str
) -> dict[str, str]:
    code, name = INSURERS[i % len(INSURERS)]
    return {
        key: ident,
        "insurer_code": code,
        "insurer_name": name,
        "policy_no_masked": f"PDZA{start.year}****{i % 10000:04d}",
        "coverage_start": start.isoformat(),
        "coverage_end": end.isoformat(),
        "source": "national",
        "verified_at": now.isoformat(),
        "plate": plate,
    }


def synthetic_plate(i: int) -> str:
    """The plate of simulated car number ``i`` (a Shanghai plate)."""
    return f"沪A{(i * 7919) % 100000:05d}"


def demo_plate(i: int) -> str:
    """The demo car ``i``'s plate: Shanghai mostly, a green new-energy plate (沪AD…) for
    the electric car, and a Beijing and a Shenzhen car."""
    digits = f"{(i * 7919) % 100000:05d}"
    prefix = {0: "京A", 1: "沪AD", 2: "粤B"}.get(i % 10, "沪A")
    return f"{prefix}{digits}"


def synthetic_vin(i: int) -> str:
    """The VIN of simulated car number ``i`` (17 characters of the VIN alphabet)."""
    return f"LSGCAR{i:011d}"


def vehicle_facts(i: int, vin: str, plate: str) -> dict[str, Any]:
    """Car ``i``'s facts as the national platform records them (a ``VehicleRecord``):
    a 5-seat 1.5 L petrol family car with one claim-free year, registered where its
    plate says; demo car 1 (mod 10) is a battery-electric car with two claim-free years,
    car 6 a 7-seat 2.0 L car with three or more."""
    from cloud.tariff import region_of_plate

    facts: dict[str, Any] = {
        "vin": vin, "plate": plate, "region": region_of_plate(plate), "kind": "family_car",
        "seats": 5, "displacement_l": "1.5", "fuel": "petrol",
        "claims": {"first_insured": False, "claim_free_years": 1,
                   "at_fault_claims_last_year": 0, "fatal_last_year": False},
    }  # fmt: skip
    if i % 10 == 1:
        facts |= {"displacement_l": "0.0", "fuel": "bev"}
        facts["claims"] = facts["claims"] | {"claim_free_years": 2}
    elif i % 10 == 6:
        facts |= {"seats": 7, "displacement_l": "2.0"}
        facts["claims"] = facts["claims"] | {"claim_free_years": 3}
    return facts


def _year_before(end: date) -> date:
    """The start of the one-year term that ends on ``end``."""
    try:
        return end.replace(year=end.year - 1) + timedelta(days=1)
    except ValueError:  # 29 Feb
        return date(end.year - 1, 3, 1)
