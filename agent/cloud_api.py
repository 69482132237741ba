"""The cloud's HTTPS API as the gateway sees it: one JSON POST at a time.

The only module that imports httpx, and only provisioning (enrollment, renewal, key
set refresh) imports this one, lazily: a running agent pays for httpx only when it
renews or fetches a key set. httpx's errors
become CloudUnreachableError here. The environment's proxy settings are ignored:
the gateway's config is its only input.
"""

import asyncio
import ssl
from pathlib import Path
from typing import Any, Final

import httpx

from .errors import CloudUnreachableError, ConfigError

MAX_ANSWER_BYTES: Final = 64 * 1024
WHOLE_EXCHANGE_PHASES: Final = 4


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Server-authenticating TLS 1.2+: the ``ca_file`` bundle if given, else the system's."""
    try:
        ctx = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{ca_file}: cannot load the API's CA bundle: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _cause(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


async def post_json(
    url: str, body: dict[str, Any], *, tls: ssl.SSLContext, timeout_s: float
) -> tuple[int, bytes]:
    """POST ``body`` as JSON; the status and at most MAX_ANSWER_BYTES of the answer.

    Raise CloudUnreachableError when no answer comes (connection, TLS, timeout).
    """
    return await _exchange("POST", url, body, tls=tls, timeout_s=timeout_s)


async def get(url: str, *, tls: ssl.SSLContext, timeout_s: float) -> tuple[int, bytes]:
    """GET ``url``; the status and at most MAX_ANSWER_BYTES of the answer.

    Raise CloudUnreachableError when no answer comes (connection, TLS, timeout).
    """
    return await _exchange("GET", url, None, tls=tls, timeout_s=timeout_s)


async def _exchange(
    method: str, url: str, body: dict[str, Any] | None, *, tls: ssl.SSLContext, timeout_s: float
) -> tuple[int, bytes]:
    try:
        # httpx bounds each phase (connect, write, each read) and closes cleanly when one
        # runs out; this only bounds a server that drips its answer, phase after phase.
        async with (
            asyncio.timeout(timeout_s * WHOLE_EXCHANGE_PHASES),
            httpx.AsyncClient(verify=tls, timeout=timeout_s, trust_env=False) as client,
            client.stream(method, url, json=body) as answer,
        ):
            content = bytearray()
            async for chunk in answer.aiter_bytes():
                content += chunk
                if len(content) > MAX_ANSWER_BYTES:
                    break
            return answer.status_code, bytes(content)
    except (TimeoutError, httpx.TimeoutException):
        raise CloudUnreachableError(f"{url}: no answer within {timeout_s} s") from None
    except httpx.HTTPError as exc:
        raise CloudUnreachableError(f"{url}: {_cause(exc)}") from exc
