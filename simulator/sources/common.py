"""What every simulated source shares: the policy record, the fault knobs, the server.

``Knobs`` inject faults into the ``/v1`` routes (never into ``/_admin``, nor into
paying, which stands in for the driver's phone): latency, random 503s, an outage, HTML
error pages, a slow drip, malformed or oversized policy answers. ``HttpServer`` serves
any ASGI app with uvicorn in the caller's event loop on 127.0.0.1 and a free port.
"""

import asyncio
import contextlib
import html
import json
import random
import socket
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final, Literal, Self

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.protocol.clock import Clock, SystemClock

SHUTDOWN_TIMEOUT_S: Final = 2.0
JSON: Final = "application/json"
START_TIMEOUT_S: Final = 5.0

Malformed = Literal["off", "wrong_types", "missing_fields", "not_json", "html", "wrong_vehicle"]


def _malformed(value: object) -> object:
    if value is True:
        return "wrong_types"
    if value is False or value is None:
        return "off"
    return value


class Knobs(BaseModel):
    """Faults and timings, changed at any moment from Python or ``POST /_admin/knobs``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency_ms: float = Field(0.0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0, le=1)
    """The share of requests answered 503 (drawn from the service's seeded random)."""
    outage: bool = False
    outage_mode: Literal["503", "close"] = "503"
    """``503``: refuse every request; ``close``: start a response, then drop the connection."""
    html_errors: bool = False
    """Error bodies as an HTML page (``text/html``), as a proxy or gateway would send."""
    slow_drip: bool = False
    drip_chunk_bytes: int = Field(8, ge=1)
    drip_interval_ms: float = Field(20.0, ge=0)
    malformed: Annotated[Malformed, BeforeValidator(_malformed)] = "off"
    """Policy answers (``GET /v1/policies``) broken this way; ``true`` is ``wrong_types``."""
    oversize_kib: int = Field(0, ge=0, le=65_536)
    """Pad policy answers with this many KiB of filler."""
    lag_s: float = Field(0.0, ge=0)
    """National platform and third parties: how long a reported policy stays unseen."""
    duplicate_webhooks: bool = False
    """Insurers: deliver each webhook twice."""
    quote_ttl_s: float = Field(900.0, gt=0)
    """Insurers: how long a quote can be bound."""
    ctpl_surcharge_cny: float = Field(0.0, ge=0, le=10_000)
    """Insurers: add this to the CTPL premium, off the uniform tariff (the cloud must drop
    such a quote)."""


class Policy(BaseModel):
    """A CTPL policy as every source's JSON carries it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_no: str = Field(min_length=4, max_length=40)
    insurer_code: str = Field(min_length=1, max_length=16)
    insurer_name: str = Field(min_length=1, max_length=64)
    plate: str = Field(min_length=2, max_length=16)
    vin: str = Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$")
    start: date
    end: date
    status: Literal["in_force", "cancelled"] = "in_force"
    issued_at: AwareDatetime
    starts_at: AwareDatetime | None = None
    """The exact instant cover begins when not 00:00 China time of ``start`` (a term that
    an insurer starts on payment); left out of the JSON when None."""

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class ClaimsRecord(BaseModel):
    """A vehicle's CTPL claims record as the national platform keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_insured: bool = False
    """No record yet: a new vehicle's first term (no floating)."""
    claim_free_years: int = Field(1, ge=0, le=3)
    """Consecutive years without an at-fault accident (3: three or more)."""
    at_fault_claims_last_year: int = Field(0, ge=0, le=99)
    fatal_last_year: bool = False


class VehicleRecord(BaseModel):
    """A registered vehicle's facts as the national platform keeps them: what a CTPL
    premium is priced by (docs/sources.md §2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vin: str = Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$")
    plate: str = Field(min_length=2, max_length=16)
    region: str = Field(pattern=r"^[0-9]{6}$")
    """The registration region (GB/T 2260 code, e.g. ``310000`` 上海)."""
    kind: str = Field("family_car", pattern=r"^[a-z_]{1,32}$")
    """The CTPL vehicle category: ``family_car`` (家庭自用汽车), ``enterprise_passenger``…"""
    seats: int = Field(5, ge=1, le=99)
    displacement_l: str = Field("1.5", pattern=r"^[0-9]{1,2}\.[0-9]{1,3}$")
    """Litres as a decimal string (``0.0`` for a battery-electric car)."""
    fuel: str = Field("petrol", pattern=r"^[a-z_]{1,16}$")
    """``petrol``, ``diesel``, ``hybrid``, ``bev``, ``phev``, ``fcev``."""
    claims: ClaimsRecord = ClaimsRecord()

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def normal_plate(plate: str) -> str:
    """A plate compared as the sources compare it: no spaces or dots, upper case."""
    return plate.strip().replace("·", "").replace(" ", "").upper()


def matches(policy: Policy, plate: str | None, vin: str | None) -> bool:
    """Whether ``policy`` is the vehicle asked for: every given key must match."""
    if vin is not None and policy.vin != vin.strip().upper():
        return False
    return plate is None or normal_plate(policy.plate) == normal_plate(plate)


def rfc3339(instant: datetime) -> str:
    """An aware instant as RFC 3339 in UTC (``2026-01-01T00:00:00Z``)."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def error_response(knobs: Knobs, status: int, code: str, message: str) -> Response:
    """``{"error": {"code", "message"}}``, or an HTML page when the knob says so."""
    if knobs.html_errors:
        page = (
            f"<!DOCTYPE html><html><head><title>{status} {html.escape(code)}</title></head>"
            f"<body><h1>{status}</h1><p>{html.escape(message)}</p></body></html>"
        )
        return HTMLResponse(page, status_code=status)
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def malformed_policies(mode: Malformed, answer: dict[str, Any]) -> bytes:
    """A policy answer broken in the way ``mode`` names."""
    if mode == "not_json":
        return b'{"source": "national", "policies": [{"policy_no": '
    if mode == "html":
        return b"<!DOCTYPE html><html><body><h1>Welcome</h1></body></html>"
    broken = json.loads(json.dumps(answer))
    policies = broken["policies"] or [
        {"policy_no": "X", "insurer_code": "X", "insurer_name": "X", "plate": "X"}
    ]
    if mode == "wrong_types":
        broken["as_of"] = 1700000000
        policies[0]["start"] = 20260101
        policies[0]["status"] = True
    elif mode == "missing_fields":
        for key in ("end", "vin", "issued_at"):
            policies[0].pop(key, None)
    elif mode == "wrong_vehicle":
        policies[0]["vin"] = "LFV3A23C9E3000042"
        policies[0]["plate"] = "京A00000"
    broken["policies"] = policies
    return json.dumps(broken, ensure_ascii=False).encode()


def install_error_handlers(app: FastAPI, knobs: Knobs) -> None:
    """Every framework refusal in the project's error shape (HTML under ``html_errors``)."""

    async def http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "refused")
        return error_response(knobs, exc.status_code, code, str(exc.detail))

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        err = errors[0] if errors else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return error_response(knobs, 422, "bad_request", f"{where or 'body'}: {err.get('msg')}")

    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(RequestValidationError, invalid)


def _faulted(scope: Scope) -> bool:
    path: str = scope["path"]
    return path.startswith("/v1/") and not path.endswith("/pay")


class FaultInjector:
    """ASGI middleware that applies the knobs to the ``/v1`` routes (paying excepted)."""

    def __init__(self, app: ASGIApp, knobs: Knobs, rng: random.Random) -> None:
        self.app = app
        self.knobs = knobs
        self.rng = rng
        self.hits: Counter[str] = Counter()
        """Requests that reached the knobs, by ``METHOD /first/two`` path segments."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _faulted(scope):
            await self.app(scope, receive, send)
            return
        self.hits[f"{scope['method']} {'/'.join(scope['path'].split('/')[:3])}"] += 1
        k = self.knobs
        if k.latency_ms:
            await asyncio.sleep(k.latency_ms / 1000)
        if k.outage and k.outage_mode == "close":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"1000")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b'{"source":', "more_body": True})
            return  # uvicorn drops a connection whose response was started but not finished
        if k.outage or (k.error_rate and self.rng.random() < k.error_rate):
            code = "outage" if k.outage else "injected_error"
            await error_response(k, 503, code, "service unavailable")(scope, receive, send)
            return
        await self.app(scope, receive, self._dripping(send) if k.slow_drip else send)

    def _dripping(self, send: Send) -> Send:
        chunk, pause_s = self.knobs.drip_chunk_bytes, self.knobs.drip_interval_ms / 1000

        async def drip(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            for i in range(0, len(body), chunk):
                await send({"type": "http.response.body", "body": body[i : i + chunk],
                            "more_body": True})  # fmt: skip
                await asyncio.sleep(pause_s)
            await send({"type": "http.response.body", "body": b"", "more_body": more})

        return drip


class _Server(uvicorn.Server):
    """uvicorn in a loop it does not own: no signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only then.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Serve an ASGI app with uvicorn in this event loop; ``start`` again reuses the port."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the port is known once started)."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> Self:
        """Listen and serve; return once requests are accepted."""
        if self._task is not None:
            return self
        self._sock = _listen(self.host, self.port)
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None, lifespan="off", access_log=False, http="h11",
            ws="none", server_header=False, timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT_S),
        )  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(
            self._server.serve(sockets=[self._sock]), name=f"sim-http-{self.port}"
        )
        async with asyncio.timeout(START_TIMEOUT_S):
            while not self._server.started:
                if self._task.done():
                    await self._task  # raises what stopped it
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        """Stop serving and close the port; requests in flight are cut off."""
        task, server, sock = self._task, self._server, self._sock
        self._task = self._server = self._sock = None
        try:
            if task is not None and server is not None:
                # uvicorn's own shutdown polls every 0.1 s; a test suite stops hundreds.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                for listener in server.servers:
                    listener.close()
                for connection in list(server.server_state.connections):
                    connection.shutdown()
                for request in list(server.server_state.tasks):
                    request.cancel()
                async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                    # uvicorn offers no event for "all connections closed": poll, briefly.
                    while server.server_state.tasks or server.server_state.connections:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                    for listener in server.servers:
                        await listener.wait_closed()
        finally:
            if sock is not None:
                sock.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SimService:
    """A simulated source: a FastAPI app, its knobs, a clock, and its own server."""

    source: str

    def __init__(
        self,
        *,
        knobs: Knobs | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        port: int = 0,
    ) -> None:
        self.knobs = knobs if isinstance(knobs, Knobs) else Knobs.model_validate(knobs or {})
        self.clock: Clock = clock or SystemClock()
        self.rng = random.Random(seed)  # noqa: S311 - fault injection, not security
        self.app = FastAPI(title=f"simulated {type(self).__name__}", redirect_slashes=False)
        install_error_handlers(self.app, self.knobs)
        self._add_admin_routes()
        self._add_policy_routes()
        self.faults = FaultInjector(self.app, self.knobs, self.rng)
        self.server = HttpServer(self.faults, port=port)

    @property
    def hits(self) -> Counter[str]:
        """Requests to the ``/v1`` routes, by method and route (``GET /v1/policies``)."""
        return self.faults.hits

    @property
    def url(self) -> str:
        return self.server.url

    def set_knobs(self, **changes: Any) -> Knobs:
        """Change some knobs (validated); return them all."""
        for name, value in Knobs.model_validate(self.knobs.model_dump() | changes):
            if name in changes:
                setattr(self.knobs, name, value)
        return self.knobs

    def _add_admin_routes(self) -> None:
        @self.app.get("/_admin/knobs")
        async def get_knobs() -> Knobs:
            return self.knobs

        @self.app.post("/_admin/knobs")
        async def post_knobs(changes: dict[str, Any]) -> Knobs:
            try:
                return self.set_knobs(**changes)
            except ValueError as exc:
                raise HTTPException(422, " ".join(str(exc).split())[:300]) from exc

    def visible_policies(self, now: datetime) -> list[Policy]:
        """Every policy this source would answer with at ``now``."""
        raise NotImplementedError

    def add_policy(self, policy: Policy | Mapping[str, Any]) -> Policy:
        """Seed a policy, known to this source at once."""
        raise NotImplementedError

    def policies_body(self, plate: str | None, vin: str | None) -> tuple[bytes, str]:
        """The body and media type of ``GET /v1/policies``, the knobs applied."""
        now = self.clock.now()
        found = [p.wire() for p in self.visible_policies(now) if matches(p, plate, vin)]
        answer: dict[str, Any] = {"source": self.source, "as_of": rfc3339(now), "policies": found}
        if self.knobs.oversize_kib:
            answer["filler"] = "x" * (1024 * self.knobs.oversize_kib)
        mode = self.knobs.malformed
        if mode != "off":
            return malformed_policies(mode, answer), "text/html" if mode == "html" else JSON
        return json.dumps(answer, ensure_ascii=False).encode(), JSON

    def _add_policy_routes(self) -> None:
        @self.app.get("/v1/policies")
        async def policies(
            plate: Annotated[str | None, Query(max_length=16)] = None,
            vin: Annotated[str | None, Query(max_length=17)] = None,
        ) -> Response:
            if plate is None and vin is None:
                return error_response(self.knobs, 400, "bad_request", "give plate or vin")
            body, media = self.policies_body(plate, vin)
            return Response(body, media_type=media)

        @self.app.post("/_admin/policies", status_code=201)
        async def seed(policies: Policy | list[Policy]) -> list[Policy]:
            given = policies if isinstance(policies, list) else [policies]
            try:
                return [self.add_policy(p) for p in given]
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc

    async def start(self) -> Self:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
