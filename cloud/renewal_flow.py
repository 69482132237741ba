"""The renewal flow of one vehicle as a persisted state machine. Pure: events in, effects out.

    (none) ──quote──▶ QUOTING ──quotes──▶ QUOTES ──accept(quote)──▶ BINDING
    BINDING ──bound──▶ AWAITING_PAYMENT ──paid (insurer webhook)──▶ ISSUED
    any open state ──already_renewed──▶ CHECKING ──found──▶ RENEWED_ELSEWHERE
                                                  └─none──▶ NOT_RENEWED
    QUOTES / AWAITING_PAYMENT ──decline──▶ DECLINED

Every step is safe to repeat: the shell persists the new ``Flow`` with the effects'
results, and a restart re-runs the step of a flow left in QUOTING, BINDING or CHECKING.
A bind is keyed by the consent's ``intent_id`` at the insurer (one order, one charge,
however often it is retried); a payment is taken once per order.

When the new term starts (``Flow.start_day``, chosen by the shell when the flow begins):

- a car still covered renews without a gap: only quotes starting the day after the old
  term ends are offered, and a policy issued to start earlier (an overlap) fails the flow;
  one issued later (paid after the old term ended, so the insurer moved the start) is
  issued as it is: the car is uncovered (``pending``) until it starts;
- a lapsed car, or one with no policy (``start_day`` None), takes the earliest start each
  insurer allows: the next 00:00 China time, or on payment where the insurer says so.
"""

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from agent.protocol import calendar


class Stage(StrEnum):
    """Where a flow is; the values are the ``renewal.update`` stages the car sees."""

    QUOTING = "quoting"
    QUOTES = "quotes"
    BINDING = "binding"
    AWAITING_PAYMENT = "awaiting_payment"
    ISSUED = "issued"
    CHECKING = "checking"
    RENEWED_ELSEWHERE = "renewed_elsewhere"
    NOT_RENEWED = "not_renewed"
    DECLINED = "declined"
    FAILED = "failed"


OPEN: Final = frozenset({Stage.QUOTING, Stage.QUOTES, Stage.BINDING, Stage.AWAITING_PAYMENT})
RESUMABLE: Final = frozenset({Stage.QUOTING, Stage.BINDING, Stage.CHECKING})
"""Stages whose step is re-run after a restart (their effect may not have happened)."""


class FlowError(Exception):
    """A request the flow refuses; ``code`` is stable (also sent to the car);
    ``retry_after_s`` when asking again later can succeed (``rate_limited``)."""

    def __init__(self, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class QuoteOffer:
    """A quote as the flow keeps it (money as decimal strings)."""

    quote_id: str
    insurer_code: str
    insurer_name: str
    start: date
    end: date
    ctpl: str
    floating_rate: str
    vehicle_vessel_tax: str
    total: str
    expires_at: datetime
    start_rule: str = "midnight"
    """``midnight`` (cover from 00:00 China time of ``start``) or ``on_payment``."""
    rate_basis: str | None = None
    """The floating-rate row applied (``A1``…``A6``, ``new``)."""
    tax_exemption: str | None = None
    """Why the tax is 0 (``new_energy``)."""


@dataclass(frozen=True, slots=True)
class Flow:
    """One renewal, as stored."""

    renewal_id: str
    vid: str
    stage: Stage
    old_end: date | None
    """The end of the term being renewed (the new one starts the day after)."""
    intent_id: str
    """The car's request that moved the flow last (its updates name it)."""
    quotes: tuple[QuoteOffer, ...] = ()
    chosen: str | None = None
    bind_key: str | None = None
    """The idempotency key of the bind: the consent's intent id."""
    order_id: str | None = None
    insurer_code: str | None = None
    payment_url: str | None = None
    amount: str | None = None
    new_end: date | None = None
    message: str | None = None
    history: tuple[str, ...] = field(default=())
    """Stages passed through, oldest first (for the fleet and for diagnosis)."""
    start_day: date | None = None
    """The day the new term must start (the day after ``old_end``: a car still covered),
    or None: the earliest start the insurer allows (a lapsed car, or one never insured)."""
    new_starts_at: datetime | None = None
    """The instant the issued term begins (it may be later than asked: see above)."""
    reason: str | None = None
    """A stable code for a failed or not-renewed flow (the car words it)."""

    def to(self, stage: Stage, **changes: object) -> "Flow":
        """This flow moved to ``stage`` with ``changes``."""
        return replace(self, stage=stage, history=(*self.history, stage.value), **changes)  # type: ignore[arg-type]


def start(
    renewal_id: str, vid: str, intent_id: str, old_end: date | None, *, covered: bool = True
) -> Flow:
    """A new flow asking for quotes; ``covered``: the old term still runs (or is yet to
    begin), so the new one must follow it without a gap."""
    start_day = calendar.renewal_start(old_end) if covered and old_end is not None else None
    return Flow(renewal_id, vid, Stage.QUOTING, old_end, intent_id, history=("quoting",),
                start_day=start_day)  # fmt: skip


def renewal_id_for(intent_id: str) -> str:
    """The flow started by intent ``intent_id`` (deterministic: a re-run finds it again)."""
    return f"r_{intent_id[:24]}"


def quotes_ready(flow: Flow, offers: list[QuoteOffer]) -> Flow:
    """The insurers answered (some may not have): the driver can compare."""
    if flow.stage is not Stage.QUOTING:
        return flow  # a late or repeated answer changes nothing
    if not offers:
        return failed(flow, "no_quotes", "no insurer could quote now; try again later")
    if flow.start_day is not None:
        offers = [o for o in offers if o.start == flow.start_day]
        if not offers:
            return failed(flow, "no_gapless_quote", "no quote starts when the current cover ends")
    # The CTPL price is the same everywhere: cover that starts sooner first, then by name.
    ranked = sorted(offers, key=lambda o: (Decimal(o.total), o.start_rule != "on_payment",
                                           o.start, o.insurer_code))  # fmt: skip
    return flow.to(Stage.QUOTES, quotes=tuple(ranked))


def failed(flow: Flow, reason: str, message: str) -> Flow:
    """``flow`` ended without a renewal, for ``reason`` (a stable code)."""
    return flow.to(Stage.FAILED, reason=reason, message=message[:256])


def accept(flow: Flow, intent_id: str, quote_id: str | None, now: datetime) -> Flow:
    """The driver's consent naming a quote; raise FlowError when it cannot be taken."""
    if flow.stage in (Stage.BINDING, Stage.AWAITING_PAYMENT) and (
        flow.bind_key == intent_id or flow.chosen == quote_id
    ):
        return flow  # the same consent (or the same choice) again: already under way
    if flow.stage in (Stage.BINDING, Stage.AWAITING_PAYMENT):
        raise FlowError("renewal_under_way", "another quote is already being paid for")
    if flow.stage is not Stage.QUOTES:
        raise FlowError("no_quotes", f"no quotes to accept (renewal is {flow.stage.value})")
    quote = next((q for q in flow.quotes if q.quote_id == quote_id), None)
    if quote is None:
        raise FlowError("unknown_quote", "that quote was not offered to this vehicle")
    if now >= quote.expires_at:
        raise FlowError("quote_expired", "the quote has expired; ask for new quotes")
    return flow.to(
        Stage.BINDING,
        intent_id=intent_id,
        chosen=quote.quote_id,
        bind_key=intent_id,
        insurer_code=quote.insurer_code,
        amount=quote.total,
    )


def bound(flow: Flow, order_id: str, payment_url: str, amount: str) -> Flow:
    """The insurer took the bind: the driver pays on a phone."""
    if flow.stage is not Stage.BINDING:
        return flow
    return flow.to(
        Stage.AWAITING_PAYMENT, order_id=order_id, payment_url=payment_url, amount=amount
    )


def bind_failed(flow: Flow, message: str, reason: str = "insurer_refused") -> Flow:
    """The insurer refused the bind for good (an expired quote, say)."""
    if flow.stage is not Stage.BINDING:
        return flow
    return failed(flow, reason, message)


def paid(
    flow: Flow, order_id: str, start_day: date, end_day: date, starts_at: datetime | None = None
) -> Flow:
    """The insurer's webhook: the order is paid and the new policy issued (from
    ``starts_at``, else 00:00 China time of ``start_day``)."""
    if flow.stage is Stage.ISSUED and flow.order_id == order_id:
        return flow  # the webhook again
    if flow.order_id != order_id or flow.stage not in (Stage.AWAITING_PAYMENT, Stage.BINDING):
        raise FlowError("unknown_order", "no renewal awaits payment for that order")
    if end_day < start_day:
        return failed(flow, "bad_policy", f"the new term ends {end_day}, before {start_day}")
    if flow.old_end is not None and start_day <= flow.old_end:
        return failed(flow, "overlap", f"the new term starts {start_day}, not after {flow.old_end}")
    begins = calendar.start_instant(start_day, starts_at)
    return flow.to(Stage.ISSUED, new_end=end_day, new_starts_at=begins, payment_url=None)


def check(flow: Flow, intent_id: str) -> Flow:
    """ "Already renewed elsewhere": look at the sources again now."""
    return flow.to(Stage.CHECKING, intent_id=intent_id)


def checked(flow: Flow, new_end: date | None) -> Flow:
    """The sources answered: a newer term (``new_end``) or none."""
    if flow.stage is not Stage.CHECKING:
        return flow
    if new_end is not None and (flow.old_end is None or new_end > flow.old_end):
        return flow.to(Stage.RENEWED_ELSEWHERE, new_end=new_end)
    return flow.to(
        Stage.NOT_RENEWED, reason="not_found", message="no newer policy found at the sources yet"
    )


def decline(flow: Flow, intent_id: str) -> Flow:
    """The driver declined: the flow ends (an unpaid order lapses at the insurer)."""
    if flow.stage not in (Stage.QUOTES, Stage.AWAITING_PAYMENT, Stage.QUOTING):
        return flow
    return flow.to(Stage.DECLINED, intent_id=intent_id)


TERMINAL: Final = frozenset(
    {Stage.ISSUED, Stage.RENEWED_ELSEWHERE, Stage.NOT_RENEWED, Stage.DECLINED, Stage.FAILED}
)


def to_json(flow: Flow) -> str:
    """The flow as stored (JSON text)."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(asdict(flow)), ensure_ascii=False, separators=(",", ":"))


def from_json(text: str) -> Flow:
    """A stored flow back (raise ValueError/KeyError on a corrupt row)."""
    d = json.loads(text)

    def day(v: str | None) -> date | None:
        return None if v is None else date.fromisoformat(v)

    quotes = tuple(
        QuoteOffer(
            q["quote_id"], q["insurer_code"], q["insurer_name"], date.fromisoformat(q["start"]),
            date.fromisoformat(q["end"]), q["ctpl"], q["floating_rate"],
            q["vehicle_vessel_tax"], q["total"], datetime.fromisoformat(q["expires_at"]),
            q.get("start_rule", "midnight"), q.get("rate_basis"), q.get("tax_exemption"),
        )
        for q in d["quotes"]
    )  # fmt: skip
    # Flows stored before a field existed read it as its default (``start_day``: the day
    # after ``old_end``, as every flow then asked).
    old_end = day(d["old_end"])
    start_day = day(d["start_day"]) if "start_day" in d else (
        None if old_end is None else calendar.renewal_start(old_end)
    )  # fmt: skip
    starts_at = d.get("new_starts_at")
    return Flow(
        renewal_id=d["renewal_id"], vid=d["vid"], stage=Stage(d["stage"]),
        old_end=old_end, intent_id=d["intent_id"], quotes=quotes,
        chosen=d["chosen"], bind_key=d["bind_key"], order_id=d["order_id"],
        insurer_code=d["insurer_code"], payment_url=d["payment_url"], amount=d["amount"],
        new_end=day(d["new_end"]), message=d["message"], history=tuple(d["history"]),
        start_day=start_day, reason=d.get("reason"),
        new_starts_at=None if starts_at is None else datetime.fromisoformat(starts_at),
    )  # fmt: skip
