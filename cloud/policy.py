"""Policy records as the cloud holds them, and the status a car is told (pure).

The status at instant ``now`` (``status_of``) of the term in force then (a next term
bought takes over at 24:00 China time of this one's end), in order:

1. The record's override (``unknown`` while a source failed, ``renewal_pending`` from the
   aggregation), if any.
2. At or after the term's end: ``lapsed``.
3. Before the term's start instant (00:00 China time of ``coverage_start``, or the exact
   ``starts_at`` of a term bought to start on payment): ``pending`` (待生效): uncovered.
4. A next term bought: ``renewal_pending`` (covered without a gap).
5. ``expiring`` with ``expiring_within_days`` or fewer days left, else ``active``.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from agent.protocol import calendar

from . import insurer_directory

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
    plate_masked: str | None = None
    """The plate, masked (``mask_plate``); the cloud keeps no clear plate in this record."""
    next_insurer_code: str | None = None
    next_insurer_name: str | None = None
    next_policy_no_masked: str | None = None
    next_end: date | None = None
    """The next term, when one is bought: it starts the day after ``coverage_end``."""
    starts_at: datetime | None = None
    """The exact instant the term begins when not 00:00 China time of ``coverage_start``
    (a term bought after a lapse from an insurer that starts cover on payment)."""

    @property
    def start_instant(self) -> datetime:
        """When this term begins."""
        return calendar.start_instant(self.coverage_start, self.starts_at)

    def rolled(self, now: datetime) -> "PolicyRecord":
        """The term in force at ``now``: this one, or the next once this one has ended."""
        if self.next_end is None or now < calendar.coverage_end_instant(self.coverage_end):
            return self
        return PolicyRecord(
            vid=self.vid,
            insurer_code=self.next_insurer_code or self.insurer_code,
            insurer_name=self.next_insurer_name or self.insurer_name,
            policy_no_masked=self.next_policy_no_masked or self.policy_no_masked,
            coverage_start=calendar.renewal_start(self.coverage_end),
            coverage_end=self.next_end,
            source=self.source,
            verified_at=self.verified_at,
            plate_masked=self.plate_masked,
        )


def mask_plate(plate: str) -> str:
    """A plate as screens and logs may show it: province and letter, then ``·****`` and
    the last character (``沪A12345`` → ``沪A·****5``); a short plate keeps only its first."""
    plate = plate.strip().replace("·", "").replace(" ", "")
    if len(plate) < 4:
        return plate[:1] + "·****"
    return f"{plate[:2]}·****{plate[-1]}"


def mask_policy_no(policy_no: str) -> str:
    """A policy number as cars and screens see it (letters and digits only, upper case):
    ``PDZA20261100000012345`` → ``PDZA2026****2345``; a short one keeps less."""
    no = "".join(c for c in policy_no.upper() if c.isascii() and c.isalnum())
    if len(no) >= 12:
        return f"{no[:8]}****{no[-4:]}"
    if len(no) > 4:
        return f"{no[:2]}****{no[-2:]}"
    return "****"


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
    plate_masked: str | None = None
    claims_phone: str | None = None
    next_coverage_end: date | None = None
    starts_at: datetime | None = None
    insurer_address: str | None = None


UNKNOWN = StateContent("unknown", None, None, None, None, None, "none", None)


def status_of(record: PolicyRecord, now: datetime, expiring_within_days: int) -> str:
    """The status a car is told for ``record`` at ``now``, by the rules in the module
    docstring: an override, ``renewal_pending``, ``pending``, ``expiring``, ``active``
    or ``lapsed``."""
    if record.override is not None:
        return record.override
    record = record.rolled(now)
    ends = calendar.coverage_end_instant(record.coverage_end)
    if now >= ends:
        return "lapsed"
    if now < record.start_instant:
        return "pending"
    if record.next_end is not None:
        return "renewal_pending"
    left = calendar.days_left(now, record.coverage_end)
    return "expiring" if left <= expiring_within_days else "active"


def status_changes_at(record: PolicyRecord | None, now: datetime) -> datetime:
    """The first instant after ``now`` at which ``status_of`` may change for ``record``:
    the next 00:00 China time, or the term's start instant when that comes sooner."""
    midnight = calendar.next_midnight(now)
    if record is None:
        return midnight
    start = record.rolled(now).start_instant
    return start if now < start < midnight else midnight


def content_of(
    record: PolicyRecord | None, now: datetime, expiring_within_days: int
) -> StateContent:
    """The content a car is told for ``record`` at ``now``; UNKNOWN when there is no record."""
    if record is None:
        return UNKNOWN
    status = status_of(record, now, expiring_within_days)
    record = record.rolled(now)
    starts_at = record.starts_at
    if status == "pending" and starts_at is None:
        starts_at = record.start_instant
    return StateContent(
        status=status,
        insurer_code=record.insurer_code,
        insurer_name=record.insurer_name,
        policy_no_masked=record.policy_no_masked,
        coverage_start=record.coverage_start,
        coverage_end=record.coverage_end,
        source=record.source,
        verified_at=record.verified_at,
        plate_masked=record.plate_masked,
        claims_phone=insurer_directory.claims_phone(record.insurer_code),
        next_coverage_end=record.next_end,
        starts_at=starts_at,
        insurer_address=insurer_directory.address(record.insurer_code),
    )
