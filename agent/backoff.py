"""Capped exponential backoff with full jitter for reconnects: pure, the randomness is passed in."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays drawn uniformly from [0, min(max_s, min_s·2^attempt)] (full jitter)."""

    min_s: float = 1.0
    max_s: float = 300.0

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (0 for the first)."""
        return min(self.max_s, self.min_s * 2.0 ** min(max(attempt, 0), 60))

    def delay(self, attempt: int, draw: float) -> float:
        """The delay before retry ``attempt`` for a uniform ``draw`` in [0, 1)."""
        if not 0.0 <= draw < 1.0:
            raise ValueError(f"draw {draw} is not in [0, 1)")
        # Full jitter: cars that lost one broker together spread over the whole window
        # instead of returning in waves at its upper half.
        return draw * self.ceiling(attempt)
