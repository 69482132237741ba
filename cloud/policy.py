"""Policy records as the cloud holds them, and the status a car is told (pure)."""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

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
    plate_masked: str | None = None
    """The plate, masked (``mask_plate``); the cloud keeps no clear plate in this record."""
    next_insurer_code: str | None = None
    next_insurer_name: str | None = None
    next_policy_no_masked: str | None = None
    next_end: date | None = None
    """The next term, when one is bought: it starts the day after ``coverage_end``."""

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


CLAIMS_PHONES: Final = {
    "PICC": "95518",
    "PAIC": "95511",
    "PINGAN": "95511",
    "CPIC": "95500",
    "CLPC": "95519",
    "SSAIC": "95510",
    "TPIC": "95589",
    "CCIC": "95590",
}
"""Claims hotlines by insurer code, for the e-policy card."""


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


UNKNOWN = StateContent("unknown", None, None, None, None, None, "none", None)


def status_of(record: PolicyRecord, now: datetime, expiring_within_days: int) -> str:
    """``active``, ``expiring`` (within the window), ``lapsed``, or the record's override;
    ``renewal_pending`` while the next term is bought and this one still runs."""
    if record.override is not None:
        return record.override
    record = record.rolled(now)
    if record.next_end is not None and calendar.is_covered(
        now, record.coverage_start, record.coverage_end
    ):
        return "renewal_pending"
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
    status = status_of(record, now, expiring_within_days)
    record = record.rolled(now)
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
        claims_phone=CLAIMS_PHONES.get(record.insurer_code),
        next_coverage_end=record.next_end,
    )
