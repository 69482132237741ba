"""What the end-to-end tests share."""

import asyncio
import time
from collections.abc import Callable
from typing import Final

FAST: Final = {"reply_timeout_s": 0.5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
"""Short waits, so that resends and reconnects happen within a test."""


async def until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
