"""What operators see of a cloud process: Prometheus metrics, readiness, the latency histogram.

Pure apart from ``readiness`` (which awaits the store probe it is given): the worker
hands over a ``WorkerSnapshot`` of its counters, ``render`` writes the Prometheus text
exposition format 0.0.4 by hand, and ``cloud.api`` serves the result on ``/metrics``,
``/healthz`` and ``/readyz`` (docs/operations.md lists every metric).

Labels hold only codes chosen by this code base (reasons, outcomes, source names):
never a vid, a VIN, a plate or a policy number. Every label value still goes through
``logs.scrub``, and one shaped like a vid becomes ``other``.
"""

import asyncio
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol

from agent.protocol.topics import VID_RE

from .logs import scrub

if TYPE_CHECKING:
    from .source_registry import SourceRegistry

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BOUNDS_S",
    "HistogramSnapshot",
    "LatencyHistogram",
    "OpsSource",
    "Readiness",
    "SourceHealth",
    "WorkerSnapshot",
    "readiness",
    "render",
    "source_health",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BOUNDS_S: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
"""Upper bounds of the latency buckets: one request alone takes ≈ 1 ms, a loaded worker ≈ 30."""
READY_PROBE_TIMEOUT_S: Final = 2.0
MAX_LABEL_CHARS: Final = 64
BREAKER_STATES: Final = ("closed", "open", "half_open")


# ---- the latency histogram (on the worker's hot path: one bisect per batch) ----------


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative bucket counts (one per bound, then +Inf), the sum and the count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    sum: float
    count: int


class LatencyHistogram:
    """Fixed buckets; ``observe`` weighs one duration by the requests it took that long for."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and ascending")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float, n: int = 1) -> None:
        """Record ``n`` requests that each took ``seconds``."""
        self._counts[bisect_left(self.bounds, seconds)] += n
        self.sum += seconds * n
        self.count += n

    def snapshot(self) -> HistogramSnapshot:
        """The buckets as Prometheus wants them: cumulative, ``le`` = bound."""
        running, cumulative = 0, []
        for c in self._counts:
            running += c
            cumulative.append(running)
        return HistogramSnapshot(self.bounds, tuple(cumulative), self.sum, self.count)


# ---- what the worker hands over ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceHealth:
    """One policy source's breaker, as of the snapshot."""

    name: str
    kind: str
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """Copies of a worker's counters and gauges at one instant."""

    connected: bool
    handler: Mapping[str, int] = field(default_factory=dict)
    """``RequestHandler.counters``: ``accepted``, ``rejected.<code>``."""
    worker: Mapping[str, int] = field(default_factory=dict)
    """``Worker.counters``: replies, batches, intents, webhooks, errors."""
    renewals: Mapping[str, int] = field(default_factory=dict)
    """``RenewalService.counters``."""
    sources: tuple[SourceHealth, ...] = ()
    source_counters: Mapping[str, int] = field(default_factory=dict)
    """``SourceRegistry.counters``: ``<source>.<reason>``, ``cache.hit``, ``cache.miss``."""
    latency: HistogramSnapshot | None = None
    connected_cars: int = 0
    vehicles: int = 0
    inbox: int = 0
    publish_failures: int = 0


class OpsSource(Protocol):
    """What the API asks of the worker beside it."""

    ready: asyncio.Event
    """Set while the worker's link to the broker is up."""

    def ops_snapshot(self) -> WorkerSnapshot:
        """The worker's counters and gauges now."""
        ...


def source_health(registry: "SourceRegistry | None") -> tuple[SourceHealth, ...]:
    """Each source's breaker state, in configuration order (none without a registry)."""
    if registry is None:
        return ()
    return tuple(
        SourceHealth(name, c.kind, c.breaker.state, c.breaker.consecutive)
        for name, c in registry.clients.items()
    )


# ---- readiness ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether to send traffic here; ``reason`` names the first check that failed."""

    ready: bool
    reason: str | None
    broker: bool | None
    """None: no worker in this process (an API alone), so no broker to need."""
    store: bool

    def body(self) -> dict[str, object]:
        """The JSON answer of ``/readyz``."""
        answer: dict[str, object] = {"status": "ready" if self.ready else "not_ready"}
        if self.reason is not None:
            answer["reason"] = self.reason
        answer["checks"] = {"broker": self.broker, "store": self.store}
        return answer


async def readiness(
    connected: bool | None,
    probe: Callable[[], Awaitable[object]],
    timeout_s: float = READY_PROBE_TIMEOUT_S,
) -> Readiness:
    """Ready when the worker is connected (or there is none) and ``probe`` answers in time."""
    reason = None
    try:
        async with asyncio.timeout(timeout_s):
            await probe()
        store = True
    except TimeoutError:
        store, reason = False, "store_timeout"
    except Exception:  # any failure of the store is a reason not to send traffic here
        store, reason = False, "store_unavailable"
    if connected is False:
        reason = "broker_disconnected"
    return Readiness(connected is not False and store, reason, connected, store)


# ---- the exposition format ------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]


def _label_value(value: str) -> str:
    clean = scrub(value)[:MAX_LABEL_CHARS]
    if VID_RE.fullmatch(clean):
        clean = "other"
    return clean.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        help_text = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.sample(name, labels, value)

    def sample(self, name: str, labels: Labels, value: float) -> None:
        if labels:
            inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels)
            self.lines.append(f"{name}{{{inner}}} {_number(value)}")
        else:
            self.lines.append(f"{name} {_number(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text, [((), value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _by_prefix(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)}


def _labelled(label: str, values: Mapping[str, int], always: Iterable[str] = ()) -> list[Sample]:
    merged = dict.fromkeys(always, 0) | dict(values)
    return [(((label, k),), v) for k, v in sorted(merged.items())]


_WORKER_KNOWN: Final = frozenset(
    {"replies", "batches", "intents.new", "intents.repeated", "link.lost"}
)
_WORKER_ERRORS: Final = ("internal_error", "store_error", "renewal.internal_error")
_API_OUTCOMES: Final = ("enrolled", "renewed", "revoked", "fleets_created")


def render(api: Mapping[str, int] | None, worker: WorkerSnapshot | None) -> str:
    """The Prometheus text exposition (format 0.0.4) of an API's and a worker's counters."""
    out = _Exposition()
    if worker is not None:
        _worker(out, worker)
    if api is not None:
        _api(out, api)
    return out.text()


def _worker(out: _Exposition, w: WorkerSnapshot) -> None:
    h, c = w.handler, w.worker
    out.one(
        "ctpl_worker_connected",
        "gauge",
        "1 while the worker's link to the broker is up, else 0.",
        int(w.connected),
    )
    out.one(
        "ctpl_requests_accepted_total",
        "counter",
        "Signed car requests accepted (verified, fresh seq) and answered.",
        h.get("accepted", 0),
    )
    out.family(
        "ctpl_requests_rejected_total",
        "counter",
        "Car requests refused, by the error code (an error reply, or none when "
        "the topic or vehicle is unknown).",
        _labelled("reason", _by_prefix(h, "rejected.")),
    )
    out.one(
        "ctpl_replies_published_total",
        "counter",
        "Replies and pushed messages published after their commit.",
        c.get("replies", 0),
    )
    out.one(
        "ctpl_batches_total",
        "counter",
        "Batches of requests committed and published (group commits).",
        c.get("batches", 0),
    )
    out.family(
        "ctpl_intents_total",
        "counter",
        "Intents (renewal requests, vehicle events) recorded: new, or a repeat "
        "of one already held.",
        [
            ((("result", "new"),), c.get("intents.new", 0)),
            ((("result", "repeated"),), c.get("intents.repeated", 0)),
        ],
    )
    out.family(
        "ctpl_worker_errors_total",
        "counter",
        "Requests the handler failed on, batches the store could not persist "
        "(their replies dropped), renewal requests that failed inside.",
        [((("kind", k.replace(".", "_")),), c.get(k, 0)) for k in _WORKER_ERRORS],
    )
    out.one(
        "ctpl_broker_link_lost_total",
        "counter",
        "Times the worker's broker link was lost.",
        c.get("link.lost", 0),
    )
    out.one(
        "ctpl_reply_publish_failures_total",
        "counter",
        "Replies the link could not queue (not connected, or its window full).",
        w.publish_failures,
    )
    out.family(
        "ctpl_webhooks_total",
        "counter",
        "Insurer webhook deliveries, by outcome (ok or the refusal code).",
        _labelled("outcome", _by_prefix(c, "webhook."), always=("ok",)),
    )
    out.family(
        "ctpl_renewals_total",
        "counter",
        "Renewal service events, by outcome (request.<action>, refused.<code>, "
        "quote.failed.<insurer>, bind.ok, bind.failed, issued, webhook.repeated, ...).",
        _labelled("outcome", w.renewals),
    )
    other = {
        k: v
        for k, v in c.items()
        if k not in _WORKER_KNOWN and k not in _WORKER_ERRORS and not k.startswith("webhook.")
    }
    other |= {k: v for k, v in h.items() if k != "accepted" and not k.startswith("rejected.")}
    if other:
        out.family(
            "ctpl_worker_events_total",
            "counter",
            "Other worker counters, by name.",
            _labelled("event", other),
        )
    if w.latency is not None:
        _histogram(
            out,
            "ctpl_request_latency_seconds",
            "Time from the start of handling a request's batch until its reply is "
            "handed to the link: handle, group commit (fsync), publish; weighted by "
            "the requests in the batch.",
            w.latency,
        )
    out.one(
        "ctpl_connected_cars",
        "gauge",
        "Cars whose retained presence says online (the whole fleet, as this "
        "worker sees it; 0 while disconnected).",
        w.connected_cars,
    )
    out.one(
        "ctpl_vehicles_served",
        "gauge",
        "Vehicles the worker serves (registered, not revoked).",
        w.vehicles,
    )
    out.one("ctpl_inbox_requests", "gauge", "Requests received and not yet handled.", w.inbox)
    _sources(out, w)


def _histogram(out: _Exposition, name: str, help_text: str, s: HistogramSnapshot) -> None:
    out.family(name, "histogram", help_text, [])
    for bound, n in zip((*s.bounds, math.inf), s.cumulative, strict=True):
        out.sample(f"{name}_bucket", (("le", _number(float(bound))),), n)
    out.sample(f"{name}_sum", (), s.sum)
    out.sample(f"{name}_count", (), s.count)


def _sources(out: _Exposition, w: WorkerSnapshot) -> None:
    if not w.sources:
        return
    counters = w.source_counters
    out.family(
        "ctpl_source_breaker_state",
        "gauge",
        "1 for the state each policy source's circuit breaker is in.",
        [
            ((("source", s.name), ("state", st)), int(s.state == st))
            for s in w.sources
            for st in BREAKER_STATES
        ],
    )
    out.family(
        "ctpl_source_consecutive_failures",
        "gauge",
        "Failed attempts in a row at each source (the breaker opens at its limit).",
        [((("source", s.name),), s.consecutive_failures) for s in w.sources],
    )
    out.family(
        "ctpl_source_successes_total",
        "counter",
        "Calls a source answered usably.",
        [((("source", s.name),), counters.get(f"{s.name}.ok", 0)) for s in w.sources],
    )
    failures: list[Sample] = []
    for s in w.sources:
        mine = _by_prefix(counters, f"{s.name}.")
        for reason, n in sorted(mine.items()):
            if reason not in ("ok", "retries", "breaker_opened"):
                failures.append(((("source", s.name), ("reason", reason)), n))
    out.family(
        "ctpl_source_failures_total",
        "counter",
        "Calls that failed, by source and reason (timeout, connection, unavailable, "
        "throttled, circuit_open, html, not_json, invalid, too_large, not_found, ...).",
        failures,
    )
    out.family(
        "ctpl_source_retries_total",
        "counter",
        "Attempts retried, by source.",
        [((("source", s.name),), counters.get(f"{s.name}.retries", 0)) for s in w.sources],
    )
    out.family(
        "ctpl_source_breaker_opened_total",
        "counter",
        "Times a source's breaker opened.",
        [((("source", s.name),), counters.get(f"{s.name}.breaker_opened", 0)) for s in w.sources],
    )
    out.family(
        "ctpl_source_cache_lookups_total",
        "counter",
        "Aggregated look-ups answered from the per-vehicle cache (hit) or asked (miss).",
        _labelled("result", _by_prefix(counters, "cache."), always=("hit", "miss")),
    )


def _api(out: _Exposition, c: Mapping[str, int]) -> None:
    done = {k: v for k, v in c.items() if "." not in k and k != "claims_minted"}
    out.family(
        "ctpl_api_requests_total",
        "counter",
        "HTTPS API requests carried out, by outcome.",
        _labelled("outcome", done, always=_API_OUTCOMES),
    )
    out.family(
        "ctpl_api_rejected_total",
        "counter",
        "HTTPS API requests refused, by error code (unauthorized, bad_request, "
        "claim_used, not_found, body_too_large, body_timeout, header_timeout, ...).",
        _labelled("reason", _by_prefix(c, "rejected.")),
    )
    out.family(
        "ctpl_api_hook_failures_total",
        "counter",
        "Changes stored but not passed on to the worker (a failed events hook).",
        _labelled("hook", _by_prefix(c, "hook_failed.")),
    )
    out.one(
        "ctpl_api_claims_minted_total",
        "counter",
        "Claim tokens minted for fleets.",
        c.get("claims_minted", 0),
    )
