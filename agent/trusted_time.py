"""Trusted time on a gateway whose wall clock may be anything: pure, no I/O, no clock read.

The agent's "now" is built only from cloud-signed ``issued_at`` instants and the
monotonic clock, never from the gateway's wall clock. It is an interval, not a point:

- An **anchor** is a signed reply to a status request this run sent at monotonic
  ``sent`` and received at ``received``. The cloud stamped ``issued_at`` between the
  two, so at monotonic ``m`` real time lies in
  ``[issued_at + (m - received), issued_at + (m - sent)]``, widened by
  ``MAX_DRIFT`` of the elapsed time for a monotonic clock running fast or slow.
- Any other signed instant (an unsolicited or retained push, the stored record, the
  persisted floor) says only that real time is **at least** that: it raises the floor.
  A floor above an anchor's upper bound voids that bound (the monotonic clock missed
  time, e.g. in a suspend) until the next anchor.

The floor is the greatest lower bound known; it never decreases and is what the store
persists, so after a reboot (monotonic restarts) the agent still knows "at least
<floor>" but nothing above it. Confidence: NONE (no signed time ever), CARRIED (only a
floor: no upper bound), FRESH (anchored this run: bounded both ways), GIVEN (an operator
stated the instant, ``ctpl-agent status --now``; treated like FRESH).

An anchor whose ``issued_at`` is older than the floor is refused: a replayed or
rolled-back time must not move trusted time back (state rollback is refused by
``version`` elsewhere; this guards time itself).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final

MAX_DRIFT: Final = 1e-4
"""How far a monotonic clock may run fast or slow, as a fraction (100 ppm)."""


class Confidence(StrEnum):
    """How much the agent knows about the current instant."""

    NONE = "none"
    CARRIED = "carried"
    FRESH = "fresh"
    GIVEN = "given"


@dataclass(frozen=True, slots=True)
class TrustedNow:
    """Real time lies in ``[earliest, latest]``; ``latest`` is None when unbounded above."""

    earliest: datetime
    latest: datetime | None
    confidence: Confidence

    @classmethod
    def given(cls, at: datetime) -> "TrustedNow":
        """An instant an operator states outright (for diagnosis, not from the gateway clock)."""
        return cls(at, at, Confidence.GIVEN)

    def describe(self) -> str:
        """One line for a screen, e.g. ``fresh, 2025-06-01T04:00:00+00:00 (±0.4 s)``."""
        if self.latest is None:
            return f"{self.confidence}, at least {self.earliest.isoformat()}"
        spread = (self.latest - self.earliest).total_seconds()
        mid = self.earliest + (self.latest - self.earliest) / 2
        return f"{self.confidence}, {mid.isoformat()} (±{spread / 2:.1f} s)"


@dataclass(frozen=True, slots=True)
class Anchor:
    """A signed ``issued_at`` stamped between monotonic ``sent`` and ``received``."""

    issued_at: datetime
    sent: float
    received: float


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a naive datetime has no meaning here; pass an aware one")
    return at


class TrustedClock:
    """The agent's trusted time: anchors and floors in, ``TrustedNow`` out.

    Start it with the persisted floor (None when never stored). Monotonic readings
    passed in must come from one boot; a new boot makes a new TrustedClock.
    """

    def __init__(self, floor: datetime | None = None) -> None:
        self._floor = None if floor is None else _aware(floor)
        self._anchor: Anchor | None = None

    @property
    def floor(self) -> datetime | None:
        """The greatest instant known to be past, as last raised; None when none is known."""
        return self._floor

    @property
    def anchored(self) -> bool:
        """Whether a signed reply anchored time during this boot."""
        return self._anchor is not None

    def raise_floor(self, at: datetime) -> bool:
        """Note that real time is at least ``at``; True when that raised the floor."""
        _aware(at)
        if self._floor is not None and at <= self._floor:
            return False
        self._floor = at
        return True

    def anchor(self, issued_at: datetime, sent: float, received: float) -> bool:
        """Anchor on a signed reply; False (nothing changed) when ``issued_at`` is below the floor.

        ``sent`` and ``received`` are the monotonic readings when the request left and
        the reply arrived (``sent <= received``).
        """
        _aware(issued_at)
        if received < sent:
            raise ValueError(f"received {received} before sent {sent}")
        if self._floor is not None and issued_at < self._floor:
            return False
        # The old anchor's lower bound at ``received`` stays a floor: never run back.
        self.settle(received)
        self._anchor = Anchor(issued_at, sent, received)
        self.raise_floor(issued_at)
        return True

    @property
    def last_anchor(self) -> Anchor | None:
        """The anchor in use, if any (to persist for another process of the same boot)."""
        return self._anchor

    def floor_at(self, mono: float) -> datetime | None:
        """The greatest lower bound of real time at monotonic ``mono``; never below ``floor``."""
        now = self.now(mono)
        return None if now is None else now.earliest

    def settle(self, mono: float) -> datetime | None:
        """Raise the floor to the lower bound at ``mono`` and return it (the value to persist)."""
        floor = self.floor_at(mono)
        if floor is not None:
            self.raise_floor(floor)
        return self._floor

    def now(self, mono: float) -> TrustedNow | None:
        """What is known of real time at monotonic ``mono``; None when nothing is."""
        anchor = self._anchor
        if anchor is None:
            if self._floor is None:
                return None
            return TrustedNow(self._floor, None, Confidence.CARRIED)
        if mono < anchor.received:
            raise ValueError(f"monotonic {mono} is before the anchor's {anchor.received}")
        since_received = mono - anchor.received
        since_sent = mono - anchor.sent
        earliest = anchor.issued_at + timedelta(seconds=since_received * (1 - MAX_DRIFT))
        latest = anchor.issued_at + timedelta(seconds=since_sent * (1 + MAX_DRIFT))
        assert self._floor is not None  # an anchor raised it
        if self._floor > latest:
            # A signed instant beyond the upper bound: the monotonic clock missed time
            # (a suspend) or the anchor was wrong. Only the floor is certain now.
            return TrustedNow(self._floor, None, Confidence.CARRIED)
        return TrustedNow(max(earliest, self._floor), latest, Confidence.FRESH)
