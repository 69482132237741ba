"""Reconnect backoff: doubling, capped, jittered into the upper half."""

import pytest

from agent.backoff import Backoff


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(-1, 1.0), (0, 1.0), (1, 2.0), (2, 4.0), (5, 32.0), (8, 256.0), (9, 300.0), (10_000, 300.0)],
)
def test_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert Backoff(1.0, 300.0).ceiling(attempt) == ceiling


@pytest.mark.parametrize(
    ("attempt", "draw", "delay"),
    [(0, 0.0, 0.5), (0, 0.5, 0.75), (3, 0.0, 4.0), (3, 0.999, 7.996), (20, 0.0, 150.0)],
)
def test_delay_is_jittered_in_the_upper_half(attempt: int, draw: float, delay: float) -> None:
    assert Backoff(1.0, 300.0).delay(attempt, draw) == pytest.approx(delay)


@pytest.mark.parametrize("draw", [-0.1, 1.0, 2.0])
def test_draw_outside_unit_interval_is_refused(draw: float) -> None:
    with pytest.raises(ValueError, match="not in"):
        Backoff().delay(0, draw)
