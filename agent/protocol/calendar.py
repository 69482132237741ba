"""CTPL calendar rules, in China time whatever the machine's zone.

Coverage ends at 24:00 of the end date in Asia/Shanghai (UTC+8, no daylight
saving since 1991, so a fixed offset is exact and needs no tz database).
Cover starts at 00:00 of the start date, or at the exact instant a term bought to
start on payment names (``starts_at``). Days left are calendar days in that zone.
A term bought after a lapse starts at the next 00:00 China time at the earliest
(``next_midnight``): never from the UTC date, which is a day behind until 08:00.
"""

from datetime import date, datetime, time, timedelta, timezone
from typing import Final

CHINA_TZ: Final = timezone(timedelta(hours=8), "Asia/Shanghai")


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("a naive datetime has no meaning here; pass an aware one")
    return now


def china_date(now: datetime) -> date:
    """The calendar date in China at instant ``now``."""
    return _aware(now).astimezone(CHINA_TZ).date()


def coverage_start_instant(start: date) -> datetime:
    """The instant cover begins: 00:00 China time on ``start``."""
    return datetime.combine(start, time(0, 0), CHINA_TZ)


def start_instant(start: date, starts_at: datetime | None = None) -> datetime:
    """The instant a term begins: ``starts_at`` when the term names one, else 00:00 of ``start``."""
    return _aware(starts_at) if starts_at is not None else coverage_start_instant(start)


def next_midnight(now: datetime) -> datetime:
    """The first 00:00 China time after instant ``now`` (at 00:00 itself: the next day's)."""
    return coverage_start_instant(china_date(now) + timedelta(days=1))


def coverage_end_instant(end: date) -> datetime:
    """The instant cover ends: 24:00 China time on ``end`` (00:00 of the next day)."""
    return datetime.combine(end + timedelta(days=1), time(0, 0), CHINA_TZ)


def is_covered(now: datetime, start: date, end: date) -> bool:
    """Whether instant ``now`` lies within [start 00:00, end 24:00) China time."""
    return coverage_start_instant(start) <= _aware(now) < coverage_end_instant(end)


def days_left(now: datetime, end: date) -> int:
    """Calendar days from today (China) to ``end``: 0 on the end day, negative once lapsed."""
    return (end - china_date(now)).days


def renewal_start(old_end: date) -> date:
    """The start date of the term that follows one ending on ``old_end`` (no gap, no overlap)."""
    return old_end + timedelta(days=1)


def one_year_end(start: date) -> date:
    """The end date of a one-year term starting ``start`` (29 Feb maps to 28 Feb)."""
    try:
        anniversary = start.replace(year=start.year + 1)
    except ValueError:
        anniversary = date(start.year + 1, 3, 1)
    return anniversary - timedelta(days=1)
