"""/metrics, /healthz and /readyz of ``ctpl-cloud serve``: a real worker and its API, real cars.

/metrics answers only the ``metrics_token``; /healthz and /readyz answer anyone.
"""

import asyncio
import math
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.protocol import envelope, messages, topics
from agent.protocol.keys import load_private_key
from agent.runner import Agent
from cloud.cli import _parser, _serve_config
from cloud.link import MqttLink, tls_context
from cloud.logs import scrub
from cloud.ops import (
    HistogramSnapshot,
    LatencyHistogram,
    SourceHealth,
    WorkerSnapshot,
    readiness,
    render,
)
from cloud.pki import DevPki
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port
from simulator.cars import car_config

from ..cloud.conftest import start_worker
from .conftest import ADMIN_TOKEN, STEP_S, Api, within

METRICS_TOKEN = "metrics-test-token-9876543210"

# ---- a small parser of the Prometheus text format 0.0.4 ------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = frozenset[tuple[str, str]]


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: dict[tuple[str, Labels], float]


def _labels(text: str) -> Labels:
    pairs, pos = [], 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m is not None, f"bad labels at {text[pos:]!r}"
        value = re.sub(r"\\.", lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pairs.append((m.group(1), value))
        pos = m.end()
    assert len({k for k, _ in pairs}) == len(pairs), f"repeated label in {text!r}"
    return frozenset(pairs)


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def parse(text: str) -> dict[str, Family]:
    """Families by name; asserts what the format (and our conventions) require."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    seen: set[tuple[str, Labels]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} twice"
            current = families[name] = Family(name, "", help_text, {})
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current.name == name, f"TYPE {name} without HELP"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            current.kind = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None and current is not None, f"bad line {line!r}"
            name, labels = m.group(1), _labels(m.group(2) or "")
            suffixes = ("_bucket", "_sum", "_count") if current.kind == "histogram" else ("",)
            assert any(name == current.name + s for s in suffixes), f"{name} outside its family"
            assert (name, labels) not in seen, f"{line!r} twice"
            seen.add((name, labels))
            current.samples[(name, labels)] = _value(m.group(3))
    for f in families.values():
        assert f.name.startswith("ctpl_") and f.kind and f.help
        assert f.kind != "counter" or f.name.endswith("_total"), f.name
        if f.kind == "histogram":
            _check_histogram(f)
    return families


def _check_histogram(f: Family) -> None:
    buckets = sorted(
        (_value(dict(labels)["le"]), v)
        for (name, labels), v in f.samples.items()
        if name.endswith("_bucket")
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert buckets[-1][0] == math.inf
    assert buckets[-1][1] == f.samples[(f"{f.name}_count", frozenset())]


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``, 0 when absent (a label not seen yet)."""
    family = families.get(name) or families.get(re.sub(r"_(bucket|sum|count)$", "", name))
    if family is None:
        return 0.0
    return family.samples.get((name, frozenset(labels.items())), 0.0)


# ---- the pure parts: exposition, histogram, readiness ------------------------------


def test_an_empty_worker_and_api_render_valid_text() -> None:
    families = parse(render({}, WorkerSnapshot(connected=False)))
    assert value(families, "ctpl_worker_connected") == 0
    assert value(families, "ctpl_api_requests_total", outcome="enrolled") == 0
    assert value(families, "ctpl_intents_total", result="repeated") == 0
    assert "ctpl_source_breaker_state" not in families  # no sources configured
    assert parse(render({"enrolled": 2}, None))["ctpl_api_requests_total"].samples


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ('say "hi"', 'say "hi"'),
        ("back\\slash", "back\\slash"),
        ("two\nlines", "two\nlines"),
        ("LSVAU2180N2183294", "*************3294"),
        ("沪A12345", "沪A·****5"),
        ("PDZA2026000012345678", "PDZA****5678"),
        ("vjl4fgdlbs6urc4zm", "other"),  # shaped like a vid: never a label
        ("x" * 100, "x" * 64),
    ],
)
def test_label_values_are_escaped_scrubbed_and_bounded(reason: str, shown: str) -> None:
    text = render({f"rejected.{reason}": 3}, None)
    families = parse(text)
    assert value(families, "ctpl_api_rejected_total", reason=shown) == 3
    for secret in ("LSVAU2180N2183294", "沪A12345", "PDZA2026000012345678", "vjl4fgdlbs6urc4zm"):
        assert secret not in text


def test_help_text_is_escaped() -> None:
    text = render(None, WorkerSnapshot(connected=True))
    assert all(line.count("\n") == 0 for line in text.splitlines())
    assert "# TYPE ctpl_request_latency_seconds" not in text  # no histogram handed over


@pytest.mark.parametrize(
    ("observations", "le", "expected"),
    [
        ([(0.0005, 1)], 0.0005, 1),  # le is inclusive
        ([(0.00051, 1)], 0.0005, 0),
        ([(0.00051, 1)], 0.001, 1),
        ([(0.003, 40)], 0.005, 40),  # a batch of 40 requests weighs 40
        ([(0.003, 40), (0.3, 2)], 0.2, 40),
        ([(0.003, 40), (0.3, 2)], math.inf, 42),
        ([(60.0, 1)], 5.0, 0),
        ([(60.0, 1)], math.inf, 1),
    ],
)
def test_the_latency_histogram(
    observations: list[tuple[float, int]], le: float, expected: int
) -> None:
    h = LatencyHistogram()
    for seconds, n in observations:
        h.observe(seconds, n)
    snap = h.snapshot()
    assert dict(zip((*snap.bounds, math.inf), snap.cumulative, strict=True))[le] == expected
    assert snap.count == sum(n for _, n in observations)
    assert snap.sum == pytest.approx(sum(s * n for s, n in observations))
    families = parse(render(None, WorkerSnapshot(connected=True, latency=snap)))
    le_text = "+Inf" if le == math.inf else repr(le)
    assert value(families, "ctpl_request_latency_seconds_bucket", le=le_text) == expected


def test_source_health_renders_every_breaker_state() -> None:
    snap = WorkerSnapshot(
        connected=True,
        sources=(
            SourceHealth("national", "national", "open", 5),
            SourceHealth("PICC", "insurer", "closed", 0),
        ),
        source_counters={
            "national.connection": 2,
            "national.breaker_opened": 1,
            "PICC.ok": 4,
            "cache.miss": 6,
        },
        latency=HistogramSnapshot((1.0,), (0, 0), 0.0, 0),
    )
    f = parse(render(None, snap))
    assert value(f, "ctpl_source_breaker_state", source="national", state="open") == 1
    assert value(f, "ctpl_source_breaker_state", source="national", state="closed") == 0
    assert value(f, "ctpl_source_breaker_state", source="PICC", state="closed") == 1
    assert value(f, "ctpl_source_consecutive_failures", source="national") == 5
    assert value(f, "ctpl_source_failures_total", source="national", reason="connection") == 2
    assert value(f, "ctpl_source_breaker_opened_total", source="national") == 1
    assert value(f, "ctpl_source_successes_total", source="PICC") == 4
    assert value(f, "ctpl_source_cache_lookups_total", result="miss") == 6
    assert value(f, "ctpl_source_cache_lookups_total", result="hit") == 0


async def _ok() -> None:
    return None


async def _fails() -> None:
    raise OSError("disk gone")


async def _hangs() -> None:
    await asyncio.sleep(3600)


@pytest.mark.parametrize(
    ("connected", "probe", "ready", "reason"),
    [
        (True, _ok, True, None),
        (None, _ok, True, None),  # an API without a worker needs no broker
        (False, _ok, False, "broker_disconnected"),
        (True, _fails, False, "store_unavailable"),
        (True, _hangs, False, "store_timeout"),
        (False, _fails, False, "broker_disconnected"),
    ],
)
async def test_readiness(
    connected: bool | None,
    probe: Callable[[], Awaitable[None]],
    ready: bool,
    reason: str | None,
) -> None:
    got = await within(readiness(connected, probe, timeout_s=0.1))
    assert (got.ready, got.reason) == (ready, reason)
    assert got.body()["status"] == ("ready" if ready else "not_ready")


# ---- a real worker with its API, on a broker of the test's own ---------------------


@dataclass
class Ops:
    worker: Worker
    client: httpx.AsyncClient
    pki: DevPki
    broker: Mosquitto
    tmp: Path

    async def metrics(self) -> dict[str, Family]:
        r = await self.client.get("/metrics", headers=Api.auth(METRICS_TOKEN))
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert scrub(r.text) == r.text  # nothing that looks like a VIN, plate, policy no
        for vid in self.pki.vids():
            assert vid not in r.text
        return parse(r.text)

    async def until(
        self, check: Callable[[dict[str, Family]], bool], timeout_s: float = STEP_S
    ) -> dict[str, Family]:
        """Scrape until ``check`` holds."""
        async with asyncio.timeout(timeout_s):
            while True:
                families = await self.metrics()
                if check(families):
                    return families
                await asyncio.sleep(0.05)


@asynccontextmanager
async def running(
    pki: DevPki, broker: Mosquitto, tmp_path: Path, national_url: str | None = None
) -> AsyncIterator[Ops]:
    """A worker with its API on ``broker``, a store seeded with ``pki``'s cars, a client."""
    worker, task = await start_worker(
        pki,
        broker,
        tmp_path / "cloud.db",
        http_port=free_port(),
        admin_token=ADMIN_TOKEN,
        metrics_token=METRICS_TOKEN,
        national_url=national_url,
    )
    port = worker.config.http_port
    try:
        tls = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=tls, timeout=STEP_S
        ) as client:
            yield Ops(worker, client, pki, broker, tmp_path)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)


@pytest.fixture
async def ops(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Ops]:
    async with running(own_pki, own_broker, tmp_path) as served:
        yield served


async def test_healthz_and_readyz_of_a_connected_worker(ops: Ops) -> None:
    r = await ops.client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "alive"})
    r = await ops.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"broker": True, "store": True}}
    families = await ops.metrics()
    assert value(families, "ctpl_worker_connected") == 1
    assert value(families, "ctpl_vehicles_served") == len(ops.pki.vids())
    assert value(families, "ctpl_connected_cars") == 0
    # Probes and a scrape with its token count as no API outcome.
    assert value(families, "ctpl_api_rejected_total", reason="unauthorized") == 0


async def test_metrics_need_the_metrics_token_and_the_probes_need_none(ops: Ops) -> None:
    for headers in (
        {},
        Api.auth("wrong-token"),
        Api.auth(ADMIN_TOKEN),
        {"Authorization": "Basic x"},
    ):
        r = await ops.client.get("/metrics", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert "ctpl_" not in r.text
    for path in ("/healthz", "/readyz"):  # no token: they tell a prober only up or down
        assert (await ops.client.get(path)).status_code == 200
    families = await ops.metrics()
    assert value(families, "ctpl_api_rejected_total", reason="unauthorized") == 4


def test_serve_takes_the_metrics_token_from_a_file_or_the_environment(
    shared_pki: DevPki, tmp_path: Path
) -> None:
    argv = ["serve", "--db", "x.db", "--pki", str(shared_pki.root), "--http-port", "8443"]
    token = tmp_path / "metrics-token"
    token.write_text(METRICS_TOKEN + "\n")
    by_file = _serve_config(_parser().parse_args([*argv, "--metrics-token-file", str(token)]), {})
    by_env = _serve_config(_parser().parse_args(argv), {"CTPL_METRICS_TOKEN": METRICS_TOKEN})
    for config in (by_file, by_env):
        assert config.metrics_token is not None
        assert config.metrics_token.get_secret_value() == METRICS_TOKEN
        assert METRICS_TOKEN not in repr(config)
    assert _serve_config(_parser().parse_args(argv), {}).metrics_token is None


async def test_without_a_metrics_token_configured_metrics_are_refused(api: Api) -> None:
    assert api.config.metrics_token is None
    for headers in ({}, Api.auth(ADMIN_TOKEN), Api.auth(METRICS_TOKEN)):
        r = await api.client.get("/metrics", headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
        assert "ctpl_" not in r.text
    assert (await api.client.get("/healthz")).status_code == 200
    assert (await api.client.get("/readyz")).status_code == 200


async def test_readyz_is_503_while_the_broker_is_down_and_200_once_it_is_back(ops: Ops) -> None:
    ops.broker.stop()
    async with asyncio.timeout(STEP_S):
        while (r := await ops.client.get("/readyz")).status_code != 503:
            await asyncio.sleep(0.05)
    assert r.json() == {
        "status": "not_ready",
        "reason": "broker_disconnected",
        "checks": {"broker": False, "store": True},
    }
    assert (await ops.client.get("/healthz")).status_code == 200  # alive all the same
    families = await ops.metrics()
    assert value(families, "ctpl_worker_connected") == 0
    assert value(families, "ctpl_broker_link_lost_total") == 1

    ops.broker.start()
    async with asyncio.timeout(30):  # the worker's reconnect backoff is random, capped
        while (r := await ops.client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.1)


async def test_counters_move_with_real_signed_requests_from_a_real_car(ops: Ops) -> None:
    before = await ops.metrics()
    vid = ops.pki.vids()[0]
    agent = Agent(car_config(ops.pki, vid, ops.tmp / "cars", ops.broker.port))
    task = asyncio.create_task(agent.run(), name="test-agent")
    try:
        state = await agent.wait_for_state(STEP_S)
        await agent.request_status()
        await agent.wait_for_state(STEP_S, min_seq=state.seq + 1)
        await agent.report_event("ignition_on")
        async with asyncio.timeout(STEP_S):
            while (await agent.outbox())[0]:
                await asyncio.sleep(0.05)
        online = await ops.until(lambda f: value(f, "ctpl_connected_cars") == 1)
    finally:
        agent.stop()
        await within(task)

    def moved(name: str, **labels: str) -> float:
        return value(online, name, **labels) - value(before, name, **labels)

    assert moved("ctpl_requests_accepted_total") >= 3  # status on connect, status, event
    assert moved("ctpl_replies_published_total") >= 3
    assert moved("ctpl_batches_total") >= 1
    assert moved("ctpl_intents_total", result="new") == 1
    assert moved("ctpl_request_latency_seconds_count") >= 3
    assert 0 < value(online, "ctpl_request_latency_seconds_sum") < 10
    assert value(online, "ctpl_requests_rejected_total", reason="replay") == 0
    await ops.until(lambda f: value(f, "ctpl_connected_cars") == 0)  # its clean goodbye

    # Bad requests from the same car's certificate: garbage, then a replayed seq.
    d = ops.pki.car_dir(vid)
    inbox: asyncio.Queue[str] = asyncio.Queue()
    link = MqttLink(
        client_id=vid,  # the car has left; the broker ties a client id to its certificate
        tls=tls_context(ops.pki.ca_cert, d / "car.crt", d / "car.key"),
        on_message=lambda t, _: inbox.put_nowait(t),
        subscriptions=(topics.down(vid, "error"),),
    )
    await within(link.connect(ops.broker.host, ops.broker.port))
    try:
        topic = topics.up(vid, "status")
        assert link.publish(topic, b"not an envelope")
        replayed = messages.encode(messages.StatusRequest(vid=vid, seq=1))
        assert link.publish(
            topic, envelope.Signer(load_private_key(d / "car.key")).seal(topic, replayed)
        )
        for _ in range(2):
            assert await within(inbox.get()) == topics.down(vid, "error")
    finally:
        await within(link.close())
    families = await ops.until(
        lambda f: value(f, "ctpl_requests_rejected_total", reason="replay") == 1
    )
    assert value(families, "ctpl_requests_rejected_total", reason="bad_envelope") == 1
    assert value(families, "ctpl_requests_accepted_total") == value(
        online, "ctpl_requests_accepted_total"
    )

    # The API's outcomes: a fleet made, a malformed enrollment, a webhook of nobody.
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await ops.client.post("/v1/fleets", json={"name": "ops"}, headers=auth)).is_success
    assert (await ops.client.post("/v1/enroll", json={})).status_code == 422
    assert (await ops.client.post("/v1/webhooks/insurers/NOPE", content=b"{}")).status_code == 404
    families = await ops.metrics()
    assert value(families, "ctpl_api_requests_total", outcome="fleets_created") == 1
    assert value(families, "ctpl_api_rejected_total", reason="bad_request") == 1
    assert value(families, "ctpl_webhooks_total", outcome="unknown_insurer") == 1
    assert value(families, "ctpl_webhooks_total", outcome="ok") == 0


async def test_source_health_after_real_calls_to_a_source_that_is_down(
    own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running(own_pki, own_broker, tmp_path, national_url=down) as ops:
        families = await ops.metrics()
        assert value(families, "ctpl_source_breaker_state", source="national", state="closed")
        assert ops.worker.renewals is not None
        registry = ops.worker.renewals.lookup.registry  # type: ignore[union-attr]
        for _ in range(2):  # three attempts each: the breaker opens at the fifth failure
            await within(registry.refresh("沪A12345", "LSVAU2180N2183294", force=True))
        families = await ops.metrics()
    assert value(families, "ctpl_source_breaker_state", source="national", state="open") == 1
    assert value(families, "ctpl_source_breaker_state", source="national", state="closed") == 0
    assert value(families, "ctpl_source_breaker_opened_total", source="national") == 1
    assert value(families, "ctpl_source_failures_total", source="national", reason="connection")
    assert value(families, "ctpl_source_retries_total", source="national") >= 3
    assert value(families, "ctpl_source_cache_lookups_total", result="miss") == 2
