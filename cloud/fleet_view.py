"""What a fleet operator sees per vehicle: three separate truths, filtered and paged. Pure.

- **policy**: the status the car is told now (``cloud.policy.status_of``), end date, days
  left, a next term bought, and for a ``pending`` car (待生效: uncovered until its term
  begins) the instant cover starts;
- **link**: ``online`` if the cloud accepted a request from the car within
  ``online_within``, ``offline`` if it did earlier, ``unknown`` if never;
- **freshness**: how old the policy data is (its ``verified_at``) and when the car was
  last seen.

Never a VIN or plate in clear: vehicles are named by their pseudonymous vid.
"""

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, Literal

from agent.protocol import calendar

from .policy import PolicyRecord, status_of

Link = Literal["online", "offline", "unknown"]
ONLINE_WITHIN: Final = timedelta(minutes=90)
"""Seen this recently counts as online (cars ask at least hourly by default)."""
MAX_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class VehicleSummary:
    """One row of the fleet's vehicle list."""

    vid: str
    status: str
    """``active``, ``expiring``, ``lapsed``, ``pending``, ``renewal_pending``, ``unknown``,
    ``revoked``."""
    insurer_code: str | None
    coverage_end: date | None
    days_left: int | None
    next_coverage_end: date | None
    link: Link
    last_seen: datetime | None
    data_age_s: float | None
    starts_at: datetime | None = None
    """When cover begins, while the status is ``pending``."""


@dataclass(frozen=True, slots=True)
class Filters:
    """What the operator asked for; None means any."""

    status: frozenset[str] | None = None
    expires_within_days: int | None = None
    link: Link | None = None


def summarize(
    vid: str,
    record: PolicyRecord | None,
    last_seen: datetime | None,
    revoked: bool,
    now: datetime,
    expiring_within_days: int = 30,
    online_within: timedelta = ONLINE_WITHIN,
) -> VehicleSummary:
    """The three truths of one vehicle at ``now``."""
    link: Link = "unknown" if last_seen is None else (
        "online" if now - last_seen <= online_within else "offline"
    )  # fmt: skip
    if record is None:
        status = "revoked" if revoked else "unknown"
        return VehicleSummary(vid, status, None, None, None, None, link, last_seen, None)
    status = "revoked" if revoked else status_of(record, now, expiring_within_days)
    term = record.rolled(now)
    return VehicleSummary(
        vid=vid,
        status=status,
        insurer_code=term.insurer_code,
        coverage_end=term.coverage_end,
        days_left=calendar.days_left(now, term.coverage_end),
        next_coverage_end=term.next_end,
        link=link,
        last_seen=last_seen,
        data_age_s=max(0.0, (now - record.verified_at).total_seconds()),
        starts_at=term.start_instant if status == "pending" else None,
    )


def matches(v: VehicleSummary, f: Filters) -> bool:
    """Whether ``v`` passes every filter given."""
    if f.status is not None and v.status not in f.status:
        return False
    if f.link is not None and v.link != f.link:
        return False
    if f.expires_within_days is not None:
        # Covered until the next term's end once one is bought: that car does not expire.
        end = v.next_coverage_end or v.coverage_end
        if v.days_left is None or end is None or v.status in ("lapsed", "pending", "revoked"):
            return False
        if v.next_coverage_end is not None or v.days_left > f.expires_within_days:
            return False
    return True


def page(
    rows: Sequence[VehicleSummary], f: Filters, limit: int, after: str | None
) -> tuple[list[VehicleSummary], str | None]:
    """Up to ``limit`` matching rows with vid above ``after`` (rows sorted by vid), and
    the cursor for the next page (None on the last)."""
    limit = max(1, min(limit, MAX_PAGE))
    chosen = [v for v in rows if (after is None or v.vid > after) and matches(v, f)]
    more = len(chosen) > limit
    chosen = chosen[:limit]
    return chosen, (chosen[-1].vid if more and chosen else None)


def counts(rows: Iterable[VehicleSummary]) -> dict[str, int]:
    """How many vehicles per status."""
    out: dict[str, int] = {}
    for v in rows:
        out[v.status] = out.get(v.status, 0) + 1
    return out


CSV_FIELDS: Final = (
    "vid", "status", "insurer_code", "coverage_end", "days_left", "next_coverage_end", "link",
    "last_seen", "data_age_s", "starts_at",
)  # fmt: skip


def to_csv(rows: Iterable[VehicleSummary]) -> str:
    """The rows as CSV (a header line first); dates ISO 8601, empty for none."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for v in rows:
        writer.writerow(
            ["" if (x := getattr(v, name)) is None else _text(x) for name in CSV_FIELDS]
        )
    return out.getvalue()


def _text(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)
