"""The HTTP shell: error shape and codes, body limit, counters, serving in the caller's loop."""

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from cloud.api import create_app, serve_api
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


async def test_an_openapi_description_is_served(api: Api) -> None:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    assert "/v1/enroll" in r.json()["paths"]


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
        head = await within(reader.readuntil(b"\r\n\r\n"))
        assert head.startswith(b"HTTP/1.1 408 ")
        writer.close()
        await within(writer.wait_closed())
        assert app.state.counters["rejected.body_timeout"] == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)
