"""The policy sources over HTTP: the only cloud module that imports httpx.

``SourceClient`` asks one source (``lookup``; the national platform also answers
``vehicle``: the facts a premium is priced by); ``InsurerClient`` also quotes, binds and
reads orders. Each call has a total deadline per attempt (a slow drip cannot hold it),
retries with full-jitter backoff on 5xx, 429, timeouts and connection errors (never on
other 4xx), and goes through the source's ``CircuitBreaker``. Every answer is validated
strictly; anything unusable becomes one ``SourceError`` whose ``reason`` is counted in
``counters`` as ``<source>.<reason>``. ``SourceRegistry`` asks every source at once,
aggregates (``cloud.aggregate``) and caches per vehicle. The insurers' webhooks are
checked by ``cloud.webhooks``. The contract is docs/sources.md.

CloudError
└── SourceError    a source gave no usable answer (``source``, ``reason``, ``status``, ``code``)
"""

import asyncio
import itertools
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Self, TypeVar

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.protocol import calendar
from agent.protocol.clock import Clock, SystemClock

from .aggregate import (
    CACHE_TTL_S,
    RETRY_AFTER_S,
    Aggregate,
    AggregateCache,
    Outcome,
    SourceAnswer,
    SourceFailure,
    SourceKind,
    SourcePolicy,
    aggregate,
)
from .errors import CloudError
from .tariff import ClaimsRecord, Vehicle

__all__ = [
    "BREAKER_FAILURES",
    "RETRYABLE",
    "CircuitBreaker",
    "InsurerClient",
    "Order",
    "Premium",
    "Quote",
    "Registered",
    "SourceClient",
    "SourceConfig",
    "SourceError",
    "SourceRegistry",
    "SourcesConfig",
    "make_client",
    "vehicle_key",
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
MAX_POLICIES: Final = 100
_STATUS_REASONS: Final[dict[int, SourceReason]] = {
    404: "not_found", 409: "conflict", 410: "gone", 429: "throttled"
}  # fmt: skip
_ID: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VIN: Final = r"^[A-HJ-NPR-Z0-9]{17}$"
_MONEY: Final = r"^-?\d{1,9}\.\d{2}$"


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


# ---- the breaker (pure) ------------------------------------------------------


class CircuitBreaker:
    """closed → open after ``failures`` consecutive failures → half-open after
    ``cooldown_s`` (one trial call at a time) → closed on its success, open on its failure."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.consecutive = 0
        self.opened_at: float | None = None
        self._probing = False

    def allow(self, now: float) -> bool:
        """Whether a call may go out at monotonic ``now`` (claims the trial when half-open)."""
        if self.state == "open":
            assert self.opened_at is not None
            if now - self.opened_at < self.cooldown_s:
                return False
            self.state = "half_open"
        if self.state == "half_open":
            if self._probing:
                return False
            self._probing = True
        return True

    def succeeded(self) -> None:
        self.state, self.consecutive, self._probing = "closed", 0, False

    def failed(self, now: float) -> bool:
        """Record a failure; True when it opened the breaker."""
        self._probing = False
        self.consecutive += 1
        if self.state == "half_open" or (
            self.state == "closed" and self.consecutive >= self.failures
        ):
            self.state, self.opened_at = "open", now
            return True
        return False

    def abandoned(self) -> None:
        """A call ended with no verdict (cancelled): free the trial slot."""
        self._probing = False


# ---- wire models (strict) ----------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


Money = Annotated[str, Field(pattern=_MONEY)]


class _WirePolicy(_Strict):
    policy_no: str = Field(min_length=4, max_length=40)
    insurer_code: str = Field(min_length=1, max_length=16)
    insurer_name: str = Field(min_length=1, max_length=64)
    plate: str = Field(min_length=2, max_length=16)
    vin: str = Field(pattern=_VIN)
    start: date
    end: date
    status: Literal["in_force", "cancelled"]
    issued_at: AwareDatetime
    starts_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise ValueError("the term ends before it starts")
        if self.starts_at is not None and calendar.china_date(self.starts_at) != self.start:
            raise ValueError("starts_at does not fall on the start date (China time)")
        return self

    def policy(self) -> SourcePolicy:
        return SourcePolicy(**self.model_dump())


class _WireAnswer(_Strict):
    source: str
    as_of: AwareDatetime
    policies: list[_WirePolicy] = Field(max_length=MAX_POLICIES)


class _WirePremium(_Strict):
    currency: Literal["CNY"]
    base: Money
    floating_rate: Money
    ctpl: Money
    vehicle_vessel_tax: Money
    total: Money
    row: str | None = Field(None, pattern=r"^(A[1-6]|new)$")
    tax_exemption: Literal["new_energy"] | None = None


class _WireQuote(_Strict):
    quote_id: str = Field(pattern=_ID.pattern)
    insurer_code: str
    insurer_name: str = Field(min_length=1, max_length=64)
    start: date
    end: date
    expires_at: AwareDatetime
    premium: _WirePremium
    start_rule: Literal["midnight", "on_payment"] = "midnight"


class _WireClaims(_Strict):
    first_insured: bool
    claim_free_years: int = Field(ge=0, le=99)
    at_fault_claims_last_year: int = Field(ge=0, le=99)
    fatal_last_year: bool


class _WireVehicle(_Strict):
    vin: str = Field(pattern=_VIN)
    plate: str = Field(min_length=2, max_length=16)
    region: str = Field(pattern=r"^[0-9]{6}$")
    kind: str = Field(pattern=r"^[a-z_]{1,32}$")
    seats: int = Field(ge=1, le=99)
    displacement_l: str = Field(pattern=r"^[0-9]{1,2}\.[0-9]{1,3}$")
    fuel: str = Field(pattern=r"^[a-z_]{1,16}$")
    claims: _WireClaims


class _WireVehicleAnswer(_Strict):
    source: str
    as_of: AwareDatetime
    vehicle: _WireVehicle


class _WireOrder(_Strict):
    order_id: str = Field(pattern=_ID.pattern)
    quote_id: str = Field(pattern=_ID.pattern)
    amount: Money
    currency: Literal["CNY"]
    payment_url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    status: Literal["awaiting_payment", "paid"]
    paid_at: AwareDatetime | None = None
    policy: _WirePolicy | None = None


@dataclass(frozen=True, slots=True)
class Premium:
    """A quote's premium lines (CNY); ``total`` = ``ctpl`` + ``vehicle_vessel_tax``."""

    base: Decimal
    floating_rate: Decimal
    ctpl: Decimal
    vehicle_vessel_tax: Decimal
    total: Decimal
    currency: str = "CNY"
    row: str | None = None
    """The floating-rate row applied (``A1``…``A6``, ``new``), when the insurer says."""
    tax_exemption: str | None = None
    """Why the tax is 0 (``new_energy``)."""


@dataclass(frozen=True, slots=True)
class Quote:
    """An insurer's priced offer, bindable until ``expires_at``."""

    quote_id: str
    insurer_code: str
    insurer_name: str
    start: date
    end: date
    expires_at: datetime
    premium: Premium
    start_rule: str = "midnight"
    """``midnight``: cover from 00:00 China time of ``start``; ``on_payment``: from payment."""


@dataclass(frozen=True, slots=True)
class Registered:
    """A registered vehicle as the national platform knows it: its plate and facts."""

    vin: str
    plate: str
    vehicle: Vehicle


@dataclass(frozen=True, slots=True)
class Order:
    """A bound quote: pay at ``payment_url``; ``policy`` once paid and issued."""

    order_id: str
    quote_id: str
    amount: Decimal
    currency: str
    payment_url: str
    status: str
    paid_at: datetime | None
    policy: SourcePolicy | None
    created: bool = False
    """True when this call made the order (201); False when the key had made it before."""


# ---- the clients -------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str


def _litres(value: Decimal) -> str:
    """Litres as the wire writes them: a decimal with a point (``1.5``, ``0.0``)."""
    text = format(value, "f")
    return text if "." in text else f"{text}.0"


def _normal_plate(plate: str) -> str:
    return plate.strip().replace("·", "").replace(" ", "").upper()


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

        def convert(w: _WireAnswer) -> SourceAnswer:
            if w.source != self.name:
                raise ValueError(f"the answer says it is from {w.source[:32]!r}")
            policies = tuple(p.policy() for p in w.policies)
            # The VIN is the vehicle; a plate can change hands, so it decides only alone.
            if vin:
                ours = all(p.vin == vin.strip().upper() for p in policies)
            else:
                ours = all(_normal_plate(p.plate) == _normal_plate(plate or "") for p in policies)
            if not ours:
                raise ValueError("the answer holds a policy of another vehicle")
            for p in policies:
                if self.kind == "insurer" and p.insurer_code != self.name:
                    raise ValueError(f"the answer holds a policy of {p.insurer_code[:16]!r}")
            return SourceAnswer(self.name, self.kind, w.as_of, self.clock.now(), policies)

        _, answer = await self._call(
            "GET", "/v1/policies", {200}, _WireAnswer, convert, params=params
        )
        return answer

    async def vehicle(self, plate: str | None, vin: str | None) -> "Registered":
        """The vehicle's facts as the source records them (the national platform's
        registry): SourceError ``not_found`` when it knows no such vehicle."""
        if not plate and not vin:
            raise ValueError("give a plate or a VIN")
        params = {k: v for k, v in (("plate", plate), ("vin", vin)) if v}

        def convert(w: _WireVehicleAnswer) -> Registered:
            if w.source != self.name:
                raise ValueError(f"the answer says it is from {w.source[:32]!r}")
            v = w.vehicle
            if vin and v.vin != vin.strip().upper():
                raise ValueError("the answer is another vehicle's")
            if not vin and _normal_plate(v.plate) != _normal_plate(plate or ""):
                raise ValueError("the answer is another vehicle's")
            c = v.claims
            claims = ClaimsRecord(first_insured=c.first_insured,
                                  claim_free_years=min(c.claim_free_years, 3),
                                  at_fault_claims_last_year=c.at_fault_claims_last_year,
                                  fatal_last_year=c.fatal_last_year)  # fmt: skip
            vehicle = Vehicle(region=v.region, kind=v.kind, seats=v.seats,
                              displacement_l=Decimal(v.displacement_l), fuel=v.fuel,
                              claims=claims)  # fmt: skip
            return Registered(v.vin, v.plate, vehicle)

        _, found = await self._call(
            "GET", "/v1/vehicles", {200}, _WireVehicleAnswer, convert, params=params
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
        c = vehicle.claims
        body = {
            "plate": plate, "vin": vin, "region": vehicle.region, "kind": vehicle.kind,
            "seats": vehicle.seats, "displacement_l": _litres(vehicle.displacement_l),
            "fuel": vehicle.fuel,
            "claims": {
                "first_insured": c.first_insured, "claim_free_years": c.claim_free_years,
                "at_fault_claims_last_year": c.at_fault_claims_last_year,
                "fatal_last_year": c.fatal_last_year,
            },
            "start": None if start is None else start.isoformat(),
        }  # fmt: skip

        def convert(w: _WireQuote) -> Quote:
            if w.insurer_code != self.name:
                raise ValueError(f"a quote from {w.insurer_code[:16]!r}")
            pr = w.premium
            premium = Premium(
                Decimal(pr.base), Decimal(pr.floating_rate), Decimal(pr.ctpl),
                Decimal(pr.vehicle_vessel_tax), Decimal(pr.total), row=pr.row,
                tax_exemption=pr.tax_exemption,
            )  # fmt: skip
            if premium.total != premium.ctpl + premium.vehicle_vessel_tax:
                raise ValueError("the premium's total is not ctpl + tax")
            if w.end < w.start:
                raise ValueError("the term ends before it starts")
            if start is not None and w.start != start:
                raise ValueError(f"a quote starting {w.start}, not {start} as asked")
            return Quote(w.quote_id, w.insurer_code, w.insurer_name, w.start, w.end,
                         w.expires_at, premium, w.start_rule)  # fmt: skip

        _, quote = await self._call("POST", "/v1/quotes", {201}, _WireQuote, convert, json=body)
        return quote

    async def bind(self, quote_id: str, idempotency_key: str) -> Order:
        """Bind ``quote_id`` once per key (safe to repeat: the same key gives the same order).

        SourceError ``not_found`` (no such quote), ``conflict`` (bound under another key,
        or the key bound another quote: ``code`` says which), ``gone`` (expired).
        """
        if not _ID.match(quote_id) or not re.fullmatch(r"[\x21-\x7e]{1,255}", idempotency_key):
            raise ValueError("a quote id and an Idempotency-Key of printable ASCII")
        status, order = await self._call(
            "POST", "/v1/bindings", {200, 201}, _WireOrder, self._order,
            json={"quote_id": quote_id}, headers={"Idempotency-Key": idempotency_key},
        )  # fmt: skip
        return replace(order, created=status == 201)

    async def order(self, order_id: str) -> Order:
        """The order as the insurer holds it now, with its policy once issued."""
        if not _ID.match(order_id):
            raise ValueError("an order id is 1-64 letters, digits, '_', '.', '-'")
        _, order = await self._call("GET", f"/v1/orders/{order_id}", {200}, _WireOrder, self._order)
        return order

    def _order(self, w: _WireOrder) -> Order:
        policy = None if w.policy is None else w.policy.policy()
        if policy is not None and policy.insurer_code != self.name:
            raise ValueError(f"an order's policy of {policy.insurer_code[:16]!r}")
        return Order(w.order_id, w.quote_id, Decimal(w.amount), w.currency, w.payment_url,
                     w.status, w.paid_at, policy)  # fmt: skip


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


# ---- every source at once ----------------------------------------------------


def vehicle_key(plate: str | None, vin: str | None) -> str:
    """The cache key of a vehicle: its VIN, else its plate."""
    if vin:
        return vin.strip().upper()
    if plate:
        return f"plate:{_normal_plate(plate)}"
    raise ValueError("give a plate or a VIN")


class SourceRegistry:
    """Every configured source, asked at once; results aggregated and cached per vehicle."""

    def __init__(
        self,
        config: SourcesConfig,
        *,
        clock: Clock | None = None,
        counters: Counter[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.clients: dict[str, SourceClient] = {
            s.name: make_client(s, counters=self.counters, clock=self.clock, rng=rng)
            for s in config.sources
        }
        self.cache = AggregateCache(config.cache_ttl_s, config.retry_after_s)
        self._inflight: dict[str, asyncio.Task[Aggregate]] = {}
        self._names = itertools.count(1)

    async def vehicle(self, plate: str | None, vin: str | None) -> "Registered":
        """The vehicle's facts from the national platform (SourceError when it has none,
        ``not_found`` when it knows no such vehicle)."""
        national = next((c for c in self.clients.values() if c.kind == "national"), None)
        if national is None:
            raise SourceError("national", "refused", "no national platform is configured")
        return await national.vehicle(plate, vin)

    def insurer(self, code: str) -> InsurerClient:
        """The insurer ``code``'s client; KeyError when there is none."""
        client = self.clients.get(code)
        if not isinstance(client, InsurerClient):
            raise KeyError(f"no insurer {code!r} among the sources")
        return client

    async def lookup_all(self, plate: str | None, vin: str | None) -> list[Outcome]:
        """Every source's outcome for the vehicle, asked concurrently."""
        key = vehicle_key(plate, vin)

        async def ask(client: SourceClient) -> Outcome:
            try:
                return await client.lookup(plate, vin)
            except SourceError as exc:
                last = self.cache.last_good_at(key, client.name)
                return SourceFailure(client.name, client.kind, exc.reason, self.clock.now(), last)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ask(c), name=f"lookup-{c.name}") for c in self.clients.values()]
        return [t.result() for t in tasks]

    async def refresh(
        self, plate: str | None, vin: str | None, *, force: bool = False
    ) -> Aggregate:
        """The vehicle's aggregate: from the cache while fresh, unless ``force``.

        Concurrent calls for one vehicle share one round of look-ups (a forced call joins
        a round already under way: it began after the caller's reason to force).
        """
        key = vehicle_key(plate, vin)
        if not force:
            hit = self.cache.get(key, self.clock.now())
            if hit is not None:
                self.counters["cache.hit"] += 1
                return hit
        task = self._inflight.get(key)
        if task is None:
            self.counters["cache.miss"] += 1
            task = asyncio.create_task(self._fetch(key, plate, vin),
                                       name=f"refresh-{next(self._names)}")  # fmt: skip
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[Aggregate]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch(self, key: str, plate: str | None, vin: str | None) -> Aggregate:
        outcomes = await self.lookup_all(plate, vin)
        now = self.clock.now()
        result = aggregate(outcomes, now)
        self.cache.put(key, result, now)
        return result

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        for client in self.clients.values():
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
