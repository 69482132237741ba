"""The clock interface: ManualClock moves only when told; SystemClock is real."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from agent.protocol.clock import Clock, ManualClock, SystemClock

T0 = datetime(2025, 7, 1, 0, 0, tzinfo=UTC)


def _read(clock: Clock) -> tuple[datetime, float]:
    """Anything that takes the interface accepts both clocks."""
    return clock.now(), clock.monotonic()


def test_manual_clock_starts_where_told_and_stands_still() -> None:
    clock = ManualClock(T0, monotonic=100.0)
    assert _read(clock) == (T0, 100.0)
    assert _read(clock) == (T0, 100.0)


def test_manual_clock_monotonic_defaults_to_zero() -> None:
    assert ManualClock(T0).monotonic() == 0.0


@pytest.mark.parametrize("steps", [[1.0], [0.5, 0.25], [86_400.0] * 3, [0.0], [365 * 86_400.0]])
def test_advance_moves_both_clocks_by_the_same_amount(steps: list[float]) -> None:
    clock = ManualClock(T0, monotonic=10.0)
    for step in steps:
        clock.advance(step)
    assert clock.now() == T0 + timedelta(seconds=sum(steps))
    assert clock.monotonic() == pytest.approx(10.0 + sum(steps))


@pytest.mark.parametrize(
    "jump",
    [timedelta(days=-400), timedelta(hours=-1), timedelta(0), timedelta(days=3650)],
    ids=str,
)
def test_set_wall_jumps_the_wall_clock_only(jump: timedelta) -> None:
    clock = ManualClock(T0, monotonic=5.0)
    clock.advance(2.0)
    clock.set_wall(T0 + jump)
    assert clock.now() == T0 + jump
    assert clock.monotonic() == 7.0
    clock.advance(1.0)
    assert clock.now() == T0 + jump + timedelta(seconds=1)
    assert clock.monotonic() == 8.0


def test_manual_clock_keeps_the_zone_it_was_given() -> None:
    clock = ManualClock(T0)
    clock.advance(1.5)
    assert clock.now().tzinfo is UTC
    assert clock.now().utcoffset() == timedelta(0)


def test_two_manual_clocks_are_independent() -> None:
    a, b = ManualClock(T0), ManualClock(T0)
    a.advance(60)
    assert b.now() == T0
    assert b.monotonic() == 0.0


def test_system_clock_is_aware_utc_and_monotonic_never_goes_back() -> None:
    clock = SystemClock()
    now, mono = _read(clock)
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
    readings = [clock.monotonic() for _ in range(1000)]
    assert readings == sorted(readings)
    assert readings[0] >= mono


def test_system_monotonic_counts_through_suspend_on_linux() -> None:
    """CLOCK_BOOTTIME, not CLOCK_MONOTONIC: the two differ by the time spent suspended."""
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    got = SystemClock().monotonic()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= got <= after
