"""CTPL calendar rules: China time (UTC+8) whatever zone an instant is expressed in."""

import ast
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path

import pytest

from agent.protocol import calendar
from agent.protocol.calendar import (
    CHINA_TZ,
    china_date,
    coverage_end_instant,
    coverage_start_instant,
    days_left,
    is_covered,
    one_year_end,
    renewal_start,
)

UTC_MINUS_8 = timezone(timedelta(hours=-8), "UTC-8")
UTC_PLUS_14 = timezone(timedelta(hours=14), "UTC+14")
ZONES = [UTC, UTC_MINUS_8, UTC_PLUS_14, CHINA_TZ]

START = date(2024, 7, 16)
END = date(2025, 7, 15)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def test_china_is_a_fixed_utc_plus_8() -> None:
    winter = datetime(2025, 1, 15, 12, tzinfo=CHINA_TZ)
    summer = datetime(2025, 7, 15, 12, tzinfo=CHINA_TZ)
    assert winter.utcoffset() == summer.utcoffset() == timedelta(hours=8)


# ---- coverage boundaries -----------------------------------------------------


def test_coverage_ends_at_24_00_china_time_on_the_end_date() -> None:
    assert coverage_end_instant(END) == utc(2025, 7, 15, 16, 0, 0)
    assert coverage_end_instant(END) == datetime(2025, 7, 16, 0, 0, tzinfo=CHINA_TZ)


def test_coverage_starts_at_00_00_china_time_on_the_start_date() -> None:
    assert coverage_start_instant(START) == utc(2024, 7, 15, 16, 0, 0)


@pytest.mark.parametrize(
    ("instant", "covered"),
    [
        (utc(2024, 7, 15, 15, 59, 59), False),
        (utc(2024, 7, 15, 16, 0, 0), True),
        (utc(2025, 1, 1, 0, 0, 0), True),
        (utc(2025, 7, 15, 0, 0, 0), True),
        (utc(2025, 7, 15, 15, 59, 59), True),
        (utc(2025, 7, 15, 15, 59, 59, 999_999), True),
        (utc(2025, 7, 15, 16, 0, 0), False),
        (utc(2025, 7, 15, 16, 0, 1), False),
        (utc(2025, 7, 15, 23, 59, 59), False),
        (utc(2026, 1, 1), False),
    ],
    ids=str,
)
@pytest.mark.parametrize("zone", ZONES, ids=str)
def test_is_covered_at_the_edges(instant: datetime, covered: bool, zone: tzinfo) -> None:
    assert is_covered(instant.astimezone(zone), START, END) is covered


def test_the_last_covered_second_is_late_on_the_end_date_even_in_utc_minus_8() -> None:
    # 15:59:59Z is 07:59:59 the same day in UTC-8: the owner's clock is far from midnight.
    last = utc(2025, 7, 15, 15, 59, 59).astimezone(UTC_MINUS_8)
    assert (last.date(), last.hour) == (date(2025, 7, 15), 7)
    assert is_covered(last, START, END)
    assert not is_covered(last + timedelta(seconds=1), START, END)


def test_a_one_day_policy_covers_exactly_24_hours() -> None:
    day = date(2025, 3, 10)
    assert coverage_end_instant(day) - coverage_start_instant(day) == timedelta(days=1)
    assert is_covered(utc(2025, 3, 9, 16), day, day)
    assert not is_covered(utc(2025, 3, 10, 16), day, day)


# ---- days left ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("instant", "end", "expected"),
    [
        # 2025-06-30T17:00Z is already 1 July 01:00 in China: the end day.
        (utc(2025, 6, 30, 17, 0), date(2025, 7, 1), 0),
        # 2025-06-30T15:59Z is still 30 June 23:59 in China: one day left.
        (utc(2025, 6, 30, 15, 59), date(2025, 7, 1), 1),
        (utc(2025, 6, 30, 16, 0), date(2025, 7, 1), 0),
        (utc(2025, 7, 1, 15, 59, 59), date(2025, 7, 1), 0),
        (utc(2025, 7, 1, 16, 0), date(2025, 7, 1), -1),
        (utc(2025, 6, 1, 4, 0), date(2025, 7, 1), 30),
        (utc(2025, 6, 15, 20, 0), date(2025, 7, 1), 15),
        (utc(2025, 7, 10, 4, 0), date(2025, 7, 1), -9),
        (utc(2024, 7, 1, 4, 0), date(2025, 7, 1), 365),
    ],
    ids=str,
)
@pytest.mark.parametrize("zone", ZONES, ids=str)
def test_days_left_counts_china_calendar_days_whatever_the_zone(
    instant: datetime, end: date, expected: int, zone: tzinfo
) -> None:
    assert days_left(instant.astimezone(zone), end) == expected


@pytest.mark.parametrize("zone", ZONES, ids=str)
def test_china_date_ignores_the_instants_own_zone(zone: tzinfo) -> None:
    instant = utc(2025, 6, 30, 17, 0).astimezone(zone)
    assert china_date(instant) == date(2025, 7, 1)


def test_the_local_date_differs_where_it_matters() -> None:
    # The table above would pass with a naive implementation unless the local dates differ.
    at = utc(2025, 6, 30, 17, 0)
    assert at.astimezone(UTC_MINUS_8).date() == date(2025, 6, 30)
    assert at.astimezone(UTC_PLUS_14).date() == date(2025, 7, 1)
    before = utc(2025, 6, 30, 15, 59)
    assert before.astimezone(UTC_PLUS_14).date() == date(2025, 7, 1)
    assert days_left(before.astimezone(UTC_PLUS_14), date(2025, 7, 1)) == 1


# ---- terms -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (date(2024, 7, 16), date(2025, 7, 15)),
        (date(2024, 2, 29), date(2025, 2, 28)),
        (date(2024, 3, 1), date(2025, 2, 28)),
        (date(2024, 2, 28), date(2025, 2, 27)),
        (date(2023, 3, 1), date(2024, 2, 29)),
        (date(2023, 2, 28), date(2024, 2, 27)),
        (date(2028, 2, 29), date(2029, 2, 28)),
        (date(2025, 1, 1), date(2025, 12, 31)),
        (date(2024, 12, 31), date(2025, 12, 30)),
        (date(2025, 12, 31), date(2026, 12, 30)),
    ],
    ids=str,
)
def test_one_year_end(start: date, end: date) -> None:
    assert one_year_end(start) == end


@pytest.mark.parametrize(
    ("old_end", "new_start"),
    [
        (date(2025, 7, 15), date(2025, 7, 16)),
        (date(2025, 12, 31), date(2026, 1, 1)),
        (date(2024, 2, 28), date(2024, 2, 29)),
        (date(2025, 2, 28), date(2025, 3, 1)),
        (date(2024, 2, 29), date(2024, 3, 1)),
    ],
    ids=str,
)
def test_renewal_starts_the_day_after_with_no_gap_and_no_overlap(
    old_end: date, new_start: date
) -> None:
    assert renewal_start(old_end) == new_start
    assert coverage_end_instant(old_end) == coverage_start_instant(new_start)


def test_a_chain_of_renewals_never_leaves_a_gap() -> None:
    start = date(2024, 2, 29)
    for _ in range(10):
        end = one_year_end(start)
        following = renewal_start(end)
        assert coverage_end_instant(end) == coverage_start_instant(following)
        assert not is_covered(coverage_end_instant(end), start, end)
        assert is_covered(coverage_end_instant(end), following, one_year_end(following))
        start = following


def test_year_end_boundary() -> None:
    end = date(2025, 12, 31)
    assert is_covered(utc(2025, 12, 31, 15, 59, 59), date(2025, 1, 1), end)
    assert not is_covered(utc(2025, 12, 31, 16, 0, 0), date(2025, 1, 1), end)
    assert china_date(utc(2025, 12, 31, 16, 0)) == date(2026, 1, 1)
    assert days_left(utc(2025, 12, 31, 15, 59, 59), end) == 0
    assert days_left(utc(2025, 12, 31, 16, 30), end) == -1
    assert days_left(utc(2025, 12, 31, 16, 30).astimezone(UTC_MINUS_8), end) == -1


# ---- naive datetimes -----------------------------------------------------------


class _NoOffset(tzinfo):
    """A tzinfo that does not know its offset: as meaningless as no tzinfo."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


@pytest.mark.parametrize(
    "instant",
    [datetime(2025, 7, 15, 12, 0), datetime(2025, 7, 15, 12, 0, tzinfo=_NoOffset())],
    ids=["naive", "tzinfo-without-offset"],
)
def test_naive_datetimes_raise(instant: datetime) -> None:
    with pytest.raises(ValueError, match="naive"):
        is_covered(instant, START, END)
    with pytest.raises(ValueError, match="naive"):
        days_left(instant, END)
    with pytest.raises(ValueError, match="naive"):
        china_date(instant)


def test_calendar_never_reads_a_clock() -> None:
    # The calendar takes ``now`` as an argument; reading the machine's clock would hide time.
    tree = ast.parse(Path(calendar.__file__).read_text())
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert called, "the walk found no calls at all"
    assert not called & {"now", "today", "utcnow", "time", "monotonic", "localtime"}
