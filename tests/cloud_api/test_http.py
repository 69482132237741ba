"""The HTTP shell: error shape and codes, body limit, read deadlines, counters, serving in the
caller's loop."""

import asyncio
import contextlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest

from cloud.api import HEADER_TIMEOUT_S, NoEvents, create_app, serve_api
from cloud.errors import ApiServeError, ConfigError
from simulator.broker import free_port

from .conftest import ADMIN_TOKEN, STEP_S, Api, RecordingEvents, within


async def test_unknown_routes_and_methods_use_the_error_shape(api: Api) -> None:
    r = await api.client.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    r = await api.client.get("/v1/enroll")
    assert (r.status_code, r.json()["error"]["code"]) == (405, "method_not_allowed")
    r = await api.client.post("/v1/vehicles/#/revoke", json={}, headers=api.auth(ADMIN_TOKEN))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert api.counters["rejected.not_found"] == 2
    assert api.counters["rejected.method_not_allowed"] == 1


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 1024):
        yield b" " * 1024


@pytest.mark.parametrize("size", [16 * 1024 + 1, 1024 * 1024])
async def test_a_body_over_16_kib_is_refused_by_its_declared_length(api: Api, size: int) -> None:
    r = await api.client.post(
        "/v1/enroll", content=b" " * size, headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")


async def test_a_chunked_body_over_16_kib_is_refused_by_its_actual_length(api: Api) -> None:
    r = await api.client.post("/v1/enroll", content=_chunks(17 * 1024))
    assert "content-length" not in r.request.headers
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    assert api.counters["rejected.body_too_large"] == 1
    # A chunked body within the limit still reaches the route.
    r = await api.client.post("/v1/enroll", content=_chunks(2048))
    assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request")


async def test_a_body_of_exactly_16_kib_is_read(api: Api) -> None:
    r = await api.client.post(
        "/v1/enroll", content=b" " * (16 * 1024), headers={"Content-Type": "application/json"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request")


async def test_every_rejection_is_counted_by_code(api: Api) -> None:
    await api.client.post("/v1/fleets", json={"name": "x"})
    await api.client.post("/v1/fleets", json={"name": ""}, headers=api.auth(ADMIN_TOKEN))
    await api.client.post("/v1/enroll", json={"claim_token": "cl_x", "csr_pem": "x"})
    rejected = {k: v for k, v in api.counters.items() if k.startswith("rejected.")}
    assert rejected == {
        "rejected.unauthorized": 1,
        "rejected.bad_request": 1,
        "rejected.claim_unknown": 1,
    }


async def test_keep_alive_requests_are_not_held_by_delayed_acks(api: Api) -> None:
    await api.client.get("/v1/keyset")  # the TLS handshake
    start = time.perf_counter()
    for _ in range(20):
        assert (await api.client.get("/v1/keyset")).status_code == 200
    # Without TCP_NODELAY on the accepted sockets each request takes ≈ 40 ms.
    assert time.perf_counter() - start < 0.5


async def test_serving_on_a_busy_port_raises_instead_of_exiting(api: Api) -> None:
    app = create_app(api.config, api.store, RecordingEvents())
    with pytest.raises(ApiServeError):
        await within(serve_api(app, api.config))


async def test_serving_needs_a_port(api: Api) -> None:
    config = api.config.model_copy(update={"http_port": None})
    with pytest.raises(ApiServeError):
        await within(serve_api(create_app(config, api.store, RecordingEvents()), config))


async def test_create_app_refuses_missing_key_files(api: Api) -> None:
    config = api.config.model_copy(update={"root_key_file": api.pki.root / "missing.key"})
    with pytest.raises(ConfigError):
        create_app(config, api.store, RecordingEvents())


async def test_the_api_description_is_for_the_admin_and_no_docs_page_is_served(api: Api) -> None:
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = await api.client.get(path)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), path
    _, operator = await api.fleet()
    for headers in ({}, api.auth(operator), api.auth("wrong-token")):
        r = await api.client.get("/openapi.json", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    r = await api.client.get("/openapi.json", headers=api.auth(ADMIN_TOKEN))
    assert r.status_code == 200
    assert "/v1/enroll" in r.json()["paths"]
    # Tools and tests read the schema from the app itself.
    assert r.json() == api.app.openapi()
    assert not {"/openapi.json", "/metrics", "/healthz", "/readyz"} & set(r.json()["paths"])


async def test_a_cancelled_server_frees_its_port(api: Api) -> None:
    config = api.config.model_copy(update={"http_port": free_port()})
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve_api(create_app(config, api.store, RecordingEvents()), config, ready=ready),
        name="second-api",
    )
    await within(ready.wait())
    tls = ssl.create_default_context(cafile=api.pki.ca_cert)
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{config.http_port}", verify=tls, timeout=STEP_S
    ) as client:
        assert (await client.get("/v1/keyset")).status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(task)
    assert config.http_port is not None
    with socket.create_server(("127.0.0.1", config.http_port)):
        pass


async def test_a_body_that_stalls_is_refused_with_408(api: Api) -> None:
    config = api.config.model_copy(update={"http_port": free_port()})
    app = create_app(config, api.store, RecordingEvents(), body_timeout_s=0.3)
    ready = asyncio.Event()
    task = asyncio.create_task(serve_api(app, config, ready=ready), name="stall-api")
    try:
        await within(ready.wait())
        tls = ssl.create_default_context(cafile=api.pki.ca_cert)
        reader, writer = await within(
            asyncio.open_connection(
                "127.0.0.1", config.http_port, ssl=tls, server_hostname="localhost"
            )
        )
        writer.write(
            b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"claim'
        )
        await within(writer.drain())
        got = await _until_closed(reader, STEP_S)  # the rest of the body is never read
        assert got.startswith(b"HTTP/1.1 408 ")
        assert b"connection: close" in got.lower()
        await _close(writer)
        assert app.state.counters["rejected.body_timeout"] == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)


# ---- read deadlines on a real server, with a raw TLS client ------------------------------

SLACK_S = 1.5
EARLY_S = 0.2
"""The server's deadline may start a little before the client's clock does."""


@dataclass
class Served:
    port: int
    counters: Counter[str]


@asynccontextmanager
async def server(api: Api, **timeouts: float) -> AsyncIterator[Served]:
    """A second API server on a free port, with ``timeouts`` for ``serve_api``."""
    config = api.config.model_copy(update={"http_port": free_port()})
    app = create_app(config, api.store, NoEvents(), body_timeout_s=30.0)
    ready = asyncio.Event()
    task = asyncio.create_task(serve_api(app, config, ready=ready, **timeouts), name="timed-api")
    try:
        await within(ready.wait())
        assert config.http_port is not None
        yield Served(config.http_port, app.state.counters)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)


async def _connect(api: Api, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = ssl.create_default_context(cafile=api.pki.ca_cert)
    return await within(
        asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname="localhost")
    )


async def _dribble(writer: asyncio.StreamWriter, data: bytes, every_s: float = 1.0) -> None:
    """Send ``data`` one byte every ``every_s``, until done or the server hangs up."""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every_s)


async def _until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes the connection (within ``timeout_s``)."""
    got = b""
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                got += chunk
    return got


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(STEP_S):
            await writer.wait_closed()


HEAD = b"GET /v1/keyset HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"


def test_the_default_header_deadline_is_ten_seconds() -> None:
    assert HEADER_TIMEOUT_S == 10.0


async def test_headers_dribbled_a_byte_a_second_are_cut_off_at_the_deadline(api: Api) -> None:
    async with server(api, header_timeout_s=2.0) as served:
        reader, writer = await _connect(api, served.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        sender = asyncio.create_task(_dribble(writer, HEAD), name="dribble-headers")
        try:
            got = await _until_closed(reader, 2.0 + SLACK_S)
            took = loop.time() - start
        finally:
            sender.cancel()
            await _close(writer)
    assert 2.0 - EARLY_S <= took < 2.0 + SLACK_S
    assert got.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"header_timeout"' in got
    assert served.counters["rejected.header_timeout"] == 1


async def test_a_silent_connection_is_closed_at_the_header_deadline_without_a_reply(
    api: Api,
) -> None:
    async with server(api, header_timeout_s=1.0) as served:
        reader, writer = await _connect(api, served.port)
        start = time.monotonic()
        try:
            assert await _until_closed(reader, 1.0 + SLACK_S) == b""
            took = time.monotonic() - start
        finally:
            await _close(writer)
    assert 1.0 - EARLY_S <= took < 1.0 + SLACK_S
    assert served.counters["rejected.header_timeout"] == 1


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(
    api: Api,
) -> None:
    async with server(api, header_timeout_s=2.0) as served:
        reader, writer = await _connect(api, served.port)
        try:
            await asyncio.sleep(1.5)  # most of the first deadline: it must not carry over
            writer.write(HEAD)
            await within(writer.drain())
            head = await within(reader.readuntil(b"\r\n\r\n"))
            assert head.startswith(b"HTTP/1.1 200 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await within(reader.readexactly(length))
            start = time.monotonic()
            sender = asyncio.create_task(_dribble(writer, HEAD), name="dribble-again")
            got = await _until_closed(reader, 2.0 + SLACK_S)
            took = time.monotonic() - start
            sender.cancel()
        finally:
            await _close(writer)
    assert 2.0 - EARLY_S <= took < 2.0 + SLACK_S
    assert got.startswith(b"HTTP/1.1 408 ")


async def test_a_body_dribbled_a_byte_a_second_is_cut_off_at_the_deadline(api: Api) -> None:
    # The app's own body deadline is 30 s here: the connection's is what ends it.
    head = (
        b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    async with server(api, header_timeout_s=5.0, body_timeout_s=2.0) as served:
        reader, writer = await _connect(api, served.port)
        writer.write(head)
        await within(writer.drain())
        start = time.monotonic()
        sender = asyncio.create_task(_dribble(writer, b'{"claim_token":' * 7), name="dribble")
        try:
            await _until_closed(reader, 2.0 + SLACK_S)
            took = time.monotonic() - start
        finally:
            sender.cancel()
            await _close(writer)
    assert 2.0 - EARLY_S <= took < 2.0 + SLACK_S
    assert served.counters["rejected.body_timeout"] == 1


async def test_a_body_refused_by_its_declared_length_closes_the_connection(api: Api) -> None:
    reader, writer = await _connect(api, api.config.http_port or 0)
    writer.write(b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n")
    await within(writer.drain())
    # The body it announced, a byte at a time: nothing the server should wait for.
    sender = asyncio.create_task(_dribble(writer, b" " * 100, every_s=0.2), name="dribble-413")
    try:
        got = await _until_closed(reader, 2.0)
    finally:
        sender.cancel()
        await _close(writer)
    assert got.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in got.lower()
