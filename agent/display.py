"""What the head unit may show for a policy state at an instant: pure, no I/O.

Only a cloud-signed, verified state that is still fresh is shown; anything else is
"status unverified" with a reason (the freeze attack replays an old, valid record).
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from .protocol.calendar import days_left
from .protocol.messages import PolicyState


@dataclass(frozen=True, slots=True)
class StatusView:
    """A verified, fresh policy state as the driver sees it."""

    status: str
    insurer: str | None
    policy_no_masked: str | None
    coverage_start: date | None
    coverage_end: date | None
    days_left: int | None
    version: int
    issued_at: datetime
    fresh_until: datetime


@dataclass(frozen=True, slots=True)
class Unverified:
    """Nothing may be shown; ``reason`` says why."""

    reason: str


def view(
    state: PolicyState | None, now: datetime, *, missing: str = "no verified state"
) -> StatusView | Unverified:
    """The view of a verified ``state`` at ``now``; Unverified when none or past fresh_until."""
    if state is None:
        return Unverified(missing)
    if now > state.fresh_until:
        return Unverified(f"record is past fresh_until {state.fresh_until.isoformat()}")
    insurer = state.insurer_name or state.insurer_code
    if state.insurer_name and state.insurer_code:
        insurer = f"{state.insurer_name} ({state.insurer_code})"
    return StatusView(
        status=state.status,
        insurer=insurer,
        policy_no_masked=state.policy_no_masked,
        coverage_start=state.coverage_start,
        coverage_end=state.coverage_end,
        days_left=None if state.coverage_end is None else days_left(now, state.coverage_end),
        version=state.version,
        issued_at=state.issued_at,
        fresh_until=state.fresh_until,
    )


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def as_text(shown: StatusView | Unverified) -> str:
    """Lines for a terminal; the first is ``status unverified`` or ``status: <status>``."""
    if isinstance(shown, Unverified):
        return f"status unverified\nreason: {shown.reason}"
    coverage = "-"
    if shown.coverage_start or shown.coverage_end:
        coverage = f"{_text(shown.coverage_start)} to {_text(shown.coverage_end)} 24:00 China time"
    rows = [
        ("status", shown.status),
        ("insurer", shown.insurer),
        ("policy no", shown.policy_no_masked),
        ("coverage", coverage),
        ("days left", shown.days_left),
        ("version", shown.version),
        ("issued at", shown.issued_at),
        ("fresh until", shown.fresh_until),
    ]
    return "\n".join(f"{name}: {_text(value)}" for name, value in rows)


def as_json(shown: StatusView | Unverified) -> dict[str, Any]:
    """A JSON-ready object; ``verified`` says which kind it is."""
    if isinstance(shown, Unverified):
        return {"verified": False, "reason": shown.reason}
    return {
        "verified": True,
        "status": shown.status,
        "insurer": shown.insurer,
        "policy_no_masked": shown.policy_no_masked,
        "coverage_start": _text(shown.coverage_start) if shown.coverage_start else None,
        "coverage_end": _text(shown.coverage_end) if shown.coverage_end else None,
        "days_left": shown.days_left,
        "version": shown.version,
        "issued_at": shown.issued_at.isoformat(),
        "fresh_until": shown.fresh_until.isoformat(),
    }
