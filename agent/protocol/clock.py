"""The clock interface every component takes, so tests and the simulator can drive time."""

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time (may be wrong on a gateway) and monotonic time (never goes back)."""

    def now(self) -> datetime:
        """The machine's idea of the current instant, timezone-aware."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never decreases within one boot."""
        ...


# CLOCK_MONOTONIC stops while the machine is suspended; trusted time would then run
# slow after a wake-up. CLOCK_BOOTTIME keeps counting through suspend (Linux).
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


class SystemClock:
    """The real clocks; ``monotonic`` counts through suspend where the OS allows."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        if _BOOTTIME is not None:
            return time.clock_gettime(_BOOTTIME)
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told: for tests and fast simulated time."""

    def __init__(self, start: datetime, monotonic: float = 0.0) -> None:
        self._now = start
        self._mono = monotonic

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (never backward: monotonic time cannot)."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back; use set_wall for wall jumps")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def set_wall(self, now: datetime) -> None:
        """Jump the wall clock (as an NTP step or a bad RTC would); monotonic is unmoved."""
        self._now = now
