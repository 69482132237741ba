"""A circuit breaker per policy source (pure: the caller passes monotonic time)."""

from typing import Literal


class CircuitBreaker:
    """closed → open after ``failures`` consecutive failures → half-open after
    ``cooldown_s`` (one trial call at a time) → closed on its success, open on its failure."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.consecutive = 0
        self.opened_at: float | None = None
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a call may go out at monotonic ``now`` (claims the trial when half-open)."""
        if self.state == "open":
            assert self.opened_at is not None
            if now - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
        if self.state == "half_open":
            if self._probing:
                return False
            self._probing = True
        return True

    def succeeded(self) -> None:
        self.state, self.consecutive, self._probing = "closed", 0, False

    def failed(self, now: float) -> bool:
        """Record a failure; True when it opened the breaker."""
        self._probing = False
        self.consecutive += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive >= self.failures
        ):
            self.state, self.opened_at = "open", now
            return True
        return False

    def abandoned(self) -> None:
        """A call ended with no verdict (cancelled): free the trial slot."""
        self._probing = False
