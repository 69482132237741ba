"""The per-car limit on requests that make the cloud ask every source, as a table."""

from datetime import UTC, datetime, timedelta

import pytest

from cloud.rate_limits import LOOKUPS, Limit, retry_after

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def ago(*minutes: float) -> list[datetime]:
    return [NOW - timedelta(minutes=m) for m in minutes]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (ago(0), None),
        (ago(0, 1, 2, 3, 4, 5), None),  # six in ten minutes, this one included
        (ago(0, 1, 2, 3, 4, 5, 6), 5 * 60.0),  # the seventh: wait until the 2nd oldest ages out
        (ago(0, 0, 0, 0, 0, 0, 0, 0), 600.0),
        (ago(0, 1, 2, 3, 4, 5, 10, 11, 30), None),  # older than the window: not counted
        (ago(0, 9.999, 9.999, 9.999, 9.999, 9.999, 9.999), 1.0),  # never less than a second
    ],
)
def test_retry_after(times: list[datetime], expected: float | None) -> None:
    got = retry_after(times, NOW)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_the_retry_time_is_honest_and_refused_requests_count() -> None:
    times = ago(0, 1, 2, 3, 4, 5, 6)  # the one at NOW is refused: it still counts
    wait = retry_after(times, NOW)
    assert wait == 300.0
    at = NOW + timedelta(seconds=wait)
    assert retry_after([*times, at], at) is None
    early = at - timedelta(seconds=1)
    assert retry_after([*times, early], early) is not None
    assert retry_after(ago(0, 1), NOW, Limit(1, LOOKUPS.per)) == 600.0  # from the refused one
