"""What the head unit may show for a policy state, judged in trusted time: pure, no I/O.

The gateway's wall clock never enters here: ``view`` takes a ``TrustedNow`` (an
interval that holds real time, see ``trusted_time``) and claims "covered", "expiring"
or "lapsed" only when the claim holds for every instant of that interval. The rule:

1. No verified state, or no trusted time at all (confidence NONE): unverified.
2. Some instant of the interval is past ``fresh_until``: unverified (the freeze attack
   replays an old, valid record). With CARRIED confidence (only a floor from an earlier
   boot, no upper bound) that is always so: the car may have been parked for months,
   so CARRIED never shows a claim, not even "lapsed" (a renewal may have come meanwhile
   and a frozen "lapsed" is the forged "pay here" prompt in disguise).
3. With FRESH or GIVEN time, inside freshness: a record the cloud signed as ``lapsed``
   or ``unknown`` is shown as such; otherwise the coverage dates decide, in China time
   (coverage runs from 00:00 of the start date to 24:00 of the end date):
   ``lapsed`` when the interval's earliest instant is at or past the end and the record
   was issued at or after the end (a record issued before it cannot know of a renewal
   made elsewhere meanwhile: until the cloud confirms, unverified); ``covered`` or
   ``expiring`` (``days_left`` at the interval's latest instant within
   ``expiring_within_days``) when the whole interval lies inside the term (with a next
   term bought, cover runs on to its end: ``covered_until``); ``pending`` (待生效:
   uncovered) when it lies wholly before the term's start instant (00:00 China time of
   ``coverage_start``, or the record's exact ``starts_at``), so a car told ``pending``
   shows covered from that instant on without waiting for the cloud; ``unknown`` when
   dates are missing; unverified when the interval straddles the start or the end.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final, Literal

from .protocol.calendar import coverage_end_instant, days_left, start_instant
from .protocol.messages import PolicyState
from .trusted_time import Confidence, TrustedNow

EXPIRING_WITHIN_DAYS: Final = 30
"""Days left at or under which a covered car shows ``expiring`` (the first reminder stage)."""
HeadStatus = Literal["covered", "expiring", "lapsed", "pending", "unknown"]
NO_TIME: Final = "no trusted time yet: waiting for a cloud-signed time"


@dataclass(frozen=True, slots=True)
class StatusView:
    """A verified, fresh policy state as the driver sees it at trusted time ``time``."""

    status: HeadStatus
    record_status: str
    insurer: str | None
    policy_no_masked: str | None
    coverage_start: date | None
    coverage_end: date | None
    days_left: int | None
    version: int
    issued_at: datetime
    fresh_until: datetime
    time: TrustedNow
    starts_at: datetime | None = None
    """The instant the term begins (set while ``pending``, and for a term that began at
    an instant other than 00:00)."""


@dataclass(frozen=True, slots=True)
class Unverified:
    """Nothing may be shown; ``reason`` says why; ``time`` is the trusted time, if any."""

    reason: str
    time: TrustedNow | None = None


def _coverage(
    state: PolicyState, now: TrustedNow, expiring_within_days: int
) -> HeadStatus | Unverified:
    """The head status the dates give for the whole interval, or why none can be claimed."""
    if state.status in ("lapsed", "unknown"):
        return state.status
    start, end = state.coverage_start, covered_until(state)
    if start is None or end is None:
        return "unknown"
    assert now.latest is not None
    ends = coverage_end_instant(end)
    if now.earliest >= ends:
        if state.issued_at >= ends:
            return "lapsed"
        return Unverified(
            f"coverage on record ended {ends.isoformat()}; waiting for the cloud to confirm "
            "(it may have been renewed elsewhere)",
            now,
        )
    begins = start_instant(start, state.starts_at)
    if now.latest < begins:
        return "pending"
    if now.earliest >= begins and now.latest < ends:
        return "expiring" if days_left(now.latest, end) <= expiring_within_days else "covered"
    return Unverified(
        f"trusted time ({now.describe()}) straddles the start or end of coverage", now
    )


def covered_until(state: PolicyState) -> date | None:
    """The last day of continuous cover: the next term's end once one is bought (it starts
    the day after this one ends), else this term's end."""
    return state.next_coverage_end or state.coverage_end


def view(
    state: PolicyState | None,
    now: TrustedNow | None,
    *,
    missing: str = "no verified state",
    expiring_within_days: int = EXPIRING_WITHIN_DAYS,
) -> StatusView | Unverified:
    """The view of a verified ``state`` at trusted time ``now``, by the rule above."""
    if state is None:
        return Unverified(missing, now)
    if now is None or now.confidence is Confidence.NONE:
        return Unverified(NO_TIME, now)
    fresh_until = state.fresh_until.isoformat()
    if now.earliest > state.fresh_until:
        return Unverified(f"record is past fresh_until {fresh_until}", now)
    if now.latest is None:
        return Unverified(
            f"trusted time is carried from an earlier boot ({now.describe()}): the record "
            f"may be past fresh_until {fresh_until}; waiting for a cloud-signed time",
            now,
        )
    if now.latest > state.fresh_until:
        return Unverified(f"record may be past fresh_until {fresh_until} ({now.describe()})", now)
    shown = _coverage(state, now, expiring_within_days)
    if isinstance(shown, Unverified):
        return shown
    insurer = state.insurer_name or state.insurer_code  # the name: codes are not for drivers
    end = covered_until(state)
    begins = None
    if state.coverage_start is not None and (shown == "pending" or state.starts_at is not None):
        begins = start_instant(state.coverage_start, state.starts_at)
    return StatusView(
        status=shown,
        record_status=state.status,
        insurer=insurer,
        policy_no_masked=state.policy_no_masked,
        coverage_start=state.coverage_start,
        coverage_end=end,
        days_left=None if end is None else days_left(now.latest, end),
        version=state.version,
        issued_at=state.issued_at,
        fresh_until=state.fresh_until,
        time=now,
        starts_at=begins,
    )


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def _time(now: TrustedNow | None) -> str:
    return "none (no cloud-signed time yet)" if now is None else now.describe()


def _time_json(now: TrustedNow | None) -> dict[str, Any]:
    if now is None:
        return {"confidence": str(Confidence.NONE), "earliest": None, "latest": None}
    latest = None if now.latest is None else now.latest.isoformat()
    return {
        "confidence": str(now.confidence),
        "earliest": now.earliest.isoformat(),
        "latest": latest,
    }


def as_text(shown: StatusView | Unverified) -> str:
    """Lines for a terminal; the first is ``status unverified`` or ``status: <status>``."""
    if isinstance(shown, Unverified):
        return f"status unverified\nreason: {shown.reason}\ntrusted time: {_time(shown.time)}"
    coverage = "-"
    if shown.coverage_start or shown.coverage_end:
        coverage = f"{_text(shown.coverage_start)} to {_text(shown.coverage_end)} 24:00 China time"
    rows = [
        ("status", shown.status),
        *([("starts at", shown.starts_at)] if shown.status == "pending" else []),
        ("record status", shown.record_status),
        ("insurer", shown.insurer),
        ("policy no", shown.policy_no_masked),
        ("coverage", coverage),
        ("days left", shown.days_left),
        ("version", shown.version),
        ("issued at", shown.issued_at),
        ("fresh until", shown.fresh_until),
        ("trusted time", _time(shown.time)),
    ]
    return "\n".join(f"{name}: {_text(value)}" for name, value in rows)


def as_json(shown: StatusView | Unverified) -> dict[str, Any]:
    """A JSON-ready object; ``verified`` says which kind it is."""
    if isinstance(shown, Unverified):
        return {"verified": False, "reason": shown.reason, "trusted_time": _time_json(shown.time)}
    return {
        "verified": True,
        "status": shown.status,
        "record_status": shown.record_status,
        "insurer": shown.insurer,
        "policy_no_masked": shown.policy_no_masked,
        "coverage_start": _text(shown.coverage_start) if shown.coverage_start else None,
        "coverage_end": _text(shown.coverage_end) if shown.coverage_end else None,
        "starts_at": None if shown.starts_at is None else shown.starts_at.isoformat(),
        "days_left": shown.days_left,
        "version": shown.version,
        "issued_at": shown.issued_at.isoformat(),
        "fresh_until": shown.fresh_until.isoformat(),
        "trusted_time": _time_json(shown.time),
    }
