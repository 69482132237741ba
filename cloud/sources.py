"""The policy sources over HTTP: the only cloud module that imports httpx.

``SourceClient`` asks one source (``lookup``; the national platform also answers
``vehicle``: the facts a premium is priced by); ``InsurerClient`` also quotes, binds and
reads orders. Each call has a total deadline per attempt (a slow drip cannot hold it),
retries with full-jitter backoff on 5xx, 429, timeouts and connection errors (never on
other 4xx), and goes through the source's ``CircuitBreaker``. Every answer is validated
strictly (``cloud.source_wire``); anything unusable becomes one ``SourceError`` whose
``reason`` is counted in ``counters`` as ``<source>.<reason>``. ``cloud.source_registry``
asks every source at once; the insurers' webhooks are checked by ``cloud.webhooks``. The
contract is docs/sources.md.

CloudError
└── SourceError    a source gave no usable answer (``source``, ``reason``, ``status``, ``code``)
"""

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Final, Literal, Self, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.protocol.clock import Clock, SystemClock

from .aggregate import (
    CACHE_TTL_S,
    RETRY_AFTER_S,
    SourceAnswer,
    SourceKind,
)
from .circuit_breaker import CircuitBreaker
from .errors import CloudError
from .source_wire import (
    ID,
    IDEMPOTENCY_KEY,
    Order,
    Quote,
    Registered,
    WireAnswer,
    WireOrder,
    WireQuote,
    WireVehicleAnswer,
    normal_plate,
    quote_body,
)
from .tariff import Vehicle

__all__ = [
    "BREAKER_FAILURES",
    "RETRYABLE",
    "InsurerClient",
    "SourceClient",
    "SourceConfig",
    "SourceError",
    "SourcesConfig",
    "make_client",
]

log = logging.getLogger(__name__)

SourceReason = Literal[
    "timeout", "connection", "unavailable", "throttled", "circuit_open", "html", "not_json",
    "invalid", "too_large", "not_found", "conflict", "gone", "refused",
]  # fmt: skip
RETRYABLE: Final[frozenset[str]] = frozenset({"timeout", "connection", "unavailable", "throttled"})
BREAKER_FAILURES: Final[frozenset[str]] = frozenset(
    {"timeout", "connection", "unavailable", "html", "not_json", "invalid", "too_large"}
)
"""Reasons that count against a source's breaker (a 4xx shows the source is up)."""
_STATUS_REASONS: Final[dict[int, SourceReason]] = {
    404: "not_found", 409: "conflict", 410: "gone", 429: "throttled"
}  # fmt: skip


class SourceError(CloudError):
    """A source gave no usable answer; ``reason`` is one of ``SourceReason``."""

    def __init__(
        self, source: str, reason: SourceReason, message: str, *,
        status: int | None = None, code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(f"{source}: {reason}: {message}")
        self.source = source
        self.reason: SourceReason = reason
        self.status = status
        self.code = code


# ---- configuration -----------------------------------------------------------


class SourceConfig(BaseModel):
    """One source: what it is, where, and how patiently it is asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    """``national``, an insurer's code (``PICC``), a third party's name."""
    kind: SourceKind
    base_url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$")
    timeout_s: float = Field(3.0, gt=0)
    """One attempt, body included: a slow drip past it is a timeout."""
    connect_timeout_s: float = Field(1.0, gt=0)
    attempts: int = Field(3, ge=1, le=10)
    backoff_base_s: float = Field(0.1, ge=0)
    backoff_cap_s: float = Field(2.0, ge=0)
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    breaker_failures: int = Field(5, ge=1)
    """Consecutive failed attempts that open the breaker."""
    breaker_cooldown_s: float = Field(30.0, gt=0)
    """How long an open breaker fails fast before one trial call (half-open)."""


class SourcesConfig(BaseModel):
    """Every source the cloud asks, and how long an aggregate is cached per vehicle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: tuple[SourceConfig, ...] = Field(min_length=1)
    cache_ttl_s: float = Field(CACHE_TTL_S, gt=0)
    retry_after_s: float = Field(RETRY_AFTER_S, gt=0)
    """The cache time of a result with a failed source."""

    @model_validator(mode="after")
    def _one_each(self) -> Self:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError("source names must be unique")
        if sum(s.kind == "national" for s in self.sources) > 1:
            raise ValueError("there is one national platform")
        return self


# ---- the clients -------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str


def _error_code(body: bytes) -> str | None:
    """The ``error.code`` of a JSON error body, if it has one."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, TypeError, KeyError):
        return None
    return code if isinstance(code, str) and len(code) <= 64 else None


class SourceClient:
    """Asks one source; a failure of any kind raises SourceError (and is counted)."""

    def __init__(
        self,
        config: SourceConfig,
        *,
        counters: Counter[str] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.kind: SourceKind = config.kind
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - backoff jitter, not security
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            headers={"Accept": "application/json", "User-Agent": "ctpl-cloud/1"},
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def lookup(self, plate: str | None, vin: str | None) -> SourceAnswer:
        """The source's policies for the vehicle (by every key given: plate, VIN)."""
        if not plate and not vin:
            raise ValueError("give a plate or a VIN")
        params = {k: v for k, v in (("plate", plate), ("vin", vin)) if v}

        def convert(w: WireAnswer) -> SourceAnswer:
            if w.source != self.name:
                raise ValueError(f"the answer says it is from {w.source[:32]!r}")
            policies = tuple(p.policy() for p in w.policies)
            # The VIN is the vehicle; a plate can change hands, so it decides only alone.
            if vin:
                ours = all(p.vin == vin.strip().upper() for p in policies)
            else:
                ours = all(normal_plate(p.plate) == normal_plate(plate or "") for p in policies)
            if not ours:
                raise ValueError("the answer holds a policy of another vehicle")
            for p in policies:
                if self.kind == "insurer" and p.insurer_code != self.name:
                    raise ValueError(f"the answer holds a policy of {p.insurer_code[:16]!r}")
            return SourceAnswer(self.name, self.kind, w.as_of, self.clock.now(), policies)

        _, answer = await self._call(
            "GET", "/v1/policies", {200}, WireAnswer, convert, params=params
        )
        return answer

    async def vehicle(self, plate: str | None, vin: str | None) -> "Registered":
        """The vehicle's facts as the source records them (the national platform's
        registry): SourceError ``not_found`` when it knows no such vehicle."""
        if not plate and not vin:
            raise ValueError("give a plate or a VIN")
        params = {k: v for k, v in (("plate", plate), ("vin", vin)) if v}

        def convert(w: WireVehicleAnswer) -> Registered:
            if w.source != self.name:
                raise ValueError(f"the answer says it is from {w.source[:32]!r}")
            v = w.vehicle
            if vin and v.vin != vin.strip().upper():
                raise ValueError("the answer is another vehicle's")
            if not vin and normal_plate(v.plate) != normal_plate(plate or ""):
                raise ValueError("the answer is another vehicle's")
            return v.registered()

        _, found = await self._call(
            "GET", "/v1/vehicles", {200}, WireVehicleAnswer, convert, params=params
        )
        return found

    # ---- one call: attempts, breaker, validation --------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        expect: set[int],
        model: type[M],
        convert: Callable[[M], T],
        **request: Any,
    ) -> tuple[int, T]:
        last: SourceError | None = None
        for attempt in range(1, self.config.attempts + 1):
            if not self.breaker.allow(self.clock.monotonic()):
                # Mid-retry, the failure that opened the breaker says more than the breaker.
                fast = SourceError(self.name, "circuit_open", "failing fast")
                raise self._counted(last or fast)
            try:
                reply = await self._exchange(method, path, **request)
                self._check(reply, expect)
                result = convert(self._parse(reply, model))
            except ValueError as exc:
                err = SourceError(self.name, "invalid", str(exc)[:200])
                self._judge(err)
                raise self._counted(err) from exc
            except SourceError as err:
                self._judge(err)
                if err.reason not in RETRYABLE or attempt == self.config.attempts:
                    self._counted(err)
                    raise
                last = err
                self.counters[f"{self.name}.retries"] += 1
                cap = min(
                    self.config.backoff_cap_s, self.config.backoff_base_s * 2 ** (attempt - 1)
                )
                await asyncio.sleep(self.rng.uniform(0, cap))
                continue
            except BaseException:
                self.breaker.abandoned()
                raise
            self.breaker.succeeded()
            self.counters[f"{self.name}.ok"] += 1
            return reply.status, result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _judge(self, err: SourceError) -> None:
        if err.reason not in BREAKER_FAILURES:
            self.breaker.succeeded()
        elif self.breaker.failed(self.clock.monotonic()):
            self.counters[f"{self.name}.breaker_opened"] += 1
            log.warning("source %s: breaker open after %s", self.name, err.reason)

    def _counted(self, err: SourceError) -> SourceError:
        self.counters[f"{self.name}.{err.reason}"] += 1
        return err

    async def _exchange(self, method: str, path: str, **request: Any) -> _Reply:
        limit, deadline = self.config.max_body_bytes, self.config.timeout_s
        try:
            async with asyncio.timeout(deadline):
                async with self._http.stream(method, path, **request) as resp:
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise SourceError(self.name, "too_large", f"{declared} bytes declared")
                    chunks, size = [], 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise SourceError(self.name, "too_large", f"over {limit} bytes")
                        chunks.append(chunk)
                    ctype = resp.headers.get("content-type", "")
                    return _Reply(resp.status_code, b"".join(chunks), ctype)
        except TimeoutError as exc:
            msg = f"no complete answer within {deadline} s"
            raise SourceError(self.name, "timeout", msg) from exc
        except httpx.TimeoutException as exc:
            raise SourceError(self.name, "timeout", type(exc).__name__) from exc
        except httpx.DecodingError as exc:
            raise SourceError(self.name, "invalid", "undecodable body") from exc
        except httpx.HTTPError as exc:
            raise SourceError(self.name, "connection", type(exc).__name__) from exc

    def _check(self, reply: _Reply, expect: set[int]) -> None:
        status = reply.status
        if status in expect:
            return
        html = "text/html" in reply.content_type.lower()
        what = f"HTTP {status}" + (" (an HTML page)" if html else "")
        if status >= 500:
            raise SourceError(self.name, "unavailable", what, status=status)
        if status < 400:
            raise SourceError(self.name, "invalid", f"unexpected {what}", status=status)
        reason = _STATUS_REASONS.get(status, "refused")
        raise SourceError(self.name, reason, what, status=status, code=_error_code(reply.body))

    def _parse(self, reply: _Reply, model: type[M]) -> M:
        if "html" in reply.content_type.lower() or reply.body.lstrip()[:1] == b"<":
            raise SourceError(self.name, "html", "an HTML page, not JSON", status=reply.status)
        try:
            return model.model_validate_json(reply.body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if errors and errors[0]["type"] == "json_invalid":
                raise SourceError(self.name, "not_json", "the body is not JSON") from exc
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
            msg = f"{where or 'body'}: {errors[0]['msg'] if errors else 'invalid'}"
            raise SourceError(self.name, "invalid", msg[:200]) from exc


class InsurerClient(SourceClient):
    """An insurer: its policies, and quotes, bindings and orders."""

    async def quote(
        self, plate: str, vin: str, vehicle: Vehicle, *, start: date | None
    ) -> Quote:  # fmt: skip
        """A priced one-year quote for ``vehicle`` starting ``start``, or at the earliest
        the insurer allows when None (quoting twice makes two quotes)."""

        def convert(w: WireQuote) -> Quote:
            if w.insurer_code != self.name:
                raise ValueError(f"a quote from {w.insurer_code[:16]!r}")
            quote = w.quote()
            if start is not None and quote.start != start:
                raise ValueError(f"a quote starting {quote.start}, not {start} as asked")
            return quote

        body = quote_body(plate, vin, vehicle, start)
        _, quote = await self._call("POST", "/v1/quotes", {201}, WireQuote, convert, json=body)
        return quote

    async def bind(self, quote_id: str, idempotency_key: str) -> Order:
        """Bind ``quote_id`` once per key (safe to repeat: the same key gives the same order).

        SourceError ``not_found`` (no such quote), ``conflict`` (bound under another key,
        or the key bound another quote: ``code`` says which), ``gone`` (expired).
        """
        if not ID.match(quote_id) or not IDEMPOTENCY_KEY.match(idempotency_key):
            raise ValueError("a quote id and an Idempotency-Key of printable ASCII")
        status, order = await self._call(
            "POST", "/v1/bindings", {200, 201}, WireOrder, self._order,
            json={"quote_id": quote_id}, headers={"Idempotency-Key": idempotency_key},
        )  # fmt: skip
        return replace(order, created=status == 201)

    async def order(self, order_id: str) -> Order:
        """The order as the insurer holds it now, with its policy once issued."""
        if not ID.match(order_id):
            raise ValueError("an order id is 1-64 letters, digits, '_', '.', '-'")
        _, order = await self._call("GET", f"/v1/orders/{order_id}", {200}, WireOrder, self._order)
        return order

    def _order(self, w: WireOrder) -> Order:
        order = w.order()
        if order.policy is not None and order.policy.insurer_code != self.name:
            raise ValueError(f"an order's policy of {order.policy.insurer_code[:16]!r}")
        return order


def make_client(
    config: SourceConfig,
    *,
    counters: Counter[str] | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> SourceClient:
    """An ``InsurerClient`` for an insurer, else a ``SourceClient``."""
    cls = InsurerClient if config.kind == "insurer" else SourceClient
    return cls(config, counters=counters, clock=clock, rng=rng)
