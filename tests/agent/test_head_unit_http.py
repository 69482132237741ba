"""The head unit's HTTP server on real sockets: every route, status code and refusal.

The model is a real ``HeadUnit`` (a real Store on a temp dir, a ``SimulatedBus``) over a
small fake of the agent that judges one signed-looking state at a given trusted instant,
so a d15 prompt is on screen when each test starts. Raw sockets send what no client
library would: junk, huge or stalled heads, bodies that never come.
"""

import asyncio
import base64
import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import display, head_unit_http, head_unit_page
from agent.errors import NotRunningError
from agent.head_unit import HeadUnit
from agent.head_unit_http import HttpError, Limits, RequestHead, check_host, parse_head
from agent.protocol import messages
from agent.protocol.messages import PolicyState
from agent.protocol.vin import vin_digest
from agent.store import Store
from agent.trusted_time import TrustedNow
from agent.vehicle import SimulatedBus
from tests.agent.conftest import WAIT_S, eventually

VID = "vaaaaaaaaaaaaaaa1"
VIN = "LSGCAR00000000001"
NOW = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)
END = date(2025, 6, 11)  # 10 days left in China time: the d15 stage
LIMITS = Limits(
    head_timeout_s=0.4, body_timeout_s=0.4, linger_s=0.2, keepalive_s=0.3, recheck_s=0.1
)


@dataclass
class FakeAgent:
    """What the head unit needs of the agent: one state judged at trusted time NOW."""

    state: PolicyState | None
    vid: str = VID
    connected: bool = True
    renewal: messages.RenewalUpdate | None = None
    events: list[tuple[str, str | None]] = field(default_factory=list)
    renewals: list[str] = field(default_factory=list)
    failing: bool = False

    def status_view(self) -> display.StatusView | display.Unverified:
        return display.view(self.state, TrustedNow.given(NOW))

    async def report_event(self, event: str, detail: str | None = None) -> str:
        if self.failing:
            raise NotRunningError()
        self.events.append((event, detail))
        return f"e{len(self.events)}"

    async def request_renewal(self, action: str, quote_id: str | None = None) -> str:
        self.renewals.append(action)
        return f"r{len(self.renewals)}"


def expiring_state() -> PolicyState:
    return PolicyState(
        vid=VID,
        seq=1,
        version=1,
        issued_at=NOW,
        fresh_until=NOW + timedelta(days=7),
        status="expiring",
        insurer_code="PICC",
        insurer_name="PICC P&C",
        policy_no_masked="PDZA****1234",
        coverage_start=date(2024, 6, 12),
        coverage_end=END,
        source="national",
        verified_at=NOW,
        plate_masked="沪A·****8",
        claims_phone="95518",
        vin_digest=vin_digest(VID, VIN),
    )


@dataclass
class Served:
    url: str
    port: int
    unit: HeadUnit
    agent: FakeAgent
    bus: SimulatedBus
    counters: Counter[str]
    task: asyncio.Task[None]

    @property
    def prompt_id(self) -> int:
        shown = self.unit.on_screen
        assert shown is not None
        return shown.n


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A head unit with a prompt on screen, served on a free port (cancelled after)."""
    agent = FakeAgent(expiring_state())
    bus = SimulatedBus(vin=VIN)
    unit = HeadUnit(agent, bus=bus, poll_s=0.02)
    counters: Counter[str] = Counter()
    urls: list[str] = []
    async with Store(tmp_path / "agent.db") as store:
        model = asyncio.create_task(unit.run(store), name="test-head-unit")
        task = asyncio.create_task(
            head_unit_http.serve(
                unit, "127.0.0.1", 0, ready=urls.append, counters=counters, limits=LIMITS
            ),
            name="test-head-unit-http",
        )
        try:
            await eventually(lambda: bool(urls) and unit.on_screen is not None, "prompt served")
            port = int(urls[0].rsplit(":", 1)[1].rstrip("/"))
            yield Served(urls[0], port, unit, agent, bus, counters, task)
        finally:
            for t in (task, model):
                t.cancel()
            for t in (task, model):
                with contextlib.suppress(asyncio.CancelledError):
                    await t


@pytest.fixture
async def client(served: Served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, trust_env=False, timeout=WAIT_S) as c:
        yield c


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, body)


async def raw(served: Served, data: bytes, *, then_wait_s: float = 0.0) -> Reply:
    """Send ``data`` on a fresh connection, keep it open, read the reply to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(then_wait_s)
        async with asyncio.timeout(WAIT_S):
            got = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert got, "the server closed without a reply"
    return parse_reply(got)


def request(method: str, path: str, port: int, *extra: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *extra]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# ---- routes --------------------------------------------------------------------------


async def test_ready_names_the_loopback_url(served: Served) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", served.url)
    assert served.port > 0


async def test_the_page_comes_with_a_csp_that_allows_only_its_own_style_and_script(
    client: httpx.AsyncClient, served: Served
) -> None:
    got = await client.get("/")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/html; charset=utf-8"
    html = got.text
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    script = re.search(r"<script>(.*?)</script>", html, re.S)
    assert style and script and html.count("<script") == 1 and html.count("<style") == 1
    csp = got.headers["content-security-policy"]
    assert csp == head_unit_page.content_security_policy()
    assert f"script-src {sha256_source(script.group(1))};" in csp
    assert f"style-src {sha256_source(style.group(1))};" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert got.headers["cache-control"] == "no-store"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["x-frame-options"] == "DENY"
    assert got.headers["connection"] == "close"
    assert "date" not in got.headers and "server" not in got.headers
    assert "http://" not in html.replace(served.url, "") and "https://" not in html
    head = await client.head("/")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(got.content)
    assert served.counters["page"] == 2


async def test_state_is_the_snapshot_as_json(client: httpx.AsyncClient, served: Served) -> None:
    got = await client.get("/api/state?cache=bust")
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    assert got.headers["content-security-policy"] == head_unit_http.API_CSP
    assert got.headers["cache-control"] == "no-store"
    state = got.json()
    assert state == served.unit.snapshot()
    assert state["status"] == "expiring" and state["online"] is True
    assert state["prompt"]["id"] == served.prompt_id and state["prompt"]["stage"] == "d15"
    assert state["card"]["policy_no"] == "PDZA****1234"
    assert state["texts"]["en"]["headline"] == "CTPL cover ends soon"
    head = await client.head("/api/state")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("GET", "/api", 404, None),
        ("GET", "/api/state/", 404, None),
        ("POST", "/", 405, "GET, HEAD"),
        ("PUT", "/api/state", 405, "GET, HEAD"),
        ("DELETE", "/api/events", 405, "GET"),
        ("GET", "/api/answer", 405, "POST"),
        ("OPTIONS", "/api/answer", 405, "POST"),
        ("get", "/", 405, "GET, HEAD"),
    ],
)
async def test_other_paths_and_methods_are_refused(
    served: Served, method: str, path: str, status: int, allow: str | None
) -> None:
    got = await raw(served, request(method, path, served.port))
    assert got.status == status
    assert got.json()["error"] == ("not_found" if status == 404 else "method_not_allowed")
    assert got.headers.get("allow") == allow
    assert served.counters[got.json()["error"]] == 1


# ---- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [None, "own"])
async def test_an_answer_is_taken_once_then_the_prompt_is_stale(
    client: httpx.AsyncClient, served: Served, origin: str | None
) -> None:
    headers = {} if origin is None else {"Origin": served.url.rstrip("/")}
    answer = {"prompt_id": served.prompt_id, "answer": "accept"}
    got = await client.post("/api/answer", json=answer, headers=headers)
    assert (got.status_code, got.json()) == (200, {"ok": True})
    assert served.agent.events[-1] == ("prompt_answered", "d15:accept")
    assert served.agent.renewals == ["quote"]
    assert served.unit.snapshot()["prompt"] is None
    again = await client.post("/api/answer", json=answer, headers=headers)
    assert again.status_code == 409 and again.json()["error"] == "stale_prompt"
    assert (served.counters["answer"], served.counters["stale_prompt"]) == (1, 1)


async def test_an_answer_to_another_prompt_is_stale(
    client: httpx.AsyncClient, served: Served
) -> None:
    got = await client.post(
        "/api/answer", json={"prompt_id": served.prompt_id + 1, "answer": "dismiss"}
    )
    assert got.status_code == 409 and got.json()["error"] == "stale_prompt"
    assert served.unit.on_screen is not None and served.agent.events[-1][0] == "prompt_shown"


BAD_BODIES = [
    (b"", "bad_request"),
    (b"{", "bad_request"),
    (b"null", "bad_request"),
    (b"[1, 2]", "bad_request"),
    (b'"accept"', "bad_request"),
    (b'{"prompt_id": 1}', "bad_request"),
    (b'{"answer": "accept"}', "bad_request"),
    (b'{"prompt_id": 1, "answer": "accept", "more": 1}', "bad_request"),
    (b'{"prompt_id": "1", "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": 1.0, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": true, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": -1, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": 9007199254740993, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": NaN, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": 1, "answer": 1}', "bad_request"),
    (b'{"prompt_id": 1, "answer": null}', "bad_request"),
    (b'{"prompt_id": 1, "prompt_id": 2, "answer": "accept"}', "bad_request"),
    (b'{"prompt_id": 1, "answer": "acc\xffept"}', "bad_request"),
    (b"[" * 2000 + b"]" * 2000, "bad_request"),
    (b'{"prompt_id": @ID@, "answer": "renew"}', "bad_answer"),
    (b'{"prompt_id": @ID@, "answer": ""}', "bad_answer"),
    (b'{"prompt_id": @ID@, "answer": "ACCEPT"}', "bad_answer"),
]


def quotes_update() -> messages.RenewalUpdate:
    quote = messages.Quote(
        quote_id="q_1", insurer_code="PICC", insurer_name="PICC", start=NOW.date(),
        end=NOW.date().replace(year=NOW.year + 1), ctpl="665.00", floating_rate="-0.30",
        vehicle_vessel_tax="360.00", total="1025.00", expires_at=NOW + timedelta(minutes=5),
    )  # fmt: skip
    return messages.RenewalUpdate(
        vid=VID, seq=9, issued_at=NOW, renewal_id="r_1", stage="quotes", quotes=(quote,)
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"quote_id": "q_1"}, 200, None),
        ({"quote_id": "q_2"}, 409, "unknown_quote"),
        ({"quote_id": "q 1"}, 400, "bad_request"),
        ({"quote_id": 1}, 400, "bad_request"),
        ({"quote": "q_1"}, 400, "bad_request"),
    ],
)
async def test_a_quote_choice_is_a_consent_or_a_typed_error(
    client: httpx.AsyncClient, served: Served, body: dict[str, object], status: int,
    code: str | None,
) -> None:  # fmt: skip
    served.agent.renewal = quotes_update()
    got = await client.post("/api/quote", json=body)
    assert got.status_code == status
    if code is None:
        assert got.json() == {"ok": True} and served.agent.renewals == ["accept"]
        assert served.counters["quote"] == 1
    else:
        assert got.json()["error"] == code and served.agent.renewals == []
        assert served.counters[code] == 1


@pytest.mark.parametrize(("body", "code"), BAD_BODIES, ids=range(len(BAD_BODIES)))
async def test_a_bad_answer_body_gets_a_typed_400_and_changes_nothing(
    served: Served, body: bytes, code: str
) -> None:
    body = body.replace(b"@ID@", str(served.prompt_id).encode())
    got = await raw(
        served,
        request("POST", "/api/answer", served.port, "Content-Type: application/json", body=body)
        if body
        else request(
            "POST",
            "/api/answer",
            served.port,
            "Content-Type: application/json",
            "Content-Length: 0",
        ),
    )
    assert got.status == 400
    assert got.json()["error"] == code and got.json()["message"]
    assert served.counters[code] == 1 and served.counters["internal"] == 0
    assert served.unit.on_screen is not None and served.agent.renewals == []


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        (("Content-Type: text/plain", "Content-Length: 2"), 415, "unsupported_media_type"),
        (("Content-Length: 2",), 415, "unsupported_media_type"),
        (("Content-Type: application/json",), 411, "length_required"),
        (
            ("Content-Type: application/json", "Transfer-Encoding: chunked"),
            411,
            "length_required",
        ),
        (
            (
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
                "Content-Length: 2",
            ),
            400,
            "bad_request",
        ),
        (("Content-Type: application/json", "Content-Length: -2"), 400, "bad_request"),
        (("Content-Type: application/json", "Content-Length: 0x2"), 400, "bad_request"),
        (
            ("Content-Type: application/json", "Content-Length: 2", "Content-Length: 2"),
            400,
            "bad_request",
        ),
    ],
)
async def test_a_post_without_a_plain_json_body_is_refused(
    served: Served, extra: tuple[str, ...], status: int, code: str
) -> None:
    got = await raw(served, request("POST", "/api/answer", served.port, *extra) + b"{}")
    assert (got.status, got.json()["error"]) == (status, code)
    assert served.counters[code] == 1


async def test_an_oversize_body_is_refused_before_it_is_read(
    served: Served, client: httpx.AsyncClient
) -> None:
    head = request(
        "POST", "/api/answer", served.port, "Content-Type: application/json", "Content-Length: 4097"
    )
    got = await raw(served, head)  # the body never comes: the 413 does not wait for it
    assert (got.status, got.json()["error"]) == (413, "payload_too_large")
    # A client that does send it still reads the 413 (the server drains before closing).
    big = {"prompt_id": served.prompt_id, "answer": "accept", "pad": "x" * 5000}
    sent = await client.post("/api/answer", json=big)
    assert sent.status_code == 413
    limit = {"prompt_id": served.prompt_id, "answer": "accept" + " " * 4000}
    at_limit = await client.post(
        "/api/answer",
        content=json.dumps(limit)[:4096].encode(),
        headers={"Content-Type": "application/json"},
    )
    assert at_limit.status_code == 400  # read in full, then refused as JSON
    assert served.counters["payload_too_large"] == 2 and served.unit.on_screen is not None


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "https://127.0.0.1:@PORT@",
        "http://localhost:@PORT@",
        "http://127.0.0.1:1",
        "http://127.0.0.1:@PORT@.evil.example",
    ],
)
async def test_a_cross_origin_post_is_refused(
    client: httpx.AsyncClient, served: Served, origin: str
) -> None:
    origin = origin.replace("@PORT@", str(served.port))
    got = await client.post(
        "/api/answer",
        json={"prompt_id": served.prompt_id, "answer": "accept"},
        headers={"Origin": origin},
    )
    assert got.status_code == 403 and got.json()["error"] == "forbidden_origin"
    assert served.unit.on_screen is not None and served.agent.renewals == []
    assert served.counters["forbidden_origin"] == 1


async def test_a_model_that_cannot_take_the_answer_gets_503(
    client: httpx.AsyncClient, served: Served
) -> None:
    served.agent.failing = True
    got = await client.post(
        "/api/answer", json={"prompt_id": served.prompt_id, "answer": "dismiss"}
    )
    assert got.status_code == 503 and got.json()["error"] == "unavailable"
    assert served.counters["unavailable"] == 1


# ---- hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.1", True),
        ("LOCALHOST:8080", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        ("192.168.4.1:80", True),
        ("evil.example:8080", False),
        ("127.0.0.1.nip.io", False),
        ("127.1:8080", False),
        ("[127.0.0.1]:8080", False),
        ("::1", False),
        ("[::1]x", False),
        ("127.0.0.1:80a", False),
        ("", False),
    ],
)
def test_only_ip_literals_and_localhost_are_hosts(host: str, ok: bool) -> None:
    head = RequestHead("GET", "/", (1, 1), {"host": host})
    if ok:
        assert check_host(head) == host.lower()
    else:
        with pytest.raises(HttpError) as caught:
            check_host(head)
        assert caught.value.code == "bad_host"


async def test_a_rebinding_host_cannot_read_the_state(served: Served) -> None:
    evil = b"GET /api/state HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    got = await raw(served, evil)
    assert (got.status, got.json()["error"]) == (400, "bad_host")
    old = await raw(served, b"GET /api/state HTTP/1.0\r\n\r\n")
    assert (old.status, old.json()["error"]) == (400, "bad_host")
    ok = await raw(
        served, f"GET /api/state HTTP/1.0\r\nHost: localhost:{served.port}\r\n\r\n".encode()
    )
    assert ok.status == 200 and ok.json()["status"] == "expiring"


# ---- garbage, limits, stalls -----------------------------------------------------------

JUNK = [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400),
    (b"\x00" * 64 + b"\r\n\r\n", 400),
    (b"\xff\xfe\xfd\r\n\r\n", 400),
    (b"hello\r\n\r\n", 400),
    (b"GET\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: 127.0.0.1\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\nX: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\rX: y\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    (b"GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"G\xc3\xa9T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
]


@pytest.mark.parametrize(("junk", "status"), JUNK, ids=range(len(JUNK)))
async def test_junk_gets_a_typed_error_and_the_server_goes_on(
    served: Served, junk: bytes, status: int
) -> None:
    got = await raw(served, junk)
    assert got.status == status
    assert got.headers["content-type"] == "application/json"
    assert got.json()["error"] in ("bad_request", "version_not_supported")
    assert served.counters[got.json()["error"]] == 1 and served.counters["internal"] == 0
    after = await raw(served, request("GET", "/api/state", served.port))
    assert after.status == 200


async def test_empty_lines_before_a_request_are_tolerated(served: Served) -> None:
    got = await raw(served, b"\r\n\r\n" + request("GET", "/api/state", served.port))
    assert got.status == 200


@pytest.mark.parametrize(
    "head",
    [
        request("GET", "/", 0, "X-Big: " + "a" * 10_000),
        request("GET", "/", 0, *(f"X-{i}: {i}" for i in range(100))),
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + b"a" * 20_000,
    ],
    ids=["one-big-header", "too-many-headers", "never-ending"],
)
async def test_a_huge_head_gets_431(served: Served, head: bytes) -> None:
    got = await raw(served, head)
    assert (got.status, got.json()["error"]) == (431, "headers_too_large")


async def test_a_stalled_head_gets_408(served: Served) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = await raw(served, b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert (got.status, got.json()["error"]) == (408, "timeout")
    assert LIMITS.head_timeout_s <= loop.time() - start < LIMITS.head_timeout_s + 1.0


async def test_a_slow_loris_is_cut_off_at_the_head_deadline(served: Served) -> None:
    """A byte every 50 ms keeps each read alive; the deadline is for the whole head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = asyncio.create_task(reader.read(65536), name="slow-loris-reply")
    try:
        for byte in b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            if first.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
        async with asyncio.timeout(WAIT_S):
            got = parse_reply(await first)
    finally:
        first.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert (got.status, got.json()["error"]) == (408, "timeout")
    assert loop.time() - start < LIMITS.head_timeout_s + 1.0


async def test_a_stalled_body_gets_408(served: Served) -> None:
    head = request(
        "POST", "/api/answer", served.port, "Content-Type: application/json", "Content-Length: 100"
    )
    got = await raw(served, head + b'{"prompt_id":')
    assert (got.status, got.json()["error"]) == (408, "timeout")
    assert served.unit.on_screen is not None


async def test_a_silent_connection_is_closed_without_a_reply(served: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        async with asyncio.timeout(WAIT_S):
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
    assert served.counters["idle"] == 1


async def test_a_model_bug_is_a_500_and_the_server_goes_on(
    client: httpx.AsyncClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("injected")

    with monkeypatch.context() as patch:
        patch.setattr(served.unit, "snapshot", broken)
        got = await client.get("/api/state")
    assert got.status_code == 500 and got.json()["error"] == "internal"
    assert served.counters["internal"] == 1
    assert (await client.get("/api/state")).status_code == 200


def test_limits_are_checked_at_once() -> None:
    with pytest.raises(ValueError):
        Limits(head_timeout_s=0)
    with pytest.raises(ValueError):
        Limits(max_body_bytes=-1)


def test_parse_head_keeps_repeated_headers_and_the_query() -> None:
    head = parse_head(b"GET /api/state?x=1 HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept:  b \r\nX:")
    assert head.path == "/api/state" and head.target == "/api/state?x=1"
    assert head.headers == {"host": "h", "accept": "a, b", "x": ""}
    assert head.version == (1, 1)


# ---- events ----------------------------------------------------------------------------


class EventStream:
    """A raw SSE client: the response head, then events and comments as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, served: Served) -> tuple["EventStream", Reply]:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(request("GET", "/api/events", served.port, "Accept: text/event-stream"))
        stream = cls(reader, writer)
        async with asyncio.timeout(WAIT_S):
            while b"\r\n\r\n" not in stream.buf:
                stream.buf += await stream._chunk()
        head, _, stream.buf = stream.buf.partition(b"\r\n\r\n")
        return stream, parse_reply(head + b"\r\n\r\n")

    async def _chunk(self) -> bytes:
        chunk = await self.reader.read(65536)
        if not chunk:
            raise EOFError
        return chunk

    async def block(self) -> str:
        """The next block (up to a blank line)."""
        async with asyncio.timeout(WAIT_S):
            while b"\n\n" not in self.buf:
                self.buf += await self._chunk()
        block, _, self.buf = self.buf.partition(b"\n\n")
        return block.decode()

    async def state(self) -> dict[str, Any]:
        """The next ``state`` event's data (comments and retry skipped), within WAIT_S."""
        async with asyncio.timeout(WAIT_S):
            while True:
                block = await self.block()
                if block.startswith("event: state\n"):
                    data = block.split("\n", 1)[1]
                    assert data.startswith("data: ") and "\n" not in data
                    return dict(json.loads(data[len("data: ") :]))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_events_send_the_snapshot_at_once_then_every_change(served: Served) -> None:
    stream, head = await EventStream.open(served)
    try:
        assert head.status == 200
        assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in head.headers
        assert head.headers["cache-control"] == "no-store"
        assert await stream.block() == "retry: 2000"
        first = await stream.state()
        assert first["prompt"]["id"] == served.prompt_id and first["vehicle"]["moving"] is False
        served.bus.speed_kmh = 40
        while True:  # moving first, then the prompt taken off screen
            later = await stream.state()
            assert later["version"] > first["version"]
            if later["prompt"] is None:
                break
        assert later["vehicle"]["moving"] is True
    finally:
        await stream.close()
    assert served.counters["events"] == 1


async def test_events_keep_alive_and_report_what_changes_without_the_model(
    served: Served,
) -> None:
    stream, _ = await EventStream.open(served)
    try:
        first = await stream.state()
        assert await stream.block() == ": keep-alive"  # nothing changed for keepalive_s
        served.agent.connected = False  # the link, not the model: found by the recheck
        changed = await stream.state()
        assert changed["online"] is False and changed["version"] == first["version"]
    finally:
        await stream.close()


async def to_eof(reader: asyncio.StreamReader, timeout_s: float) -> None:
    """Read what was already sent, then the end (EOF or a reset), within ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass


def connections() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "head-unit-http-connection"]


async def test_a_client_leaving_ends_its_stream(served: Served) -> None:
    stream, _ = await EventStream.open(served)
    await stream.state()
    assert len(connections()) == 1
    await stream.close()
    await eventually(lambda: not connections(), "the stream's end")
    assert served.counters["events_ended"] == 1


async def test_cancelling_serve_closes_open_streams_at_once(served: Served) -> None:
    streams = [(await EventStream.open(served))[0] for _ in range(2)]
    for stream in streams:
        await stream.state()
    half, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(b"GET / HTTP/1.1\r\n")  # a request still coming in
    await eventually(lambda: len(connections()) == 3, "three connections")
    loop = asyncio.get_running_loop()
    start = loop.time()
    served.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        async with asyncio.timeout(1.0):
            await served.task
    try:
        for reader in [s.reader for s in streams] + [half]:
            await to_eof(reader, 1.0)
    finally:
        for stream in streams:
            await stream.close()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert loop.time() - start < 1.0
    assert not connections()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)
