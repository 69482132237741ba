"""Renewal reminders: whether to prompt the driver now, and what the fleet must hear. Pure.

``decide`` takes what the head unit may show (``display.view``: judged in trusted time,
never the gateway's clock), the vehicle's signals, and the prompt history, and returns
one decision: ``Prompt``, ``Alert`` (for the fleet, never a pop-up) or ``Quiet`` with the
reason. Rules, in order:

1. Nothing verified, an ``unknown`` status, or a renewal the cloud says is under way
   (``renewal_pending``): quiet.
2. The stage: ``lapsed`` once the view says so; ``pending`` (待生效) while the only term
   has not begun (the car is uninsured until then, like a lapsed one); ``d0`` on the end
   day (coverage ends at 24:00 China time); else ``dN`` for the smallest configured N
   (default 30, 15, 7, 3, 1) at or above the days left; none beyond the first stage: quiet.
3. A moving car (speed above 0) is never prompted; a lapsed or pending one that moves
   raises one ``lapsed_while_driving`` / ``pending_while_driving`` alert per trip.
4. With the ignition off the head unit is dark: quiet.
5. Each stage of a policy term prompts once (shown, whatever the answer, or none, counts),
   unless its last answer was a snooze: until the next trip (ignition cycle), or until
   the next China calendar day. ``lapsed`` and ``pending`` prompt once per trip (a
   ``pending`` prompt offers only "dismiss": the renewal is bought).
6. At most ``daily_cap`` prompts per China calendar day.

The history is keyed by the term's end date: a renewed policy (a later end) starts afresh,
which is how "already renewed elsewhere" stops prompts once the cloud confirms it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

from .display import StatusView, Unverified
from .protocol.calendar import china_date

Answer = Literal["accept", "dismiss", "snooze_trip", "snooze_day", "already_renewed"]
ANSWERS: Final[frozenset[str]] = frozenset(
    {"accept", "dismiss", "snooze_trip", "snooze_day", "already_renewed"}
)
LAPSED: Final = "lapsed"
PENDING: Final = "pending"
END_DAY: Final = "d0"
PER_TRIP: Final = frozenset({LAPSED, PENDING})
"""Stages that prompt once per trip (the car is uninsured) rather than once per term."""


def answers_for(stage: str) -> tuple[Answer, ...]:
    """The answers a prompt of ``stage`` offers (a pending car's renewal is bought)."""
    if stage == PENDING:
        return ("dismiss",)
    return ("accept", "already_renewed", "dismiss", "snooze_day", "snooze_trip")


@dataclass(frozen=True, slots=True)
class ReminderConfig:
    """Days before the end at which to prompt (each once), and the daily cap."""

    stages: tuple[int, ...] = (30, 15, 7, 3, 1)
    daily_cap: int = 3

    def __post_init__(self) -> None:
        if not self.stages or any(s < 1 for s in self.stages):
            raise ValueError("reminder stages are whole days ≥ 1 before the end")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("reminder stages must differ")
        if self.daily_cap < 1:
            raise ValueError("daily_cap must be at least 1")


@dataclass(frozen=True, slots=True)
class Vehicle:
    """The vehicle's signals now. ``trip`` counts ignition-on events (a new trip each)."""

    trip: int
    ignition_on: bool
    speed_kmh: float

    @property
    def moving(self) -> bool:
        """Whether the car moves (any speed above 0)."""
        return self.speed_kmh > 0


@dataclass(frozen=True, slots=True)
class Shown:
    """A prompt shown: for which term and stage, on which trip and China day; the answer."""

    coverage_end: date
    stage: str
    trip: int
    day: date
    answer: Answer | None = None
    answered_day: date | None = None


@dataclass(frozen=True, slots=True)
class Alerted:
    """A fleet alert raised for this term on this trip."""

    coverage_end: date
    trip: int


History = Sequence[Shown | Alerted]


@dataclass(frozen=True, slots=True)
class Prompt:
    """Show this prompt now."""

    stage: str
    days_left: int
    coverage_end: date
    insurer: str | None
    starts_at: datetime | None = None
    """When cover begins, for a ``pending`` prompt."""


@dataclass(frozen=True, slots=True)
class Alert:
    """Tell the fleet (a ``vehicle.event``), do not show the driver anything."""

    event: Literal["lapsed_while_driving", "pending_while_driving"]
    coverage_end: date
    trip: int


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing to do; ``reason`` is a short stable word."""

    reason: str


Decision = Prompt | Alert | Quiet


def stage_for(days_left: int, stages: Sequence[int]) -> str | None:
    """The stage for ``days_left`` (negative: lapsed), or None before the first stage."""
    if days_left < 0:
        return LAPSED
    if days_left == 0:
        return END_DAY
    due = [s for s in stages if days_left <= s]
    return f"d{min(due)}" if due else None


def decide(
    view: StatusView | Unverified,
    vehicle: Vehicle,
    history: History,
    config: ReminderConfig | None = None,
) -> Decision:
    """The one decision for now, by the rules in the module docstring."""
    config = config or ReminderConfig()
    if isinstance(view, Unverified):
        return Quiet("unverified")
    if view.record_status == "renewal_pending":
        return Quiet("renewal_pending")
    end, days = view.coverage_end, view.days_left
    if view.status == "unknown" or end is None:
        return Quiet("unknown")
    if view.status == "lapsed":
        stage: str | None = LAPSED
    elif view.status == "pending":
        stage = PENDING
    else:
        stage = None if days is None else stage_for(days, config.stages)
    if stage is None:
        return Quiet("not_due")
    if vehicle.moving:
        if stage not in PER_TRIP:
            return Quiet("moving")
        if any(isinstance(h, Alerted) and (h.coverage_end, h.trip) == (end, vehicle.trip)
               for h in history):  # fmt: skip
            return Quiet("alerted")
        if stage == LAPSED:
            return Alert("lapsed_while_driving", end, vehicle.trip)
        return Alert("pending_while_driving", end, vehicle.trip)
    if not vehicle.ignition_on:
        return Quiet("ignition_off")
    assert view.time.latest is not None  # a StatusView is only made with a bounded time
    today = china_date(view.time.latest)
    shown = [h for h in history if isinstance(h, Shown)]
    blocked = _blocked(stage, end, vehicle.trip, today, shown)
    if blocked is not None:
        return Quiet(blocked)
    if sum(1 for h in shown if h.day == today) >= config.daily_cap:
        return Quiet("daily_cap")
    starts_at = view.starts_at if stage == PENDING else None
    return Prompt(stage, days if days is not None else -1, end, view.insurer, starts_at)


def _blocked(stage: str, end: date, trip: int, today: date, shown: list[Shown]) -> str | None:
    """Why this stage must not prompt now (already prompted, snoozed), or None."""
    mine = [h for h in shown if (h.coverage_end, h.stage) == (end, stage)]
    if stage in PER_TRIP:
        mine = [h for h in mine if h.trip == trip or h.answer == "snooze_day"]
    if not mine:
        return None
    last = mine[-1]
    if last.answer == "snooze_trip":
        return None if trip > last.trip else "snoozed"
    if last.answer == "snooze_day":
        answered = last.answered_day or last.day
        if today > answered:
            return None if stage not in PER_TRIP or last.trip != trip else "prompted"
        return "snoozed"
    return "prompted"
