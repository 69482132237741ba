"""The head unit's local HTTP API (placeholder: replaced by the real server)."""

from collections.abc import Callable

from .head_unit import HeadUnit


async def serve(
    model: HeadUnit, host: str, port: int, *, ready: Callable[[str], None] | None = None
) -> None:
    """Serve the head-unit page and API on host:port until cancelled; ``ready(url)`` once up."""
    raise NotImplementedError
