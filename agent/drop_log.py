"""Which dropped messages to log: the first of a reason at once, then a count per window.

A flood of junk on a car's down topics (a broken or hostile publisher, a looping broker)
must not fill the gateway's log or wear its flash: 3,000 junk messages once wrote 1,683
WARNING lines. Rules, per reason (``bad_envelope``, ``bad_signature``, ``rollback``, …):

1. The first drop of a quiet reason is logged in full at once; it opens a window of
   ``window_s`` (a minute).
2. Later drops in the window are only counted.
3. When the window ends with drops counted, one ``Summary`` says how many, and the next
   window opens at once; when it ends with none, the reason is quiet again (rule 1).
4. ``flush`` gives the counts of the open windows (at stop), and forgets them.

Pure: the caller passes its monotonic ``now`` and logs what it is told. The agent's
counters count every drop whatever is logged.
"""

from dataclasses import dataclass
from typing import Final

WINDOW_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Summary:
    """``count`` drops of ``reason`` not logged one by one, within ``seconds``."""

    reason: str
    count: int
    seconds: float


@dataclass(slots=True)
class _Window:
    started: float
    count: int = 0


class DropLog:
    """Decides which drops to log; see the module's rules."""

    __slots__ = ("_open", "window_s")

    def __init__(self, window_s: float = WINDOW_S) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = window_s
        self._open: dict[str, _Window] = {}

    def dropped(self, reason: str, now: float) -> bool:
        """Note one drop of ``reason``; True if it is to be logged in full (rule 1).

        Call ``due(now)`` first, so that a window that has ended is closed."""
        window = self._open.get(reason)
        if window is None:
            self._open[reason] = _Window(now)
            return True
        window.count += 1
        return False

    def due(self, now: float) -> list[Summary]:
        """The summaries of the windows ended by ``now`` (rule 3), by reason."""
        out = []
        for reason, window in list(self._open.items()):
            if now - window.started < self.window_s:
                continue
            if window.count:
                out.append(Summary(reason, window.count, now - window.started))
                self._open[reason] = _Window(now)
            else:
                del self._open[reason]
        return sorted(out, key=lambda s: s.reason)

    def flush(self, now: float) -> list[Summary]:
        """The counts of every open window, which are then forgotten (rule 4)."""
        out = [
            Summary(reason, window.count, now - window.started)
            for reason, window in sorted(self._open.items())
            if window.count
        ]
        self._open.clear()
        return out
