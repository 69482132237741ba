"""Trusted time and the status rule: the pure core, in tables."""

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from agent import display
from agent.trusted_time import MAX_DRIFT, Confidence, TrustedClock, TrustedNow
from tests.agent.conftest import policy_state

VID = "vaaaaaaaaaaaaaaa1"
T0 = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)
S = timedelta(seconds=1)
US = timedelta(microseconds=1)
# Coverage 2024-12-01 .. 2025-11-30: it ends at 24:00 China time, 16:00 UTC on the 30th.
END = datetime(2025, 11, 30, 16, 0, tzinfo=UTC)
START = datetime(2024, 11, 30, 16, 0, tzinfo=UTC)


# --- TrustedClock --------------------------------------------------------------------------


def test_nothing_known_is_none() -> None:
    clock = TrustedClock()
    assert clock.now(0.0) is None
    assert clock.floor is None and clock.floor_at(5.0) is None and clock.settle(5.0) is None


def test_a_floor_alone_is_carried_and_unbounded_above() -> None:
    assert TrustedClock(T0).now(123.0) == TrustedNow(T0, None, Confidence.CARRIED)


def test_an_anchor_bounds_time_both_ways_with_drift() -> None:
    clock = TrustedClock()
    assert clock.anchor(T0, sent=10.0, received=10.5)
    now = clock.now(110.5)
    assert now is not None and now.confidence is Confidence.FRESH
    assert now.earliest == T0 + timedelta(seconds=100 * (1 - MAX_DRIFT))
    assert now.latest == T0 + timedelta(seconds=100.5 * (1 + MAX_DRIFT))
    assert clock.floor == T0


@pytest.mark.parametrize(
    ("floor", "issued_at", "taken"),
    [
        (None, T0, True),
        (T0, T0, True),
        (T0, T0 + US, True),
        (T0, T0 - US, False),  # a replayed or rolled-back issued_at
        (T0, T0 - timedelta(days=365), False),
        (T0, datetime(1970, 1, 1, tzinfo=UTC), False),
    ],
)
def test_an_anchor_below_the_floor_is_refused(
    floor: datetime | None, issued_at: datetime, taken: bool
) -> None:
    clock = TrustedClock(floor)
    assert clock.anchor(issued_at, 0.0, 0.0) is taken
    assert clock.anchored is taken
    assert clock.floor == (issued_at if taken else floor)


def test_refused_anchor_keeps_the_previous_one() -> None:
    clock = TrustedClock()
    clock.anchor(T0, 0.0, 0.0)
    before = clock.now(60.0)
    clock.settle(60.0)
    assert not clock.anchor(T0 + 30 * S, 61.0, 61.0)  # older than the settled floor
    after = clock.now(60.0 + 1e-9)
    assert before is not None and after is not None
    assert after.earliest >= before.earliest


def test_raise_floor_only_goes_up() -> None:
    clock = TrustedClock(T0)
    assert not clock.raise_floor(T0 - S)
    assert not clock.raise_floor(T0)
    assert clock.raise_floor(T0 + S)
    assert clock.floor == T0 + S


def test_settle_persists_the_lower_bound() -> None:
    clock = TrustedClock()
    clock.anchor(T0, 0.0, 2.0)
    settled = clock.settle(602.0)
    assert settled == T0 + timedelta(seconds=600 * (1 - MAX_DRIFT))
    assert clock.floor == settled


def test_a_signed_instant_above_the_upper_bound_voids_it() -> None:
    # The monotonic clock missed time (a suspend): only the floor is certain.
    clock = TrustedClock()
    clock.anchor(T0, 0.0, 0.0)
    clock.raise_floor(T0 + timedelta(hours=5))
    assert clock.now(60.0) == TrustedNow(T0 + timedelta(hours=5), None, Confidence.CARRIED)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.raise_floor(datetime(2025, 1, 1)),
        lambda c: c.anchor(datetime(2025, 1, 1), 0.0, 0.0),
        lambda c: c.anchor(T0, 5.0, 4.0),
        lambda c: TrustedClock(datetime(2025, 1, 1)),
    ],
    ids=["naive-floor", "naive-anchor", "received-before-sent", "naive-start"],
)
def test_bad_input_raises(call: Any) -> None:
    with pytest.raises(ValueError):
        call(TrustedClock())


def test_now_before_the_anchor_is_a_bug() -> None:
    clock = TrustedClock()
    clock.anchor(T0, 5.0, 6.0)
    with pytest.raises(ValueError):
        clock.now(5.5)


@pytest.mark.parametrize("seed", range(20))
def test_random_events_never_move_the_lower_bound_back(seed: int) -> None:
    rng = random.Random(seed)
    clock = TrustedClock(T0 if rng.random() < 0.5 else None)
    mono, real, last = 0.0, T0 + timedelta(hours=1), None
    for _ in range(200):
        step = rng.expovariate(1 / 30)
        mono += step
        real += timedelta(seconds=step)
        kind = rng.random()
        if kind < 0.3:  # an honest reply, 0-2 s round trip
            rtt = rng.uniform(0, 2)
            clock.anchor(real - timedelta(seconds=rng.uniform(0, rtt)), mono - rtt, mono)
        elif kind < 0.5:  # a replayed or skewed issued_at, anywhere in the last year
            clock.anchor(real - timedelta(days=rng.uniform(0, 365)), mono, mono)
        elif kind < 0.6:
            clock.settle(mono)
        now = clock.now(mono)
        if now is None:
            continue
        assert now.earliest <= real, "the lower bound passed real time"
        if now.latest is not None and kind >= 0.5:
            assert now.latest >= real - timedelta(days=365)
        if last is not None:
            assert now.earliest >= last, "trusted time ran backward"
        last = now.earliest


def test_describe() -> None:
    assert TrustedNow(T0, None, Confidence.CARRIED).describe() == (
        "carried, at least 2025-06-01T04:00:00+00:00"
    )
    assert TrustedNow(T0, T0 + 2 * S, Confidence.FRESH).describe() == (
        "fresh, 2025-06-01T04:00:01+00:00 (±1.0 s)"
    )


# --- the status rule -----------------------------------------------------------------------


def given(at: datetime) -> TrustedNow:
    return TrustedNow.given(at)


def fresh(earliest: datetime, latest: datetime) -> TrustedNow:
    return TrustedNow(earliest, latest, Confidence.FRESH)


def carried(floor: datetime) -> TrustedNow:
    return TrustedNow(floor, None, Confidence.CARRIED)


LATE = {"issued_at": END - timedelta(days=2), "fresh_until": END + timedelta(days=5)}
AFTER = {"issued_at": END, "fresh_until": END + timedelta(days=7)}  # the cloud saw the end
CN = "+08:00"

# (case, state changes or None for no state, trusted now, expected status or "unverified:<why>")
CASES: list[tuple[str, dict[str, Any] | None, TrustedNow | None, str]] = [
    ("no trusted time", {}, None, "unverified:no trusted time"),
    ("confidence none", {}, TrustedNow(T0, T0, Confidence.NONE), "unverified:no trusted time"),
    ("no state", None, given(T0), "unverified:no verified state"),
    ("mid-term", {}, given(T0), "covered"),
    ("mid-term, fresh interval", {}, fresh(T0, T0 + 5 * S), "covered"),
    ("end day 23:59:59 China", LATE, given(END - S), "expiring"),
    ("one microsecond before 24:00", LATE, given(END - US), "expiring"),
    ("24:00 China time, record from before", LATE, given(END), "unverified:renewed"),
    ("24:00 China time, record issued at 24:00", AFTER, given(END), "lapsed"),
    ("the next morning", AFTER, given(END + timedelta(hours=8)), "lapsed"),
    ("next morning, record from before", LATE, given(END + 8 * 3600 * S), "unverified:renewed"),
    ("interval straddles 24:00", LATE, fresh(END - S, END + S), "unverified:straddles"),
    ("interval ends at 24:00", LATE, fresh(END - S, END), "unverified:straddles"),
    ("interval starts at 24:00", AFTER, fresh(END, END + S), "lapsed"),
    (
        "31 days left (China date)",
        {"fresh_until": END},
        given(datetime.fromisoformat(f"2025-10-30T23:59:59{CN}")),
        "covered",
    ),
    (
        "30 days left (China date; UTC still says 31)",
        {"fresh_until": END},
        given(datetime(2025, 10, 30, 16, 0, tzinfo=UTC)),
        "expiring",
    ),
    (
        "interval straddles the expiring threshold: the cautious one",
        {"fresh_until": END},
        fresh(datetime(2025, 10, 30, 15, 0, tzinfo=UTC), datetime(2025, 10, 30, 17, tzinfo=UTC)),
        "expiring",
    ),
    ("exactly fresh_until", {}, given(T0 + timedelta(days=7)), "covered"),
    ("fresh_until + 1 µs", {}, given(T0 + timedelta(days=7) + US), "unverified:is past"),
    (
        "interval straddles fresh_until",
        {},
        fresh(T0 + timedelta(days=7) - S, T0 + timedelta(days=7) + S),
        "unverified:may be past",
    ),
    ("carried floor inside freshness", {}, carried(T0), "unverified:carried"),
    ("carried floor past the end (lapsed by floor)", LATE, carried(END + S), "unverified:carried"),
    ("carried floor past fresh_until", {}, carried(T0 + timedelta(days=8)), "unverified:is past"),
    (
        "carried from 1970",
        {},
        carried(datetime(1970, 1, 1, tzinfo=UTC)),
        "unverified:carried",
    ),
    (
        "before the term: pending (uncovered)",
        {"coverage_start": date(2025, 6, 2)},
        given(T0),
        "pending",
    ),
    (
        "term starts at 00:00 China",
        {"coverage_start": date(2025, 6, 2)},
        given(datetime.fromisoformat(f"2025-06-02T00:00:00{CN}")),
        "covered",
    ),
    (
        "interval straddles the start",
        {"coverage_start": date(2025, 6, 2)},
        fresh(datetime(2025, 6, 1, 15, 59, tzinfo=UTC), datetime(2025, 6, 1, 16, 1, tzinfo=UTC)),
        "unverified:straddles",
    ),
    ("cloud says lapsed mid-term", {"status": "lapsed"}, given(T0), "lapsed"),
    ("cloud says unknown", {"status": "unknown"}, given(T0), "unknown"),
    ("renewal pending, still covered", {"status": "renewal_pending"}, given(T0), "covered"),
    (
        "cloud said active, end passed",
        LATE | {"status": "active"},
        given(END),
        "unverified:renewed",
    ),
    ("cloud said lapsed after the end", AFTER | {"status": "lapsed"}, given(END + S), "lapsed"),
    ("no dates", {"coverage_start": None, "coverage_end": None}, given(T0), "unknown"),
    ("five years on", {}, given(datetime(2030, 1, 1, tzinfo=UTC)), "unverified:is past"),
]


@pytest.mark.parametrize(
    ("changes", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_status_rule(changes: dict[str, Any] | None, now: TrustedNow | None, expected: str) -> None:
    state = None if changes is None else policy_state(VID, 1, 1, **changes)
    shown = display.view(state, now)
    if expected.startswith("unverified:"):
        assert isinstance(shown, display.Unverified)
        assert expected.removeprefix("unverified:") in shown.reason
        assert shown.time == now
    else:
        assert isinstance(shown, display.StatusView), shown
        assert shown.status == expected
        assert shown.time == now


def test_days_left_counts_at_the_latest_instant() -> None:
    state = policy_state(VID, 1, 1, **LATE)
    shown = display.view(state, fresh(END - timedelta(hours=30), END - timedelta(hours=2)))
    assert isinstance(shown, display.StatusView)
    assert shown.days_left == 0  # 22:00 on the end day, China time


def test_text_and_json_carry_the_confidence() -> None:
    shown = display.view(policy_state(VID, 1, 1), carried(T0))
    assert display.as_text(shown).splitlines()[2] == (
        "trusted time: carried, at least 2025-06-01T04:00:00+00:00"
    )
    assert display.as_json(shown)["trusted_time"]["confidence"] == "carried"
