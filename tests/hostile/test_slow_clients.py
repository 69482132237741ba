"""Slow clients at the real deadlines (``make hostile`` only: they take the deadline's time).

The HTTPS API (served as the worker serves it, 10 s for a request head, 10 s for a body)
and a real agent's head-unit server (5 s for a head): headers dribbled a byte a second, a
body dribbled, a connection that says nothing. All at once, so the run takes one deadline.
The helpers are tests/cloud_api/test_http.py's and tests/agent/test_head_unit_http.py's.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from agent.head_unit_http import Limits
from agent.runner import Agent
from cloud.api import BODY_TIMEOUT_S, HEADER_TIMEOUT_S
from simulator.cars import car_config
from tests.agent.test_head_unit_http import parse_reply
from tests.cloud_api.conftest import Api, serving
from tests.cloud_api.test_http import EARLY_S, HEAD, SLACK_S, _close, _connect, _dribble
from tests.cloud_api.test_http import _until_closed as until_closed

from .conftest import TallyFactory
from .figures import Tally
from .harness import Cloud

pytestmark = pytest.mark.hostile
GROUP = "slow clients"
HEAD_UNIT_S = Limits().head_timeout_s


async def _timed(
    row: Tally,
    what: str,
    deadline_s: float,
    expect: bytes | None,
    run: Callable[[], Awaitable[bytes]],
) -> None:
    """One slow client: refused when the server cut it off at ``deadline_s`` (± slack) with
    a reply starting ``expect`` (None: a silent close)."""
    start = time.monotonic()
    try:
        got = await run()
    except TimeoutError:
        row.record(refused=False, what=f"{what}: still open after {deadline_s + SLACK_S} s")
        return
    took = time.monotonic() - start
    on_time = deadline_s - EARLY_S <= took < deadline_s + SLACK_S
    answered = got == b"" if expect is None else got.startswith(expect)
    row.record(
        refused=on_time and answered,
        crashed=b" 500 " in got[:16],
        what=f"{what}: cut after {took:.1f} s with {got[:40]!r}",
    )


async def test_slow_clients_are_cut_off_at_the_deadline(
    cloud: Cloud, tmp_path: Path, tally: TallyFactory
) -> None:
    api_row = tally(
        "slow client: the HTTPS API (a byte a second)",
        group=GROUP,
        expected=f"408 at {HEADER_TIMEOUT_S:.0f} s (head) / "
        f"{BODY_TIMEOUT_S:.0f} s (body); silence: closed",
    )
    unit_row = tally(
        "slow client: the head-unit server (a byte a second)",
        group=GROUP,
        expected=f"408 at {HEAD_UNIT_S:.0f} s; silence: closed",
    )
    agent = Agent(
        car_config(cloud.pki, cloud.vids[2], tmp_path / "cars", cloud.broker.port, head_unit_port=0)
    )
    agent_task = asyncio.create_task(agent.run(), name="hostile-agent")
    try:
        async with serving(cloud.pki, tmp_path, events=cloud.worker) as api:
            await agent.wait_for_state(10.0)
            assert agent.head_unit_url is not None
            unit_port = int(agent.head_unit_url.rsplit(":", 1)[1].rstrip("/"))
            await asyncio.gather(
                *_api_clients(api, api_row), *_head_unit_clients(unit_port, unit_row)
            )
            assert (await api.client.get("/v1/keyset")).status_code == 200
            assert api.counters["rejected.header_timeout"] == 4  # the silent one too
            assert api.counters["rejected.body_timeout"] == 1
            async with httpx.AsyncClient(base_url=agent.head_unit_url, trust_env=False) as c:
                assert (await c.get("/api/state")).status_code == 200
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await agent_task
    for row in (api_row, unit_row):
        if not await cloud.answers() or cloud.crashed():
            row.crashed("the worker no longer answers a signed request")
        row.check()


def _api_clients(api: Api, row: Tally) -> list[Awaitable[None]]:
    port = api.config.http_port or 0

    async def dribble(data: bytes, head: bytes = b"") -> bytes:
        reader, writer = await _connect(api, port)
        if head:
            writer.write(head)
            await writer.drain()
        sender = asyncio.create_task(_dribble(writer, data), name="dribble")
        try:
            return await until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await _close(writer)

    async def silent() -> bytes:
        reader, writer = await _connect(api, port)
        try:
            return await until_closed(reader, HEADER_TIMEOUT_S + SLACK_S)
        finally:
            await _close(writer)

    body_head = (
        b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
        b"\r\nContent-Length: 100\r\n\r\n"
    )
    return [
        *(
            _timed(
                row,
                f"headers dribbled #{i + 1}",
                HEADER_TIMEOUT_S,
                b"HTTP/1.1 408 ",
                lambda: dribble(HEAD),
            )
            for i in range(3)
        ),
        _timed(row, "a silent connection", HEADER_TIMEOUT_S, None, silent),
        _timed(
            row,
            "a body dribbled",
            BODY_TIMEOUT_S,
            b"HTTP/1.1 408 ",
            lambda: dribble(b'{"claim_token":' * 7, body_head),
        ),
    ]


def _head_unit_clients(port: int, row: Tally) -> list[Awaitable[None]]:
    head = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"

    async def dribble() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sender = asyncio.create_task(_dribble(writer, head), name="dribble-head-unit")
        try:
            return await until_closed(reader, HEAD_UNIT_S + SLACK_S)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await _close(writer)

    async def silent() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await until_closed(reader, HEAD_UNIT_S + SLACK_S)
        finally:
            await _close(writer)

    async def dribble_checked() -> bytes:
        got = await dribble()
        assert parse_reply(got).json()["error"] == "timeout"
        return got

    return [
        *(
            _timed(
                row, f"headers dribbled #{i + 1}", HEAD_UNIT_S, b"HTTP/1.1 408 ", dribble_checked
            )
            for i in range(2)
        ),
        _timed(row, "a silent connection", HEAD_UNIT_S, None, silent),
    ]
