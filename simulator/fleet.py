"""A synthetic fleet's policies: varied end dates so every status shows up in a demo."""

from datetime import date, datetime, timedelta
from typing import Final

from agent.protocol import calendar

INSURERS: Final = (("PICC", "中国人保财险"), ("PINGAN", "平安产险"), ("CPIC", "太平洋产险"))
# Days until the end date, cycled over the fleet: mostly covered, some in every
# reminder stage, one lapsed; every tenth car has no policy on record.
_DAYS_LEFT: Final = (200, 120, 45, 29, 14, 6, 2, 0, -3, 300)


def synthetic_policies(ids: list[str], now: datetime, key: str = "vid") -> list[dict[str, str]]:
    """Policy rows for ``ids`` (vids, or VINs with ``key="vin"``); the 10th, 20th … get none."""
    today = calendar.china_date(now)
    rows = []
    for i, ident in enumerate(ids):
        if i % 10 == 9:
            continue
        end = today + timedelta(days=_DAYS_LEFT[i % len(_DAYS_LEFT)])
        start = _year_before(end)
        code, name = INSURERS[i % len(INSURERS)]
        rows.append(
            {
                key: ident,
                "insurer_code": code,
                "insurer_name": name,
                "policy_no_masked": f"PDZA{start.year}****{i % 10000:04d}",
                "coverage_start": start.isoformat(),
                "coverage_end": end.isoformat(),
                "source": "national",
                "verified_at": now.isoformat(),
                "plate": synthetic_plate(i),
            }
        )
    return rows


def synthetic_plate(i: int) -> str:
    """The plate of simulated car number ``i`` (a Shanghai plate)."""
    return f"沪A{(i * 7919) % 100000:05d}"


def synthetic_vin(i: int) -> str:
    """The VIN of simulated car number ``i`` (17 characters of the VIN alphabet)."""
    return f"LSGCAR{i:011d}"


def _year_before(end: date) -> date:
    """The start of the one-year term that ends on ``end``."""
    try:
        return end.replace(year=end.year - 1) + timedelta(days=1)
    except ValueError:  # 29 Feb
        return date(end.year - 1, 3, 1)
