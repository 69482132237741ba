"""CTPL calendar rules, in China time whatever the machine's zone.

Coverage ends at 24:00 of the end date in Asia/Shanghai (UTC+8, no daylight
saving since 1991, so a fixed offset is exact and needs no tz database).
Days left are calendar days in that zone.
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
