"""The HTTPS API of docs/enrollment.md: the HTTP shell around ``registrar.Registrar``.

The only module that imports fastapi, starlette and uvicorn. ``create_app`` builds the
app; ``serve_api`` runs it in the caller's event loop, beside the MQTT worker. Every
refusal is ``{"error": {"code", "message"}}``, counted in ``app.state.counters`` as
``rejected.<code>``, and stores nothing. Request bodies are read whole (at most 16 KiB,
within ``BODY_TIMEOUT_S``) before a route sees them; a request head must arrive within
``HEADER_TIMEOUT_S`` (``_TimedH11``: uvicorn has no such deadline). ``/metrics`` needs the
``metrics_token``, ``/openapi.json`` the admin token; ``/docs`` is not served.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from typing import ClassVar, Final

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.protocol.clock import Clock, SystemClock

from . import enrollment as en
from . import ops as op
from .config import CloudConfig
from .errors import ApiServeError, Refused, StoreError
from .fleet_api import add_fleet_routes
from .registrar import NoEvents, Registrar, VehicleEvents
from .signing_keys import SigningKeys
from .store import Store

__all__ = ["NoEvents", "VehicleEvents", "create_app", "serve_api"]

log = logging.getLogger(__name__)
BODY_TIMEOUT_S: Final = 10.0
HEADER_TIMEOUT_S: Final = 10.0
"""From the connection (or the first byte of the next request on it) to the end of the
request head; a client dribbling its headers is cut off then."""
BODY_GRACE_S: Final = 2.0
"""The connection's own body deadline is ``BODY_TIMEOUT_S`` plus this: the app answers a
slow body with a 408 first, the connection deadline catches what the app never reads."""
SHUTDOWN_TIMEOUT_S: Final = 5.0
LISTEN_BACKLOG: Final = 2048
_CODES_BY_STATUS: Final = {404: "not_found", 405: "method_not_allowed"}


def _error(counters: Counter[str], status: int, code: str, message: str) -> JSONResponse:
    counters[f"rejected.{code}"] += 1
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"code": code, "message": message[:256]}}
    return JSONResponse(body, status_code=status, headers=headers)


class _BodyLimit:
    """ASGI middleware: read the body whole; over ``limit`` bytes is 413, too slow is 408."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float, counters: Counter[str]) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(scope, receive, send, 413)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        await self._refuse(scope, receive, send, 413)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(scope, receive, send, 408)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int) -> None:
        if status == 413:
            code, msg = "body_too_large", f"request bodies are at most {self.limit} bytes"
        else:
            code, msg = "body_timeout", f"the body did not arrive within {self.timeout_s} s"
        response = _error(self.counters, status, code, msg)
        # The rest of the body is never read: close, or a client could keep sending it.
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def _bearer(request: Request) -> str | None:
    """The request's bearer token, or None when it has no well-formed one."""
    return en.bearer_token(request.headers.get("authorization", ""))


def create_app(
    config: CloudConfig,
    store: Store,
    events: VehicleEvents,
    *,
    clock: Clock | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
    signing_keys: SigningKeys | None = None,
    ops: op.OpsSource | None = None,
) -> FastAPI:
    """The API app over an open ``store`` (its own connection); reads its key files now.

    ``signing_keys``: the ring the worker beside it signs with (else read from the config).
    ``ops``: the worker beside it, whose counters ``/metrics`` shows and whose broker link
    ``/readyz`` needs (without one, only the store is checked).
    """
    reg = Registrar.load(config, store, events, clock or SystemClock(), signing_keys)
    # No /docs, /redoc or public /openapi.json: /openapi.json is served to the admin below.
    app = FastAPI(
        title="CTPL cloud API",
        version="1",
        redirect_slashes=False,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.counters = reg.counters
    app.add_middleware(
        _BodyLimit, limit=en.MAX_REQUEST_BYTES, timeout_s=body_timeout_s, counters=reg.counters
    )
    _add_error_handlers(app, reg.counters)

    @app.post("/v1/fleets", status_code=201)
    async def create_fleet(request: Request, req: en.FleetCreate) -> en.FleetCreated:
        return await reg.create_fleet(_bearer(request), req)

    @app.post("/v1/fleets/{fleet_id}/claims", status_code=201)
    async def create_claims(
        request: Request, fleet_id: str, req: en.ClaimsCreate
    ) -> en.ClaimsCreated:
        return await reg.create_claims(_bearer(request), fleet_id, req)

    @app.post("/v1/enroll", status_code=201)
    async def enroll(req: en.EnrollRequest) -> en.Enrollment:
        return await reg.enroll(req)

    @app.post("/v1/renew")
    async def renew(req: en.RenewRequest) -> en.Enrollment:
        return await reg.renew(req)

    @app.get("/v1/keyset")
    async def keyset() -> en.KeySetAnswer:
        return en.KeySetAnswer(keyset=reg.keyset)

    add_fleet_routes(app, reg)

    @app.post("/v1/webhooks/insurers/{code}")
    async def insurer_webhook(request: Request, code: str) -> Response:
        status, answer = await events.insurer_webhook(
            code[:16],
            await request.body(),
            request.headers.get("x-ctpl-timestamp"),
            request.headers.get("x-ctpl-signature"),
        )
        return JSONResponse(answer, status_code=status)

    # Operations (docs/operations.md, "Who may reach them"). /healthz and /readyz need no
    # token (probes rarely carry one) and reveal nothing; /metrics needs its own token.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "alive"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        connected = None if ops is None else ops.ready.is_set()
        ready = await op.readiness(connected, lambda: store.fleet("readyz-probe"))
        return JSONResponse(ready.body(), status_code=200 if ready.ready else 503)

    metrics_token = config.metrics_token.get_secret_value() if config.metrics_token else ""
    metrics_digest = en.token_digest(metrics_token) if metrics_token else None

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if metrics_digest is None:
            raise Refused(403, "forbidden", "no metrics_token is configured: /metrics is off")
        token = _bearer(request)
        if token is None or not en.digests_match(en.token_digest(token), metrics_digest):
            raise Refused(401, "unauthorized", "/metrics needs the metrics token")
        text = op.render(reg.counters, None if ops is None else ops.ops_snapshot())
        return Response(text, media_type=op.CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> Response:
        token = _bearer(request)
        admin = reg.admin_digest
        if admin is None or token is None or not en.digests_match(en.token_digest(token), admin):
            raise Refused(401, "unauthorized", "the API description is for the admin")
        return JSONResponse(app.openapi())

    @app.post("/v1/vehicles/{vid}/revoke")
    async def revoke(request: Request, vid: str, req: en.RevokeRequest | None = None) -> en.Revoked:
        return await reg.revoke(_bearer(request), vid)

    return app


def _add_error_handlers(app: FastAPI, counters: Counter[str]) -> None:
    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return _error(counters, exc.status, exc.code, str(exc))

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        err = errors[0] if errors else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return _error(counters, 422, "bad_request", f"{where or 'body'}: {err.get('msg')}")

    async def http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _CODES_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
        return _error(counters, exc.status_code, code, str(exc.detail))

    async def unavailable(_: Request, exc: Exception) -> Response:
        log.error("store: %s", exc)
        return _error(counters, 503, "unavailable", "the store is unavailable")

    async def internal(_: Request, exc: Exception) -> Response:
        return _error(counters, 500, "internal", "internal error")

    app.add_exception_handler(Refused, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(StoreError, unavailable)
    app.add_exception_handler(Exception, internal)


class _Server(uvicorn.Server):
    """uvicorn in a loop it does not own: no signal handlers, and a readiness event."""

    def __init__(self, config: uvicorn.Config, ready: asyncio.Event | None) -> None:
        super().__init__(config)
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to whoever runs the loop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._ready is not None:
            self._ready.set()


class _TimedH11(H11Protocol):
    """uvicorn's h11 protocol with read deadlines, which uvicorn lacks: the request head
    within ``header_timeout_s`` of the connection (or of the first byte of the next
    request on it), its body within ``body_timeout_s`` of the head. A client sending a
    header byte a second is cut off at the deadline, with a 408 if it sent anything."""

    header_timeout_s: ClassVar[float] = HEADER_TIMEOUT_S
    body_timeout_s: ClassVar[float] = BODY_TIMEOUT_S + BODY_GRACE_S
    counters: ClassVar[Counter[str]] = Counter()

    _deadline: asyncio.TimerHandle | None = None
    _reading: str | None = None
    """What the deadline is for: "header", "body", or None."""
    _header_bytes: bool = False
    """Whether any byte of the request head came (a silent connection gets no 408)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("header")

    def data_received(self, data: bytes) -> None:
        if self._reading is None and self.conn.their_state is h11.IDLE:
            self._arm("header")  # the next request on a kept-alive connection
        if self._reading == "header":
            self._header_bytes = True
        super().data_received(data)
        state = self.conn.their_state
        if self._reading == "header" and state is not h11.IDLE:
            self._arm("body" if state is h11.SEND_BODY else None)
        elif self._reading == "body" and state is not h11.SEND_BODY:
            self._arm(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _arm(self, reading: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._reading, self._header_bytes = reading, False
        if reading is not None:
            delay = self.header_timeout_s if reading == "header" else self.body_timeout_s
            self._deadline = self.loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        reading, sent = self._reading, self._header_bytes
        self._deadline, self._reading = None, None
        if self.transport.is_closing():
            return
        self.counters[f"rejected.{reading}_timeout"] += 1
        if reading == "header" and sent:
            body = b'{"error":{"code":"header_timeout","message":"the headers came too slowly"}}'
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
        self.transport.close()


def _timed_h11(
    header_timeout_s: float, body_timeout_s: float, counters: Counter[str]
) -> type[_TimedH11]:
    """``_TimedH11`` with these deadlines, counting timeouts in ``counters``."""

    class TimedH11(_TimedH11):
        pass

    TimedH11.header_timeout_s = header_timeout_s
    TimedH11.body_timeout_s = body_timeout_s
    TimedH11.counters = counters
    return TimedH11


def _tls(_: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as the broker's listener
    return context


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound here: uvicorn would sys.exit() on a busy port)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
    # then, and without it each keep-alive request waits ≈ 40 ms for a delayed ACK.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_api(
    app: FastAPI,
    config: CloudConfig,
    *,
    ready: asyncio.Event | None = None,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S + BODY_GRACE_S,
) -> None:
    """Serve ``app`` over HTTPS on config.http_host:http_port until cancelled; sets ``ready``.

    Every connection must send a request head within ``header_timeout_s`` and its body
    within ``body_timeout_s`` after that, else it is closed (``_TimedH11``)."""
    if config.http_port is None or config.api_cert_file is None or config.api_key_file is None:
        raise ApiServeError("the API needs http_port, api_cert_file and api_key_file")
    counters = getattr(app.state, "counters", None)
    uv = uvicorn.Config(
        app,
        http=_timed_h11(
            header_timeout_s, body_timeout_s, Counter() if counters is None else counters
        ),
        ssl_certfile=config.api_cert_file,
        ssl_keyfile=config.api_key_file,
        ssl_context_factory=_tls,
        log_config=None,
        lifespan="off",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_S),
    )
    try:
        uv.load()
        sock = _listen(config.http_host, config.http_port)
    except (OSError, ssl.SSLError) as exc:
        where = f"{config.http_host}:{config.http_port}"
        raise ApiServeError(f"cannot serve the API on {where}: {exc}") from exc
    server = _Server(uv, ready)
    try:
        await server.serve(sockets=[sock])
    except asyncio.CancelledError:
        if server.started:
            async with asyncio.timeout(SHUTDOWN_TIMEOUT_S + 1):
                await server.shutdown(sockets=[sock])
        raise
    finally:
        sock.close()
