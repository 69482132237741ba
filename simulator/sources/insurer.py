"""A simulated insurer: its own policies (fresh at once), quotes, bindings, payment, webhooks.

Quote → bind (``Idempotency-Key``) → the driver pays through the payment link → the
policy is issued, reported to the national platform (seen there ``lag_s`` later) and
announced by a signed webhook, retried with backoff until a 2xx. The REST contract is
docs/sources.md; the premium is the uniform tariff (``premium``).

When cover may start (``earliest_start``, the insurer's contract): a quote asked for a
start date (a car still covered, renewing without a gap) starts at 00:00 China time of
that date, which must lie ahead (never backdated); a quote asked with no start (a lapsed
car, or one never insured) starts at the next 00:00 China time (``next_midnight``, the
default) or, for an insurer that starts cover on payment (``on_payment``, 即时生效), at
the first whole minute after payment. A policy paid after its quoted start instant has
passed starts at the next 00:00 instead (cover is never backdated).
"""

import asyncio
import hashlib
import hmac
import html
import itertools
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import httpx
from fastapi import Header
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from agent.protocol import calendar
from agent.protocol.clock import Clock

from .common import ClaimsRecord, Knobs, Policy, SimService, error_response, rfc3339
from .national import NationalPlatform
from .premium import ClaimsRecord as premium_claims
from .premium import Premium, TariffError, Vehicle, money, premium, surcharged, term_for

WEBHOOK_ATTEMPTS: Final = 6
WEBHOOK_BACKOFF_S: Final = 0.05
WEBHOOK_BACKOFF_CAP_S: Final = 2.0
WEBHOOK_TIMEOUT_S: Final = 5.0
MAX_DAYS_AHEAD: Final = 90
"""How far ahead a term may start (insurers commonly open renewal about 90 days ahead)."""
EarliestStart = Literal["next_midnight", "on_payment"]
StartRule = Literal["midnight", "on_payment"]


class QuoteRequest(BaseModel):
    """``POST /v1/quotes``: the vehicle's facts (as the national platform records them)
    and the start asked for (None: the earliest this insurer allows)."""

    model_config = ConfigDict(extra="forbid")

    plate: str = Field(min_length=2, max_length=16)
    vin: str = Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$")
    region: str = Field(pattern=r"^[0-9]{6}$")
    kind: str = Field(pattern=r"^[a-z_]{1,32}$")
    seats: int = Field(ge=1, le=99)
    displacement_l: str = Field(pattern=r"^[0-9]{1,2}\.[0-9]{1,3}$")
    fuel: str = Field(pattern=r"^[a-z_]{1,16}$")
    claims: ClaimsRecord
    start: date | None = None

    def vehicle(self) -> Vehicle:
        """The tariff's view of the vehicle (TariffError for facts it refuses)."""
        c = self.claims
        return Vehicle(
            region=self.region, kind=self.kind, seats=self.seats,
            displacement_l=Decimal(self.displacement_l), fuel=self.fuel,
            claims=premium_claims(c.first_insured, c.claim_free_years,
                                  c.at_fault_claims_last_year, c.fatal_last_year),
        )  # fmt: skip


class BindingRequest(BaseModel):
    """``POST /v1/bindings``."""

    model_config = ConfigDict(extra="forbid")

    quote_id: str = Field(min_length=1, max_length=64)


@dataclass(frozen=True, slots=True)
class Quote:
    """A quote as the insurer holds it."""

    quote_id: str
    request: QuoteRequest
    premium: Premium
    start: date
    end: date
    expires_at: datetime
    start_rule: StartRule = "midnight"


@dataclass(slots=True)
class Order:
    """A bound quote awaiting payment, then paid (``charges`` counts actual charges)."""

    order_id: str
    quote_id: str
    idempotency_key: str
    amount: str
    payment_url: str
    created_at: datetime
    status: str = "awaiting_payment"
    charges: int = 0
    paid_at: datetime | None = None
    policy: Policy | None = None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST of a webhook: the HTTP status, or the error that stopped it."""

    order_id: str
    delivery: int
    attempt: int
    status: int | None
    error: str | None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


@dataclass
class _Ids:
    quotes: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))
    orders: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))
    policies: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))


class Insurer(SimService):
    """One insurer's HTTP services; ``source`` is its ``code``."""

    def __init__(
        self,
        code: str,
        name: str,
        *,
        webhook_url: str | None = None,
        webhook_secret: str | bytes = b"",
        reports_to: Sequence[NationalPlatform] = (),
        number_prefix: str = "11",
        knobs: Knobs | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        port: int = 0,
        webhook_attempts: int = WEBHOOK_ATTEMPTS,
        webhook_backoff_s: float = WEBHOOK_BACKOFF_S,
        max_days_ahead: int = MAX_DAYS_AHEAD,
        webhook_ca: Path | None = None,
        earliest_start: EarliestStart = "next_midnight",
    ) -> None:
        self.source = self.code = code
        self.earliest_start: EarliestStart = earliest_start
        """When a lapsed car's cover may start: the next 00:00 China time, or on payment."""
        self.webhook_ca = webhook_ca
        """The CA that authenticates the webhook receiver (the cloud's HTTPS API)."""
        self.name = name
        super().__init__(knobs=knobs, clock=clock, seed=seed, port=port)
        self.webhook_url = webhook_url
        self.webhook_secret = (
            webhook_secret.encode() if isinstance(webhook_secret, str) else webhook_secret
        )
        self.reports_to = list(reports_to)
        self.number_prefix = number_prefix
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_s = webhook_backoff_s
        self.max_days_ahead = max_days_ahead
        self.policies: dict[str, Policy] = {}
        self.quotes: dict[str, Quote] = {}
        self.orders: dict[str, Order] = {}
        self.webhook_attempts_log: list[WebhookAttempt] = []
        self._orders_by_key: dict[str, Order] = {}
        self._order_of_quote: dict[str, str] = {}
        self._ids = _Ids()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._add_routes()

    # ---- policies -------------------------------------------------------------

    def add_policy(self, policy: Policy | Mapping[str, Any], *, report: bool = False) -> Policy:
        """Seed one of this insurer's policies; ``report`` also tells the registries now."""
        p = policy if isinstance(policy, Policy) else Policy.model_validate(policy)
        if p.insurer_code != self.code:
            raise ValueError(f"{p.policy_no} is {p.insurer_code}'s, not {self.code}'s")
        self.policies[p.policy_no] = p
        if report:
            for registry in self.reports_to:
                registry.report(p, p.issued_at)
        return p

    def issue_policy(
        self, plate: str, vin: str, start: date, end: date | None = None, *, report: bool = True,
        starts_at: datetime | None = None,
    ) -> Policy:  # fmt: skip
        """Issue a new in-force policy now (numbered as this insurer numbers them), from
        ``starts_at`` when given (an instant on ``start``), else 00:00 of ``start``."""
        now = self.clock.now()
        year = calendar.china_date(now).year
        policy = Policy(
            policy_no=f"PDZA{year}{self.number_prefix}{next(self._ids.policies):010d}",
            insurer_code=self.code, insurer_name=self.name, plate=plate, vin=vin, start=start,
            end=end or term_for(start)[1], status="in_force", issued_at=now, starts_at=starts_at,
        )  # fmt: skip
        self.policies[policy.policy_no] = policy
        if report:
            for registry in self.reports_to:
                registry.report(policy)
        return policy

    def cancel_policy(self, policy_no: str) -> Policy:
        """Cancel one of this insurer's policies and report it."""
        cancelled = self.policies[policy_no].model_copy(update={"status": "cancelled"})
        self.policies[policy_no] = cancelled
        for registry in self.reports_to:
            registry.report(cancelled)
        return cancelled

    def visible_policies(self, now: datetime) -> list[Policy]:
        return list(self.policies.values())

    # ---- quotes, bindings, payment ----------------------------------------------

    def quote(self, req: QuoteRequest) -> Quote:
        """A priced quote for ``req``; ValueError (with a code first) when it cannot be."""
        now = self.clock.now()
        today = calendar.china_date(now)
        rule: StartRule = "midnight"
        if req.start is not None:
            if calendar.coverage_start_instant(req.start) < now:
                raise ValueError("start_in_past: cover cannot start before now (China time)")
            wanted = req.start
        elif self.earliest_start == "on_payment":
            wanted, rule = today, "on_payment"
        else:
            wanted = calendar.china_date(calendar.next_midnight(now))
        if wanted > today + timedelta(days=self.max_days_ahead):
            raise ValueError(f"too_early: terms open {self.max_days_ahead} days ahead")
        try:
            price = surcharged(premium(req.vehicle()), self.knobs.ctpl_surcharge_cny)
        except TariffError as exc:
            raise ValueError(f"{exc.code}: {exc.message}") from exc
        start, end = term_for(wanted)
        expires = now + timedelta(seconds=self.knobs.quote_ttl_s)
        q = Quote(f"q_{self.code.lower()}_{next(self._ids.quotes):06d}", req, price, start, end,
                  expires, rule)  # fmt: skip
        self.quotes[q.quote_id] = q
        return q

    def quote_json(self, q: Quote) -> dict[str, Any]:
        return {
            "quote_id": q.quote_id, "insurer_code": self.code, "insurer_name": self.name,
            "start": q.start.isoformat(), "end": q.end.isoformat(), "start_rule": q.start_rule,
            "expires_at": rfc3339(q.expires_at), "premium": q.premium.wire(),
        }  # fmt: skip

    def _term_on_payment(self, q: Quote, paid_at: datetime) -> tuple[date, date, datetime | None]:
        """(start, end, starts_at) of the policy ``q`` becomes when paid at ``paid_at``."""
        if q.start_rule == "on_payment":
            begins = paid_at.replace(second=0, microsecond=0) + timedelta(minutes=1)
            start = calendar.china_date(begins)
            return start, term_for(start)[1], begins
        if calendar.coverage_start_instant(q.start) >= paid_at:
            return q.start, q.end, None
        start = calendar.china_date(calendar.next_midnight(paid_at))  # never backdated
        return start, term_for(start)[1], None

    def order_json(self, o: Order) -> dict[str, Any]:
        return {
            "order_id": o.order_id, "quote_id": o.quote_id, "amount": o.amount,
            "currency": "CNY", "payment_url": o.payment_url, "status": o.status,
            "paid_at": None if o.paid_at is None else rfc3339(o.paid_at),
            "policy": None if o.policy is None else o.policy.wire(),
        }  # fmt: skip

    def pay(self, order_id: str) -> Order:
        """The driver pays ``order_id``: charged once, however often; KeyError if unknown."""
        order = self.orders[order_id]
        if order.status == "paid":
            return order
        quote = self.quotes[order.quote_id]
        order.charges += 1
        order.status = "paid"
        order.paid_at = self.clock.now()
        start, end, starts_at = self._term_on_payment(quote, order.paid_at)
        order.policy = self.issue_policy(
            quote.request.plate, quote.request.vin, start, end, starts_at=starts_at
        )
        if self.webhook_url is not None:
            task = asyncio.create_task(self._announce(order), name=f"webhook-{order_id}")
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return order

    # ---- webhooks ---------------------------------------------------------------

    def webhook_body(self, order: Order) -> bytes:
        assert order.policy is not None and order.paid_at is not None
        event = {
            "event": "order.paid", "order_id": order.order_id, "quote_id": order.quote_id,
            "insurer_code": self.code, "policy": order.policy.wire(),
            "paid_at": rfc3339(order.paid_at),
        }  # fmt: skip
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    async def _announce(self, order: Order) -> None:
        body = self.webhook_body(order)
        for delivery in range(1, 3 if self.knobs.duplicate_webhooks else 2):
            await self._deliver(order.order_id, delivery, body)

    async def _deliver(self, order_id: str, delivery: int, body: bytes) -> bool:
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self.webhook_ca is not None:
                verify = ssl.create_default_context(cafile=str(self.webhook_ca))
            self._http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, verify=verify)
        for attempt in range(1, self.webhook_attempts + 1):
            url = self.webhook_url
            if url is None:
                return False
            timestamp = str(int(self.clock.now().timestamp()))
            headers = {
                "Content-Type": "application/json",
                "X-CTPL-Timestamp": timestamp,
                "X-CTPL-Signature": sign(self.webhook_secret, timestamp, body),
            }
            status: int | None = None
            error: str | None = None
            try:
                status = (await self._http.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            self.webhook_attempts_log.append(
                WebhookAttempt(order_id, delivery, attempt, status, error)
            )
            if status is not None and 200 <= status < 300:
                return True
            if attempt < self.webhook_attempts:
                await asyncio.sleep(
                    min(WEBHOOK_BACKOFF_CAP_S, self.webhook_backoff_s * 2 ** (attempt - 1))
                )
        return False

    async def drain_webhooks(self, timeout_s: float = 10.0) -> None:
        """Wait until every webhook delivery in progress has ended."""
        async with asyncio.timeout(timeout_s):
            while self._deliveries:
                await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def stop(self) -> None:
        """Stop serving; webhook deliveries still in progress are abandoned."""
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await super().stop()

    # ---- routes -----------------------------------------------------------------

    def _add_routes(self) -> None:
        app, knobs = self.app, self.knobs

        def refuse(status: int, code: str, message: str) -> Response:
            return error_response(knobs, status, code, message)

        @app.post("/v1/quotes", status_code=201)
        async def create_quote(req: QuoteRequest) -> Response:
            try:
                q = self.quote(req)
            except ValueError as exc:
                code, _, message = str(exc).partition(": ")
                return refuse(422, code if message else "cannot_quote", message or code)
            return JSONResponse(self.quote_json(q), status_code=201)

        @app.post("/v1/bindings", status_code=201)
        async def bind(
            req: BindingRequest,
            idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
        ) -> Response:
            if not idempotency_key:
                return refuse(400, "idempotency_key_required", "send an Idempotency-Key header")
            known = self._orders_by_key.get(idempotency_key)
            if known is not None:
                if known.quote_id != req.quote_id:
                    return refuse(409, "idempotency_key_reused", "this key bound another quote")
                return JSONResponse(self.order_json(known), status_code=200)
            quote = self.quotes.get(req.quote_id)
            if quote is None:
                return refuse(404, "unknown_quote", "no such quote")
            if req.quote_id in self._order_of_quote:
                return refuse(409, "quote_already_bound", "the quote is bound by another key")
            if self.clock.now() >= quote.expires_at:
                return refuse(410, "quote_expired", "the quote has expired; ask again")
            order_id = f"ord_{self.code.lower()}_{next(self._ids.orders):06d}"
            order = Order(
                order_id, quote.quote_id, idempotency_key, money(quote.premium.total),
                f"{self.url}/pay/{order_id}", self.clock.now(),
            )  # fmt: skip
            self.orders[order_id] = order
            self._orders_by_key[idempotency_key] = order
            self._order_of_quote[quote.quote_id] = order_id
            return JSONResponse(self.order_json(order), status_code=201)

        @app.get("/v1/orders/{order_id}")
        async def get_order(order_id: str) -> Response:
            order = self.orders.get(order_id)
            if order is None:
                return refuse(404, "unknown_order", "no such order")
            return JSONResponse(self.order_json(order))

        @app.post("/v1/orders/{order_id}/pay")
        async def pay(order_id: str) -> Response:
            if order_id not in self.orders:
                return refuse(404, "unknown_order", "no such order")
            return JSONResponse(self.order_json(self.pay(order_id)))

        @app.get("/pay/{order_id}")
        async def pay_page(order_id: str) -> Response:
            order = self.orders.get(order_id)
            if order is None:
                return HTMLResponse(_NO_ORDER, status_code=404)
            return HTMLResponse(_page(self.name, order))

        @app.post("/pay/{order_id}")
        async def pay_from_page(order_id: str) -> Response:
            if order_id not in self.orders:
                return HTMLResponse(_NO_ORDER, status_code=404)
            return HTMLResponse(_page(self.name, self.pay(order_id)))


_NO_ORDER: Final = '<!DOCTYPE html><html lang="zh-CN"><meta charset="utf-8"><p>未找到该订单。</p>'


def _page(insurer: str, order: Order) -> str:
    """The payment page a driver's phone would show (in Chinese, as the driver reads it)."""
    oid = html.escape(order.order_id)
    if order.status == "paid":
        assert order.policy is not None
        p = order.policy
        begins = p.starts_at.astimezone(calendar.CHINA_TZ) if p.starts_at else None
        when = (
            f"{begins.year}年{begins.month}月{begins.day}日{begins.hour}时{begins.minute}分"
            if begins
            else f"{p.start.year}年{p.start.month}月{p.start.day}日0时"
        )
        action = (
            f"<p>支付成功。保单号 {html.escape(p.policy_no)}，自{when}起生效，"
            f"至{p.end.year}年{p.end.month}月{p.end.day}日24时止。</p>"
        )
    else:
        action = f'<form method="post" action="/pay/{oid}"><button>确认支付</button></form>'
    return (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{html.escape(insurer)}</title></head><body><h1>{html.escape(insurer)}</h1>"
        f"<p>交强险订单 {oid}：应付 {html.escape(order.amount)} 元</p>{action}</body></html>"
    )
