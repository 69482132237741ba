"""The renewal flow of one vehicle as a persisted state machine. Pure: events in, effects out.

    (none) ──quote──▶ QUOTING ──quotes──▶ QUOTES ──accept(quote)──▶ BINDING
    BINDING ──bound──▶ AWAITING_PAYMENT ──paid (insurer webhook)──▶ ISSUED
    any open state ──already_renewed──▶ CHECKING ──found──▶ RENEWED_ELSEWHERE
                                                  └─none──▶ NOT_RENEWED
    QUOTES / AWAITING_PAYMENT ──decline──▶ DECLINED

Every step is safe to repeat: the shell persists the new ``Flow`` with the effects'
results, and a restart re-runs the step of a flow left in QUOTING, BINDING or CHECKING.
A bind is keyed by the consent's ``intent_id`` at the insurer (one order, one charge,
however often it is retried); a payment is taken once per order; the new term must
start the day after the old one ends (no gap, no overlap), or the flow fails.
"""

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
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
    """A request the flow refuses; ``code`` is stable (also sent to the car)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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

    def to(self, stage: Stage, **changes: object) -> "Flow":
        """This flow moved to ``stage`` with ``changes``."""
        return replace(self, stage=stage, history=(*self.history, stage.value), **changes)  # type: ignore[arg-type]


def start(renewal_id: str, vid: str, intent_id: str, old_end: date | None) -> Flow:
    """A new flow asking for quotes."""
    return Flow(renewal_id, vid, Stage.QUOTING, old_end, intent_id, history=("quoting",))


def renewal_id_for(intent_id: str) -> str:
    """The flow started by intent ``intent_id`` (deterministic: a re-run finds it again)."""
    return f"r_{intent_id[:24]}"


def quotes_ready(flow: Flow, offers: list[QuoteOffer]) -> Flow:
    """The insurers answered (some may not have): the driver can compare."""
    if flow.stage is not Stage.QUOTING:
        return flow  # a late or repeated answer changes nothing
    if not offers:
        return flow.to(Stage.FAILED, message="no insurer could quote now; try again later")
    if flow.old_end is not None:
        start_day = calendar.renewal_start(flow.old_end)
        offers = [o for o in offers if o.start == start_day]
        if not offers:
            return flow.to(Stage.FAILED, message="no quote starts when the current cover ends")
    return flow.to(Stage.QUOTES, quotes=tuple(sorted(offers, key=lambda o: o.total)))


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


def bind_failed(flow: Flow, message: str) -> Flow:
    """The insurer refused the bind for good (an expired quote, say)."""
    if flow.stage is not Stage.BINDING:
        return flow
    return flow.to(Stage.FAILED, message=message[:256])


def paid(flow: Flow, order_id: str, start_day: date, end_day: date) -> Flow:
    """The insurer's webhook: the order is paid and the new policy issued."""
    if flow.stage is Stage.ISSUED and flow.order_id == order_id:
        return flow  # the webhook again
    if flow.order_id != order_id or flow.stage not in (Stage.AWAITING_PAYMENT, Stage.BINDING):
        raise FlowError("unknown_order", "no renewal awaits payment for that order")
    if flow.old_end is not None and start_day != calendar.renewal_start(flow.old_end):
        return flow.to(
            Stage.FAILED,
            message=f"the new term starts {start_day}, not the day after {flow.old_end}",
        )
    return flow.to(Stage.ISSUED, new_end=end_day, payment_url=None)


def check(flow: Flow, intent_id: str) -> Flow:
    """ "Already renewed elsewhere": look at the sources again now."""
    return flow.to(Stage.CHECKING, intent_id=intent_id)


def checked(flow: Flow, new_end: date | None) -> Flow:
    """The sources answered: a newer term (``new_end``) or none."""
    if flow.stage is not Stage.CHECKING:
        return flow
    if new_end is not None and (flow.old_end is None or new_end > flow.old_end):
        return flow.to(Stage.RENEWED_ELSEWHERE, new_end=new_end)
    return flow.to(Stage.NOT_RENEWED, message="no newer policy found at the sources yet")


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
        )
        for q in d["quotes"]
    )  # fmt: skip
    return Flow(
        renewal_id=d["renewal_id"], vid=d["vid"], stage=Stage(d["stage"]),
        old_end=day(d["old_end"]), intent_id=d["intent_id"], quotes=quotes,
        chosen=d["chosen"], bind_key=d["bind_key"], order_id=d["order_id"],
        insurer_code=d["insurer_code"], payment_url=d["payment_url"], amount=d["amount"],
        new_end=day(d["new_end"]), message=d["message"], history=tuple(d["history"]),
    )  # fmt: skip
