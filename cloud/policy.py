"""Policy records as the cloud holds them, and the status a car is told (pure)."""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from agent.protocol import calendar

Override = Literal["unknown", "renewal_pending"]


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One vehicle's current CTPL policy as the authoritative sources last gave it."""

    vid: str
    insurer_code: str
    insurer_name: str
    policy_no_masked: str
    coverage_start: date
    coverage_end: date
    source: str
    verified_at: datetime
    override: Override | None = None


@dataclass(frozen=True, slots=True)
class StateContent:
    """What a policy.state says, apart from its sequence numbers and times."""

    status: str
    insurer_code: str | None
    insurer_name: str | None
    policy_no_masked: str | None
    coverage_start: date | None
    coverage_end: date | None
    source: str
    verified_at: datetime | None


UNKNOWN = StateContent("unknown", None, None, None, None, None, "none", None)


def status_of(record: PolicyRecord, now: datetime, expiring_within_days: int) -> str:
    """``active``, ``expiring`` (within the window), ``lapsed``, or the record's override."""
    if record.override is not None:
        return record.override
    if calendar.is_covered(now, record.coverage_start, record.coverage_end):
        left = calendar.days_left(now, record.coverage_end)
        return "expiring" if left <= expiring_within_days else "active"
    if now >= calendar.coverage_end_instant(record.coverage_end):
        return "lapsed"
    return "unknown"  # a term that has not begun yet: no cover known for today


def content_of(
    record: PolicyRecord | None, now: datetime, expiring_within_days: int
) -> StateContent:
    """The content a car is told for ``record`` at ``now``; UNKNOWN when there is no record."""
    if record is None:
        return UNKNOWN
    return StateContent(
        status=status_of(record, now, expiring_within_days),
        insurer_code=record.insurer_code,
        insurer_name=record.insurer_name,
        policy_no_masked=record.policy_no_masked,
        coverage_start=record.coverage_start,
        coverage_end=record.coverage_end,
        source=record.source,
        verified_at=record.verified_at,
    )
