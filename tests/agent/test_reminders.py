"""The reminder engine as decision tables: calendar edges, vehicle signals, prompt history."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from agent import display
from agent.protocol.messages import PolicyState
from agent.reminders import (
    Alert,
    Alerted,
    Prompt,
    Quiet,
    ReminderConfig,
    Shown,
    Vehicle,
    decide,
    stage_for,
)
from agent.trusted_time import Confidence, TrustedNow

VID = "vaaaaaaaaaaaaaaa1"
PARKED = Vehicle(trip=5, ignition_on=True, speed_kmh=0.0)
MOVING = Vehicle(trip=5, ignition_on=True, speed_kmh=42.0)
OFF = Vehicle(trip=5, ignition_on=False, speed_kmh=0.0)


def china(y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: int = 0) -> datetime:
    """An instant given in China time (UTC+8)."""
    return datetime(y, m, d, hh, mm, ss, tzinfo=timezone(timedelta(hours=8)))


def view(
    at: datetime, end: date, *, issued: datetime | None = None, status: str = "active"
) -> display.StatusView | display.Unverified:
    """The head unit's view at trusted instant ``at`` of a term ending on ``end``."""
    issued = issued or at - timedelta(minutes=5)
    state = PolicyState(
        vid=VID,
        seq=1,
        version=1,
        issued_at=issued,
        fresh_until=issued + timedelta(days=7),
        status=status,  # type: ignore[arg-type]
        insurer_code="PICC",
        insurer_name="PICC P&C",
        policy_no_masked="PDZA****1234",
        coverage_start=end.replace(year=end.year - 1) + timedelta(days=1)
        if not (end.month == 2 and end.day == 29)
        else date(end.year - 1, 3, 1),
        coverage_end=end,
        source="national",
        verified_at=issued,
    )
    return display.view(state, TrustedNow(at, at, Confidence.FRESH))


@pytest.mark.parametrize(
    ("days", "stage"),
    [(45, None), (31, None), (30, "d30"), (16, "d30"), (15, "d15"), (8, "d15"), (7, "d7"),
     (4, "d7"), (3, "d3"), (2, "d3"), (1, "d1"), (0, "d0"), (-1, "lapsed"), (-400, "lapsed")],
)  # fmt: skip
def test_stage_for_days_left(days: int, stage: str | None) -> None:
    assert stage_for(days, (30, 15, 7, 3, 1)) == stage


END = date(2026, 12, 31)
"""A term ending at 24:00 China time on new year's eve."""

# (name, trusted instant, vehicle, history, expected decision or quiet reason)
CASES = [
    ("31 days before: not due", china(2026, 11, 30), PARKED, [], "not_due"),
    ("30 days before, parked: d30", china(2026, 12, 1), PARKED, [], ("d30", 30)),
    ("30 days before, moving: never", china(2026, 12, 1), MOVING, [], "moving"),
    ("30 days before, ignition off", china(2026, 12, 1), OFF, [], "ignition_off"),
    ("d30 already shown (a restart does not repeat it)", china(2026, 12, 3), PARKED,
     [Shown(END, "d30", 4, date(2026, 12, 1))], "prompted"),
    ("d30 dismissed, then 15 days before: d15", china(2026, 12, 16), PARKED,
     [Shown(END, "d30", 4, date(2026, 12, 1), "dismiss")], ("d15", 15)),
    ("d30 snoozed to next trip, same trip", china(2026, 12, 2), PARKED,
     [Shown(END, "d30", 5, date(2026, 12, 2), "snooze_trip")], "snoozed"),
    ("d30 snoozed to next trip, next trip", china(2026, 12, 2), Vehicle(6, True, 0.0),
     [Shown(END, "d30", 5, date(2026, 12, 2), "snooze_trip")], ("d30", 29)),
    ("d30 snoozed to next day, same day", china(2026, 12, 2, 23, 59), Vehicle(9, True, 0.0),
     [Shown(END, "d30", 5, date(2026, 12, 2), "snooze_day", date(2026, 12, 2))], "snoozed"),
    ("d30 snoozed to next day, next China day", china(2026, 12, 3, 0, 1), PARKED,
     [Shown(END, "d30", 5, date(2026, 12, 2), "snooze_day", date(2026, 12, 2))], ("d30", 28)),
    ("skipped d15 (car unused): d7 straight away", china(2026, 12, 26), PARKED,
     [Shown(END, "d30", 1, date(2026, 12, 1), "dismiss")], ("d7", 5)),
    ("end day, 23:59:59 China: d0", china(2026, 12, 31, 23, 59, 59), PARKED, [], ("d0", 0)),
    ("end day seen from a gateway at UTC-5 (still 31 Dec in China)",
     datetime(2026, 12, 31, 10, 0, tzinfo=timezone(timedelta(hours=-5))), PARKED, [], ("d0", 0)),
    ("UTC 16:00 on 31 Dec is 00:00 China on 1 Jan: lapsed",
     datetime(2026, 12, 31, 16, 0, tzinfo=UTC), PARKED, [], ("lapsed", -1)),
    ("lapsed, parked at ignition: prompt", china(2027, 1, 5), PARKED, [], ("lapsed", -5)),
    ("lapsed, shown this trip already", china(2027, 1, 5), PARKED,
     [Shown(END, "lapsed", 5, date(2027, 1, 5), "dismiss")], "prompted"),
    ("lapsed, shown last trip: every trip until renewed", china(2027, 1, 5), PARKED,
     [Shown(END, "lapsed", 4, date(2027, 1, 5), "dismiss")], ("lapsed", -5)),
    ("lapsed, snoozed to next day on an earlier trip, same day", china(2027, 1, 5), PARKED,
     [Shown(END, "lapsed", 4, date(2027, 1, 5), "snooze_day", date(2027, 1, 5))], "snoozed"),
    ("lapsed and moving: a fleet alert, not a pop-up", china(2027, 1, 5), MOVING, [],
     Alert("lapsed_while_driving", END, 5)),
    ("lapsed and moving, alerted this trip", china(2027, 1, 5), MOVING,
     [Alerted(END, 5)], "alerted"),
    ("daily cap reached", china(2026, 12, 29), PARKED,
     [Shown(END, "d7", 1, date(2026, 12, 29), "snooze_trip"),
      Shown(END, "d7", 2, date(2026, 12, 29), "snooze_trip"),
      Shown(END, "d7", 3, date(2026, 12, 29), "snooze_trip")], "daily_cap"),
    ("history of the old term does not count for the renewed one", china(2027, 12, 1),
     PARKED, [Shown(END, "d30", 1, date(2026, 12, 1), "already_renewed")], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "at", "vehicle", "history", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_decision_table(
    name: str, at: datetime, vehicle: Vehicle, history: list[Shown | Alerted], expected: object
) -> None:
    if expected is None:  # the renewed term: 2027-12-31, 30 days left
        decision = decide(view(at, date(2027, 12, 31)), vehicle, history)
        assert decision == Prompt("d30", 30, date(2027, 12, 31), "PICC P&C")
        return
    issued = at if at >= datetime(2026, 12, 31, 16, 0, tzinfo=UTC) else None
    decision = decide(view(at, END, issued=issued), vehicle, history)
    if isinstance(expected, str):
        assert decision == Quiet(expected), name
    elif isinstance(expected, tuple):
        assert decision == Prompt(expected[0], expected[1], END, "PICC P&C"), name
    else:
        assert decision == expected, name


@pytest.mark.parametrize(
    ("at", "end", "stage", "days"),
    [
        (china(2028, 1, 30), date(2028, 2, 29), "d30", 30),  # leap day end
        (china(2028, 2, 28), date(2028, 2, 29), "d1", 1),
        (china(2028, 2, 29, 23, 59), date(2028, 2, 29), "d0", 0),
        (china(2027, 2, 28), date(2027, 3, 1), "d1", 1),  # no 29 Feb in 2027
        (china(2028, 2, 28), date(2028, 3, 1), "d3", 2),  # but there is in 2028
        (china(2026, 12, 31), date(2027, 1, 1), "d1", 1),  # across the year end
        (china(2026, 12, 2), date(2027, 1, 1), "d30", 30),
    ],
)
def test_leap_days_and_year_ends(at: datetime, end: date, stage: str, days: int) -> None:
    assert decide(view(at, end), PARKED, []) == Prompt(stage, days, end, "PICC P&C")


def test_nothing_verified_or_unknown_or_renewal_under_way_is_quiet() -> None:
    assert decide(display.Unverified("no trusted time"), PARKED, []) == Quiet("unverified")
    # A lapsed record issued before the end (a renewal elsewhere may be unknown): unverified.
    stale = view(china(2027, 1, 2), END, issued=china(2026, 12, 30))
    assert decide(stale, PARKED, []) == Quiet("unverified")
    assert decide(view(china(2026, 12, 20), END, status="unknown"), PARKED, []) == Quiet("unknown")
    pending = view(china(2026, 12, 20), END, status="renewal_pending")
    assert decide(pending, PARKED, []) == Quiet("renewal_pending")


def test_configurable_stages_and_cap() -> None:
    config = ReminderConfig(stages=(60, 10), daily_cap=1)
    assert decide(view(china(2026, 11, 1), END), PARKED, [], config) == Prompt(
        "d60", 60, END, "PICC P&C"
    )
    seen = [Shown(END, "d60", 5, date(2026, 12, 22), "dismiss")]
    assert decide(view(china(2026, 12, 22), END), PARKED, seen, config) == Quiet("daily_cap")
    for bad in ({"stages": ()}, {"stages": (0,)}, {"stages": (7, 7)}, {"daily_cap": 0}):
        with pytest.raises(ValueError):
            ReminderConfig(**bad)  # type: ignore[arg-type]


# ---- 待生效: a term bought after a lapse, not yet begun --------------------------

NEW_END = date(2027, 12, 5)
STARTS = china(2026, 12, 6, 0, 0)
"""The new term starts at 00:00 China time on 6 Dec 2026 (bought on 5 Dec after a lapse)."""


def pending_view(at: datetime, *, starts_at: datetime | None = None) -> display.StatusView:
    issued = at - timedelta(minutes=5)
    state = PolicyState(
        vid=VID, seq=1, version=1, issued_at=issued, fresh_until=issued + timedelta(days=7),
        status="pending", insurer_code="PICC", insurer_name="中国人保财险",
        policy_no_masked="PDZA****1234", coverage_start=date(2026, 12, 6), coverage_end=NEW_END,
        source="national", verified_at=issued, starts_at=starts_at,
    )  # fmt: skip
    shown = display.view(state, TrustedNow(at, at, Confidence.FRESH))
    assert isinstance(shown, display.StatusView)
    return shown


PENDING_CASES = [
    ("parked at 22:00 the evening before: a prompt, once per trip", china(2026, 12, 5, 22), PARKED,
     [], Prompt("pending", 365, NEW_END, "中国人保财险", STARTS)),
    ("shown this trip already", china(2026, 12, 5, 22), PARKED,
     [Shown(NEW_END, "pending", 5, date(2026, 12, 5), "dismiss")], Quiet("prompted")),
    ("shown on the last trip: again", china(2026, 12, 5, 22), PARKED,
     [Shown(NEW_END, "pending", 4, date(2026, 12, 5), "dismiss")],
     Prompt("pending", 365, NEW_END, "中国人保财险", STARTS)),
    ("moving before the start: a fleet alert, never a pop-up", china(2026, 12, 5, 23, 59),
     MOVING, [], Alert("pending_while_driving", NEW_END, 5)),
    ("moving, alerted this trip", china(2026, 12, 5, 23, 59), MOVING,
     [Alerted(NEW_END, 5)], Quiet("alerted")),
    ("00:00 China time: covered, no alert while driving on", china(2026, 12, 6, 0, 0), MOVING,
     [], Quiet("not_due")),
    ("covered and parked: not due for a year", china(2026, 12, 6, 0, 30), PARKED, [],
     Quiet("not_due")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "at", "vehicle", "history", "expected"),
    PENDING_CASES,
    ids=[c[0] for c in PENDING_CASES],
)
def test_a_pending_car_is_treated_like_a_lapsed_one(
    name: str, at: datetime, vehicle: Vehicle, history: list[Shown | Alerted], expected: object
) -> None:
    assert decide(pending_view(at), vehicle, history) == expected, name


def test_pending_is_shown_until_the_exact_start_of_a_term_that_starts_on_payment() -> None:
    starts = china(2026, 12, 5, 18, 32)
    before = pending_view(china(2026, 12, 5, 18, 31, 59), starts_at=starts)
    assert (before.status, before.starts_at) == ("pending", starts)
    after = pending_view(china(2026, 12, 5, 18, 32), starts_at=starts)
    assert after.status == "covered"


def test_a_pending_prompt_offers_only_dismiss() -> None:
    from agent.reminders import answers_for

    assert answers_for("pending") == ("dismiss",)
    assert set(answers_for("lapsed")) == {
        "accept", "already_renewed", "dismiss", "snooze_day", "snooze_trip",
    }  # fmt: skip
