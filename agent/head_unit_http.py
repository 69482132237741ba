"""The head unit's local HTTP API and page: a small, strict HTTP/1.1 server on asyncio streams.

Routes (docs/head-unit.md has the details)::

    GET  /             the page (``head_unit_page``)          HEAD too
    GET  /api/state    the snapshot, JSON                      HEAD too
    GET  /api/events   Server-Sent Events: ``event: state`` now and on every change
    POST /api/answer   {"prompt_id": int, "answer": str}  →  {"ok": true}
    POST /api/quote    {"quote_id": str}  →  {"ok": true}  (the driver's choice of quote)

One request per connection, answered with ``Connection: close`` (a page and a few taps
on the loopback need no keep-alive). The pure part parses: ``parse_head`` (the request
head) and ``parse_answer`` (the JSON body) raise ``HttpError``; ``check_host`` and
``check_origin`` refuse DNS-rebinding hosts and cross-origin POSTs. The shell (``serve``)
only moves bytes under ``Limits`` and timeouts, and counts every outcome in a Counter:
``page``, ``state``, ``events``, ``answer``, or the error code sent.

Errors: ``HttpError(status, code, message)`` is a refused request; it never leaves this
module, it becomes the JSON reply ``{"error": code, "message": message}``.
"""

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field
from http import HTTPStatus
from typing import Any, Final

from . import head_unit_page
from .errors import AgentError
from .head_unit import AnswerError, HeadUnit

log = logging.getLogger(__name__)

ROUTES: Final[Mapping[str, tuple[str, ...]]] = {
    "/": ("GET", "HEAD"),
    "/api/state": ("GET", "HEAD"),
    "/api/events": ("GET",),
    "/api/answer": ("POST",),
    "/api/quote": ("POST",),
}
SECURITY_HEADERS: Final = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"
"""Every response that is not the page: nothing may load or run from it."""
SSE_RETRY_MS: Final = 2000
MAX_PROMPT_ID: Final = 2**53
LINGER_BYTES: Final = 65536

_TCHARS: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rf"({_TCHARS}) (\S+) HTTP/([0-9])\.([0-9])")
_TARGET: Final = re.compile(r"/[!-~]*")
_HEADER: Final = re.compile(rf"({_TCHARS}):[ \t]*(.*?)[ \t]*")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SINGLETONS: Final = frozenset({"host", "content-length", "content-type", "origin"})
_PORT: Final = re.compile(r"[0-9]{1,5}")
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and timeouts of the server; the defaults suit a head unit on the loopback."""

    max_head_bytes: int = 8192
    max_headers: int = 48
    max_body_bytes: int = 4096
    head_timeout_s: float = 5.0
    """The whole request head must arrive within this (a slow-loris gets 408)."""
    body_timeout_s: float = 5.0
    write_timeout_s: float = 10.0
    linger_s: float = 1.0
    """After a reply, read and drop what the client still sends, at most this long, so
    that closing does not reset the connection before the client has read the reply."""
    keepalive_s: float = 15.0
    """An SSE comment this often when nothing else was sent."""
    recheck_s: float = 1.0
    """How often an SSE stream compares the snapshot with the one last sent: ``online``
    and the trusted-time fields change without the model publishing a change."""

    def __post_init__(self) -> None:
        if any(value <= 0 for value in astuple(self)):
            raise ValueError("every limit must be above 0")


class HttpError(Exception):
    """A refused request: the HTTP ``status``, a stable ``code`` and a message for humans."""

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class _ClientGone(Exception):
    """The client closed the connection or stopped reading."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head; header names lower-cased, repeated ones joined with ", "."""

    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]


# ---- the pure part ------------------------------------------------------------------


def parse_head(data: bytes, limits: Limits = Limits()) -> RequestHead:
    """The request line and headers in ``data`` (up to, without, the blank line)."""
    text = data.decode("latin-1")
    lines = text.split("\r\n")
    if any("\r" in line or "\n" in line for line in lines):
        raise HttpError(400, "bad_request", "bare CR or LF in the request head")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        raise HttpError(400, "bad_request", "malformed request line")
    method, target, major, minor = request.groups()
    version = (int(major), int(minor))
    if version not in ((1, 0), (1, 1)):
        raise HttpError(505, "version_not_supported", "only HTTP/1.0 and HTTP/1.1")
    if _TARGET.fullmatch(target) is None:
        raise HttpError(400, "bad_request", "the target must be a path")
    if len(lines) - 1 > limits.max_headers:
        raise HttpError(431, "headers_too_large", f"more than {limits.max_headers} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:  # also obs-fold (a line starting with a space) and "Name :"
            raise HttpError(400, "bad_request", "malformed header line")
        name, value = match.group(1).lower(), match.group(2)
        if _BAD_VALUE.search(value):
            raise HttpError(400, "bad_request", f"control character in {name}")
        if name in headers:
            if name in _SINGLETONS:
                raise HttpError(400, "bad_request", f"{name} given twice")
            value = f"{headers[name]}, {value}"
        headers[name] = value
    if version == (1, 1) and "host" not in headers:
        raise HttpError(400, "bad_request", "HTTP/1.1 needs a Host header")
    return RequestHead(method, target, version, headers)


def check_host(head: RequestHead) -> str:
    """The Host, lower-cased, if it is an IP literal or ``localhost`` (with a port or not).

    A page that a DNS-rebinding attacker serves under a name of its own, resolved to the
    gateway, sends that name: refused, so no other site can read the snapshot.
    """
    host = head.headers.get("host", "").lower()
    name, port = host, ""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise HttpError(400, "bad_host", "malformed Host")
            port = rest[1:]
        literal = _is_ip(name, 6)
    else:
        if ":" in host:
            name, _, port = host.partition(":")
        literal = name == "localhost" or _is_ip(name, 4)
    if not literal or (port and _PORT.fullmatch(port) is None):
        raise HttpError(400, "bad_host", "Host must be an IP address or localhost")
    return host


def _is_ip(text: str, version: int) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return address.version == version


def own_origin(host: str) -> str:
    """The origin of a page served under ``host`` (a checked Host) over plain HTTP."""
    if host.endswith(":80"):
        host = host[:-3]
    return f"http://{host}"


def check_origin(head: RequestHead, host: str) -> None:
    """Refuse a request whose Origin is present and not this server's (CSRF from other pages)."""
    origin = head.headers.get("origin")
    if origin is not None and origin.lower() != own_origin(host):
        raise HttpError(403, "forbidden_origin", "cross-origin requests are refused")


def body_length(head: RequestHead, limits: Limits) -> int:
    """The length of a POST body: Content-Length only (no chunked), at most the limit."""
    if "transfer-encoding" in head.headers:
        if "content-length" in head.headers:
            raise HttpError(400, "bad_request", "both Transfer-Encoding and Content-Length")
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    text = head.headers.get("content-length")
    if text is None:
        raise HttpError(411, "length_required", "send the body with a Content-Length")
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise HttpError(400, "bad_request", "malformed Content-Length")
    length = int(text)
    if length > limits.max_body_bytes:
        raise HttpError(413, "payload_too_large", f"bodies are at most {limits.max_body_bytes} B")
    return length


def check_json_type(head: RequestHead) -> None:
    """Only ``application/json`` bodies (a cross-origin one would need a CORS preflight)."""
    media = head.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise HttpError(415, "unsupported_media_type", "send application/json")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_answer(body: bytes) -> tuple[int, str]:
    """``(prompt_id, answer)`` from the body of POST /api/answer; raise HttpError (400)."""
    try:
        data = json.loads(
            body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, "bad_request", "the body is not one JSON object") from None
    if not isinstance(data, dict) or set(data) != {"prompt_id", "answer"}:
        raise HttpError(400, "bad_request", 'expected {"prompt_id": int, "answer": str}')
    prompt_id, answer = data["prompt_id"], data["answer"]
    if type(prompt_id) is not int or not 0 <= prompt_id < MAX_PROMPT_ID:
        raise HttpError(400, "bad_request", "prompt_id must be a whole number")
    if not isinstance(answer, str):
        raise HttpError(400, "bad_request", "answer must be a string")
    return prompt_id, answer


QUOTE_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_quote(body: bytes) -> str:
    """The ``quote_id`` from the body of POST /api/quote; raise HttpError (400)."""
    try:
        data = json.loads(
            body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, "bad_request", "the body is not one JSON object") from None
    if not isinstance(data, dict) or set(data) != {"quote_id"}:
        raise HttpError(400, "bad_request", 'expected {"quote_id": str}')
    quote_id = data["quote_id"]
    if not isinstance(quote_id, str) or QUOTE_ID_RE.fullmatch(quote_id) is None:
        raise HttpError(400, "bad_request", "quote_id must be 1..64 letters, digits, _ or -")
    return quote_id


def response(
    status: int,
    body: bytes,
    content_type: str,
    *,
    csp: str = API_CSP,
    headers: tuple[tuple[str, str], ...] = (),
    head_only: bool = False,
    length: bool = True,
) -> bytes:
    """A whole response that ends the connection. No Date: the gateway's clock is not to
    be trusted; no Content-Length when not ``length`` (the body ends with the connection)."""
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        *([f"Content-Length: {len(body)}"] if length else []),
        "Connection: close",
        f"Content-Security-Policy: {csp}",
        *(f"{k}: {v}" for k, v in SECURITY_HEADERS + headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def json_bytes(value: object) -> bytes:
    """Compact UTF-8 JSON on one line (so it fits one SSE ``data:`` line)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(status: int, value: object, **kwargs: Any) -> bytes:
    """A JSON response."""
    return response(status, json_bytes(value), "application/json", **kwargs)


def error_response(exc: HttpError) -> bytes:
    """The JSON reply for a refused request."""
    return json_response(
        exc.status, {"error": exc.code, "message": exc.message}, headers=exc.headers
    )


def sse_event(snapshot: Mapping[str, Any]) -> bytes:
    """One ``state`` event."""
    return b"event: state\ndata: " + json_bytes(snapshot) + b"\n\n"


def _comparable(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "version"}


# ---- the shell -------------------------------------------------------------------------


@dataclass(slots=True)
class _Connection:
    """One client connection, and whether a response has begun on it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    limits: Limits
    responded: bool = False

    async def send(self, data: bytes) -> None:
        self.responded = True
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await self.writer.drain()
        except (ConnectionError, TimeoutError):
            raise _ClientGone from None

    async def read_head(self) -> tuple[bytes, bytes] | None:
        """The head (without the blank line) and the bytes after it; None: nothing came."""
        buf = bytearray()
        limit = self.limits.max_head_bytes
        try:
            async with asyncio.timeout(self.limits.head_timeout_s):
                while True:
                    chunk = await self.reader.read(4096)
                    if not chunk:
                        if buf:
                            raise _ClientGone
                        return None
                    buf += chunk
                    while buf.startswith(b"\r\n"):  # tolerated before a request line
                        del buf[:2]
                    end = buf.find(b"\r\n\r\n")
                    if _BARE_LF.search(buf, 0, len(buf) if end < 0 else end):
                        raise HttpError(400, "bad_request", "bare LF in the request head")
                    if end > limit or (end < 0 and len(buf) > limit):
                        raise HttpError(431, "headers_too_large", "the request head is too large")
                    if end >= 0:
                        return bytes(buf[:end]), bytes(buf[end + 4 :])
        except TimeoutError:
            if not buf:  # a browser's speculative connection: nothing to answer
                return None
            raise HttpError(408, "timeout", "the request head came too slowly") from None

    async def read_body(self, rest: bytes, length: int) -> bytes:
        """``length`` bytes of body: those already read, then the rest within the timeout."""
        body = rest[:length]
        if len(body) < length:
            try:
                async with asyncio.timeout(self.limits.body_timeout_s):
                    body += await self.reader.readexactly(length - len(body))
            except TimeoutError:
                raise HttpError(408, "timeout", "the body came too slowly") from None
            except asyncio.IncompleteReadError:
                raise _ClientGone from None
        return body

    async def linger(self) -> None:
        """Half-close and drop what the client still sends, briefly (see Limits.linger_s)."""
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            dropped = 0
            async with asyncio.timeout(self.limits.linger_s):
                while dropped < LINGER_BYTES and (chunk := await self.reader.read(4096)):
                    dropped += len(chunk)

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            self.writer.transport.abort()


class _Server:
    """The connections of one ``serve`` call."""

    def __init__(self, model: HeadUnit, counters: Counter[str], limits: Limits) -> None:
        self.model = model
        self.counters = counters
        self.limits = limits
        self.page = head_unit_page.page().encode()
        self.page_csp = head_unit_page.content_security_policy()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: one request, one response (or one event stream), then close."""
        task = asyncio.current_task()
        if task is None or self.closing:
            writer.transport.abort()
            return
        task.set_name("head-unit-http-connection")
        self.tasks.add(task)
        conn = _Connection(reader, writer, self.limits)
        try:
            await self._exchange(conn)
        except asyncio.CancelledError:
            writer.transport.abort()  # serve() is ending: no flush, no wait
            raise
        except (_ClientGone, ConnectionError):
            self.counters["closed_early"] += 1
        except Exception:  # a bug must not reach the event loop, nor stop the others
            self.counters["internal"] += 1
            log.exception("head unit: request failed")
            if not conn.responded:
                reply = json_response(500, {"error": "internal", "message": "internal error"})
                with contextlib.suppress(Exception):
                    await conn.send(reply)
        finally:
            self.tasks.discard(task)
        await conn.close()

    async def _exchange(self, conn: _Connection) -> None:
        try:
            got = await conn.read_head()
            if got is None:
                self.counters["idle"] += 1
                return
            raw, rest = got
            await self._route(conn, parse_head(raw, self.limits), rest)
        except HttpError as exc:
            self.counters[exc.code] += 1
            log.debug("head unit: %s %s", exc.status, exc.message)
            await conn.send(error_response(exc))
        await conn.linger()

    async def _route(self, conn: _Connection, head: RequestHead, rest: bytes) -> None:
        host = check_host(head)
        methods = ROUTES.get(head.path)
        if methods is None:
            raise HttpError(404, "not_found", "no such path")
        if head.method not in methods:
            allow = (("Allow", ", ".join(methods)),)
            raise HttpError(405, "method_not_allowed", f"{head.method} not allowed", allow)
        head_only = head.method == "HEAD"
        if head.path == "/":
            self.counters["page"] += 1
            html = "text/html; charset=utf-8"
            await conn.send(response(200, self.page, html, csp=self.page_csp, head_only=head_only))
        elif head.path == "/api/state":
            self.counters["state"] += 1
            await conn.send(json_response(200, self.model.snapshot(), head_only=head_only))
        elif head.path == "/api/events":
            await self._events(conn)
        elif head.path == "/api/quote":
            await self._quote(conn, head, host, rest)
        else:
            await self._answer(conn, head, host, rest)

    async def _quote(self, conn: _Connection, head: RequestHead, host: str, rest: bytes) -> None:
        check_origin(head, host)
        check_json_type(head)
        body = await conn.read_body(rest, body_length(head, self.limits))
        quote_id = parse_quote(body)
        try:
            await self.model.accept_quote(quote_id)
        except AnswerError as exc:
            raise HttpError(409, exc.code, str(exc)) from None
        except AgentError as exc:
            log.warning("head unit: quote %s: %s", quote_id, exc)
            raise HttpError(503, "unavailable", "the agent cannot take a choice now") from None
        self.counters["quote"] += 1
        await conn.send(json_response(200, {"ok": True}))

    async def _answer(self, conn: _Connection, head: RequestHead, host: str, rest: bytes) -> None:
        check_origin(head, host)
        check_json_type(head)
        body = await conn.read_body(rest, body_length(head, self.limits))
        prompt_id, answer = parse_answer(body)
        try:
            await self.model.answer(prompt_id, answer)
        except AnswerError as exc:
            status = 409 if exc.code == "stale_prompt" else 400
            raise HttpError(status, exc.code, str(exc)) from None
        except AgentError as exc:  # the answer may be on disk; its intents were not recorded
            log.warning("head unit: answer %s to prompt %d: %s", answer, prompt_id, exc)
            raise HttpError(503, "unavailable", "the agent cannot take answers now") from None
        self.counters["answer"] += 1
        await conn.send(json_response(200, {"ok": True}))

    async def _events(self, conn: _Connection) -> None:
        """Stream the snapshot: now, on every change, on a recheck that differs; keep-alives."""
        self.counters["events"] += 1
        stream = "text/event-stream; charset=utf-8"
        head = response(200, b"", stream, head_only=True, length=False)
        await conn.send(head + f"retry: {SSE_RETRY_MS}\n\n".encode())
        latest: list[dict[str, Any]] = []
        changed = asyncio.Event()

        async def pump() -> None:
            async for snapshot in self.model.changes():
                latest[:] = [snapshot]
                changed.set()

        async def watch() -> None:
            while await conn.reader.read(1024):
                pass  # a client has nothing to say on this stream
            raise _ClientGone

        async def push() -> None:
            loop = asyncio.get_running_loop()
            sent: dict[str, Any] | None = None
            last_write = loop.time()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.limits.recheck_s):
                        await changed.wait()
                data = b""
                if changed.is_set():
                    changed.clear()
                    sent = _comparable(latest[0])
                    data = sse_event(latest[0])
                elif sent is not None:
                    snapshot = self.model.snapshot()
                    if _comparable(snapshot) != sent:
                        sent = _comparable(snapshot)
                        data = sse_event(snapshot)
                if not data and loop.time() - last_write >= self.limits.keepalive_s:
                    data = b": keep-alive\n\n"
                if data:
                    await conn.send(data)
                    last_write = loop.time()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(), name="head-unit-sse-changes")
                tg.create_task(watch(), name="head-unit-sse-watch")
                tg.create_task(push(), name="head-unit-sse-push")
        except* (_ClientGone, ConnectionError):
            self.counters["events_ended"] += 1


def _url(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    if host in ("0.0.0.0", ""):  # noqa: S104 - naming the wildcard, not binding to it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


async def serve(
    model: HeadUnit,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    counters: Counter[str] | None = None,
    limits: Limits | None = None,
) -> None:
    """Serve the head-unit page and API on host:port until cancelled; ``ready(url)`` once up.

    Port 0 takes any free port. Outcomes are counted in ``counters`` (see the module
    docstring). On cancellation every connection is closed at once, event streams too.
    """
    server = _Server(model, Counter() if counters is None else counters, limits or Limits())
    listener = await asyncio.start_server(server.handle, host, port)
    try:
        if ready is not None:
            ready(_url(listener.sockets[0].getsockname()))
        await asyncio.Event().wait()  # until cancelled
    finally:
        server.closing = True
        listener.close()
        tasks = list(server.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()
