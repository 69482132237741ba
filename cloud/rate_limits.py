"""How often a car may make the cloud do costly work: pure, no clock, no I/O.

A car's "quote" and "already renewed" requests each make the cloud ask every source (the
national platform, each insurer). At most ``LOOKUPS.count`` such requests of one car are
acted on within ``LOOKUPS.per``; beyond that a request is refused with ``rate_limited``
and the time after which a new one would be taken. The request times are the cloud's
record of the car's intents (the store), so the limit holds across workers and restarts.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` within any ``per``."""

    count: int
    per: timedelta


LOOKUPS: Final = Limit(6, timedelta(minutes=10))
"""Source look-ups a car may cause: a driver taps 立即续保 or 已在其他渠道续保 a few times
at most; a car that asks more is broken or hostile."""
LOOKUP_ACTIONS: Final = frozenset({"quote", "already_renewed"})


def retry_after(times: Iterable[datetime], now: datetime, limit: Limit = LOOKUPS) -> float | None:
    """None when the request made at ``now`` may be acted on, else the seconds until a new
    one would be: ``times`` are the car's requests within the window, this one included."""
    recent = sorted(t for t in times if now - limit.per < t <= now)
    if len(recent) <= limit.count:
        return None
    allowed_at = recent[-limit.count] + limit.per
    return max(1.0, (allowed_at - now).total_seconds())
