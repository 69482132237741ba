"""Reconnect backoff: doubling, capped, full jitter."""

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
    [
        (0, 0.0, 0.0),
        (0, 0.5, 0.5),
        (0, 0.999, 0.999),
        (3, 0.0, 0.0),
        (3, 0.25, 2.0),
        (3, 0.999, 7.992),
        (9, 0.5, 150.0),
        (20, 0.0, 0.0),
        (20, 0.999, 299.7),
    ],
)
def test_delay_is_uniform_from_zero_to_the_ceiling(attempt: int, draw: float, delay: float) -> None:
    assert Backoff(1.0, 300.0).delay(attempt, draw) == pytest.approx(delay)


@pytest.mark.parametrize("attempt", [0, 1, 4, 8, 9, 60, 10_000])
@pytest.mark.parametrize("draw", [0.0, 0.3, 0.999_999])
def test_delay_never_exceeds_the_cap_or_the_ceiling(attempt: int, draw: float) -> None:
    backoff = Backoff(0.5, 30.0)
    assert 0.0 <= backoff.delay(attempt, draw) <= backoff.ceiling(attempt) <= 30.0


@pytest.mark.parametrize("draw", [-0.1, 1.0, 2.0])
def test_draw_outside_unit_interval_is_refused(draw: float) -> None:
    with pytest.raises(ValueError, match="not in"):
        Backoff().delay(0, draw)
