"""Renewal orchestration: the shell that runs ``renewal_flow`` against insurers and sources.

Fed with recorded ``renewal.request`` intents (each exactly once: the store keeps one row
per intent id, marked processed after its step), with insurer webhooks, and at start
with whatever a crash left half done (unprocessed intents, flows in a resumable stage).
Every state change is stored before anything is told to the car; a policy issued by a
webhook is stored in the same transaction as the flow that issued it.

Quoting reads the vehicle's facts (region, kind, seats, displacement, fuel, claims record)
from the national platform, prices them with ``cloud.tariff`` and keeps only the quotes
at that price: the CTPL premium is the same at every insurer, so a quote off the tariff
is an insurer's error, dropped and counted. A car still covered renews without a gap; a
lapsed car, or one never insured, takes the earliest start each insurer allows (the
dates come from the CTPL calendar in China time, never from the UTC date).
"""

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from agent.protocol import calendar, messages
from agent.protocol.errors import ProtocolError

from . import insurer_directory, rate_limits, tariff
from . import renewal_flow as rf
from .handler import IntentRow
from .policy import PolicyRecord, mask_plate, mask_policy_no
from .renewal_flow import Flow, FlowError, QuoteOffer, Stage
from .renewal_ports import (
    Insurer,
    IssuedPolicy,
    Lookup,
    LookupResult,
    Notifier,
    SourceFailure,
    VehicleFacts,
)
from .store import Store

log = logging.getLogger(__name__)


def update_body(
    flow: Flow, vid: str, seq: int, now: datetime, error: FlowError | None = None
) -> messages.RenewalUpdate:
    """The ``renewal.update`` that tells the car where ``flow`` stands (or why not)."""
    quotes = tuple(
        messages.Quote(
            quote_id=q.quote_id, insurer_code=q.insurer_code, insurer_name=q.insurer_name,
            start=q.start, end=q.end, ctpl=q.ctpl, floating_rate=q.floating_rate,
            vehicle_vessel_tax=q.vehicle_vessel_tax, total=q.total, expires_at=q.expires_at,
            start_rule="on_payment" if q.start_rule == "on_payment" else None,
            rate_basis=q.rate_basis, tax_exemption="new_energy" if q.tax_exemption else None,
            claims_phone=insurer_directory.claims_phone(q.insurer_code),
        )
        for q in flow.quotes[:5]
    ) if flow.stage is Stage.QUOTES and error is None else ()  # fmt: skip
    paying = flow.stage is Stage.AWAITING_PAYMENT and error is None
    message = f"{error.code}: {error}" if error is not None else flow.message
    reason = error.code if error is not None else flow.reason
    return messages.RenewalUpdate(
        vid=vid,
        seq=seq,
        issued_at=now,
        renewal_id=flow.renewal_id,
        intent_id=flow.intent_id,
        stage="failed" if error is not None else flow.stage.value,
        quotes=quotes,
        payment_url=flow.payment_url if paying else None,
        amount=flow.amount if paying else None,
        new_end=flow.new_end,
        message=None if message is None else message[:256],
        new_starts_at=flow.new_starts_at if error is None else None,
        reason=None if reason is None else reason[:48],
        retry_after_s=(
            None
            if error is None or error.retry_after_s is None
            else min(86400, max(1, math.ceil(error.retry_after_s)))
        ),
    )


class RenewalService:
    """Runs renewal flows; one step at a time per vehicle."""

    def __init__(
        self,
        store: Store,
        insurers: dict[str, Insurer],
        lookup: Lookup | None,
        notifier: Notifier,
        now: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.insurers = insurers
        self.lookup = lookup
        self.notifier = notifier
        self.now = now
        self.counters: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, vid: str) -> asyncio.Lock:
        return self._locks.setdefault(vid, asyncio.Lock())

    async def resume(self) -> None:
        """Re-run the flows a crash left in a resumable stage (the caller claims intents).

        With several workers, a flow another live worker is stepping may be stepped here
        too: every step is idempotent (the bind is keyed, the order paid once).
        """
        for stage in sorted(rf.RESUMABLE):
            for flow in await self.store.flows("stage", (stage.value,)):
                async with self._lock(flow.vid):
                    await self._step(flow)

    async def refresh_policy(self, vid: str) -> str:
        """Re-query the sources for ``vid`` now; ``updated``, ``unchanged`` or ``unavailable``.

        An update is stored and pushed to the car; a failing source changes nothing.
        """
        facts = await self._facts(vid)
        if facts is None or self.lookup is None:
            self.counters["refresh.unavailable"] += 1
            return "unavailable"
        found = await self.lookup.refresh(facts)
        if found.record is None and found.next_term is None:
            self.counters["refresh.unavailable"] += 1
            return "unavailable"
        async with self._lock(vid):
            current = (await self.store.load_policies(vid)).get(vid)
            record = _with_next(found.record or current, found.next_term, vid, self.now())
            if record is None or record == current:
                self.counters["refresh.unchanged"] += 1
                return "unchanged"
            await self.store.put_policy(record)
        self.counters["refresh.updated"] += 1
        await self.notifier.policy_changed(record)
        return "updated"

    async def handle_intent(self, row: IntentRow) -> None:
        """Act on one recorded ``renewal.request`` (once: it is then marked processed)."""
        body = messages.decode(row.body)
        if not isinstance(body, messages.RenewalRequest):
            await self.store.mark_processed(row.vid, row.intent_id, self.now())
            return
        async with self._lock(row.vid):
            try:
                await self._act(row.vid, body)
            except FlowError as err:
                self.counters[f"refused.{err.code}"] += 1
                log.info("%s: renewal request refused: %s", row.vid, err)
                latest = await self._latest(row.vid)
                if latest is not None and latest.stage in rf.OPEN:
                    await self.notifier.renewal_changed(latest)  # what stands, unchanged
                else:
                    refused = latest or rf.start(
                        rf.renewal_id_for(body.intent_id), row.vid, body.intent_id, None
                    )
                    await self.notifier.renewal_changed(
                        replace(refused, intent_id=body.intent_id), err
                    )
            await self.store.mark_processed(row.vid, row.intent_id, self.now())

    async def _latest(self, vid: str) -> Flow | None:
        flows = await self.store.flows("vid", (vid,))
        return flows[0] if flows else None

    async def _limit_lookups(self, vid: str) -> None:
        """Raise FlowError ``rate_limited`` when ``vid`` asked for more source look-ups
        than ``rate_limits.LOOKUPS`` allows (this request included)."""
        now = self.now()
        rows = await self.store.recent_intents(
            vid, "renewal.request", now - rate_limits.LOOKUPS.per
        )
        times = []
        for row in rows:
            try:
                request = messages.decode(row.body)
            except ProtocolError:
                continue
            if isinstance(request, messages.RenewalRequest) and (
                request.action in rate_limits.LOOKUP_ACTIONS
            ):
                times.append(row.received_at)
        wait = rate_limits.retry_after(times, now)
        if wait is not None:
            raise FlowError("rate_limited", f"too many look-ups: retry after {wait:.0f} s",
                            retry_after_s=wait)  # fmt: skip

    async def _act(self, vid: str, body: messages.RenewalRequest) -> None:
        latest = await self._latest(vid)
        self.counters[f"request.{body.action}"] += 1
        if body.action == "quote":
            under_way = latest is not None and latest.stage in rf.OPEN - {Stage.QUOTING}
            if (
                latest is not None
                and under_way
                and (latest.stage is not Stage.QUOTES or self._quotes_live(latest))
            ):
                await self.notifier.renewal_changed(latest)  # already under way: say so
                return
            await self._limit_lookups(vid)
            flow = await self._new_flow(vid, body.intent_id)
            await self._save(flow)
            await self._step(flow)
        elif body.action == "accept":
            if latest is None:
                raise FlowError("no_quotes", "no quotes to accept: ask for quotes first")
            flow = rf.accept(latest, body.intent_id, body.quote_id, self.now())
            if flow != latest:
                await self._save(flow)
            await self._step(flow)
        elif body.action == "decline":
            if latest is not None:
                flow = rf.decline(latest, body.intent_id)
                if flow != latest:
                    await self._save(flow)
        elif body.action == "already_renewed":
            await self._limit_lookups(vid)
            base = latest if latest is not None and latest.stage not in rf.TERMINAL else None
            if base is None:
                base = await self._new_flow(vid, body.intent_id)
            flow = rf.check(base, body.intent_id)
            await self._save(flow)
            await self._step(flow)

    async def _new_flow(self, vid: str, intent_id: str) -> Flow:
        """A flow renewing what ``vid`` holds now: after the term it is covered by (or
        waits for), without a gap; the earliest start allowed when it is uncovered."""
        old = (await self.store.load_policies(vid)).get(vid)
        if old is None:
            return rf.start(rf.renewal_id_for(intent_id), vid, intent_id, None, covered=False)
        end = old.next_end or old.coverage_end
        covered = self.now() < calendar.coverage_end_instant(end)
        return rf.start(rf.renewal_id_for(intent_id), vid, intent_id, end, covered=covered)

    def _quotes_live(self, flow: Flow) -> bool:
        now = self.now()
        return any(q.expires_at > now for q in flow.quotes)

    async def _save(self, flow: Flow, policy: PolicyRecord | None = None) -> None:
        await self.store.save_flow(flow, self.now(), policy)
        await self.notifier.renewal_changed(flow)

    async def _step(self, flow: Flow) -> Flow:
        """Run the effect of ``flow``'s stage (quote, bind, check) and store the outcome."""
        if flow.stage is Stage.QUOTING:
            found = await self._quotes(flow)
            if isinstance(found, tariff.TariffError | SourceFailure):
                code = getattr(found, "code", None) or "quotes_unavailable"
                nxt = rf.failed(flow, code, str(found))
            else:
                nxt = rf.quotes_ready(flow, found)
        elif flow.stage is Stage.BINDING:
            nxt = await self._bind(flow)
        elif flow.stage is Stage.CHECKING:
            return await self._check(flow)
        else:
            return flow
        if nxt != flow:
            await self._save(nxt)
        return nxt

    async def _facts(self, vid: str) -> VehicleFacts | None:
        vin, plate = await self.store.vehicle_identity(vid)
        if vin is None:
            return None
        return VehicleFacts(vid, vin, plate)

    async def _quotes(self, flow: Flow) -> list[QuoteOffer] | tariff.TariffError | SourceFailure:
        """The insurers' quotes at the tariff's price, or why none can be had."""
        facts = await self._facts(flow.vid)
        if facts is None:
            self.counters["quote.no_identity"] += 1
            return []
        if self.lookup is None:
            self.counters["quote.no_vehicle_facts"] += 1
            return SourceFailure("no national platform to read the vehicle's facts from",
                                 code="vehicle_facts_unavailable")  # fmt: skip
        try:
            plate, vehicle = await self.lookup.vehicle(facts)
            price = tariff.premium(vehicle)
        except SourceFailure as exc:
            self.counters["quote.no_vehicle_facts"] += 1
            unknown = exc.code == "not_found"
            code = "vehicle_unknown" if unknown else "vehicle_facts_unavailable"
            return SourceFailure(str(exc), permanent=unknown, code=code)
        except tariff.TariffError as exc:
            self.counters[f"quote.refused.{exc.code}"] += 1
            return exc
        if facts.plate is None:  # a car never insured: the registry knows its plate
            await self.store.set_plate(facts.vid, plate)
            facts = replace(facts, plate=plate)
        answers = await asyncio.gather(
            *(insurer.quote(facts, vehicle, flow.start_day) for insurer in self.insurers.values()),
            return_exceptions=True,
        )
        offers: list[QuoteOffer] = []
        for code, answer in zip(self.insurers, answers, strict=True):
            if not isinstance(answer, QuoteOffer):
                self.counters[f"quote.failed.{code}"] += 1
                log.warning("quote from %s failed: %s", code, answer)
            elif (answer.ctpl, answer.vehicle_vessel_tax) != (
                tariff.money(price.ctpl),
                tariff.money(price.vehicle_vessel_tax),
            ):
                self.counters[f"quote.off_tariff.{code}"] += 1
                log.warning(
                    "quote from %s is off the tariff (ctpl %s, tax %s; tariff %s, %s)",
                    code, answer.ctpl, answer.vehicle_vessel_tax,
                    tariff.money(price.ctpl), tariff.money(price.vehicle_vessel_tax),
                )  # fmt: skip
            else:
                offers.append(answer)
        return offers

    async def _bind(self, flow: Flow) -> Flow:
        insurer = self.insurers.get(flow.insurer_code or "")
        if insurer is None or flow.chosen is None or flow.bind_key is None:
            return rf.bind_failed(flow, "the chosen insurer is not available")
        try:
            order = await insurer.bind(flow.chosen, flow.bind_key)
        except SourceFailure as exc:
            self.counters["bind.failed"] += 1
            if exc.permanent:
                return rf.bind_failed(flow, f"the insurer refused: {exc}")
            return flow  # stays BINDING: resumed (same key, same order) on the next start
        self.counters["bind.ok"] += 1
        return rf.bound(flow, order.order_id, order.payment_url, order.amount)

    async def _check(self, flow: Flow) -> Flow:
        facts = await self._facts(flow.vid)
        found = LookupResult(None, None)
        if facts is not None and self.lookup is not None:
            found = await self.lookup.refresh(facts)
        current = (await self.store.load_policies(flow.vid)).get(flow.vid)
        record = _with_next(found.record or current, found.next_term, flow.vid, self.now())
        end = None if record is None else (record.next_end or record.coverage_end)
        newer = end is not None and (flow.old_end is None or end > flow.old_end)
        nxt = rf.checked(flow, end if newer else None)
        if nxt.stage is Stage.RENEWED_ELSEWHERE and record is not None:
            await self._save(nxt, policy=record)
            await self.notifier.policy_changed(record)
        elif nxt != flow:
            await self._save(nxt)
        return nxt

    async def paid(self, code: str, order_id: str, told: IssuedPolicy) -> Flow:
        """Insurer ``code``'s webhook saying ``order_id`` is paid: issue the new term once.

        The webhook only says "look": the term issued is read from the insurer's own
        record of the order (``Insurer.order``), checked against the flow (the order is
        this insurer's, for the quote the driver chose, at its price, for this vehicle's
        VIN, a one-year term starting no earlier than quoted), and must equal what the
        webhook body claims. Raise FlowError: ``unknown_order`` (no flow awaits it),
        ``wrong_insurer`` (another insurer's order), ``order_unpaid``,
        ``order_unavailable`` (the insurer cannot be asked now: it retries),
        ``policy_mismatch`` (its record contradicts the flow), ``webhook_mismatch``
        (the body contradicts its record). A refusal stores nothing; a repeated webhook
        changes nothing and returns the issued flow.
        """
        flows = await self.store.flows("order", (order_id,))
        if not flows:
            raise FlowError("unknown_order", "no renewal awaits payment for that order")
        if flows[0].insurer_code != code:
            raise FlowError("wrong_insurer", "that order is not this insurer's")
        async with self._lock(flows[0].vid):
            flow = (await self.store.flows("order", (order_id,)))[0]
            if flow.stage is Stage.ISSUED:
                self.counters["webhook.repeated"] += 1
                return flow
            issued = await self._issued(flow, code, order_id)
            if (told.policy_no, told.start, told.end, told.starts_at) != (
                issued.policy_no,
                issued.start,
                issued.end,
                issued.starts_at,
            ):
                raise FlowError("webhook_mismatch", "the webhook contradicts the insurer's record")
            nxt = rf.paid(flow, order_id, issued.start, issued.end, issued.starts_at)
            if nxt == flow:
                self.counters["webhook.repeated"] += 1
                return flow
            if nxt.stage is not Stage.ISSUED:
                await self._save(nxt)
                return nxt
            current = (await self.store.load_policies(flow.vid)).get(flow.vid)
            record = _with_next(current, issued, flow.vid, self.now())
            assert record is not None
            await self._save(nxt, policy=record)
            self.counters["issued"] += 1
            await self.notifier.policy_changed(record)
            return nxt

    async def _issued(self, flow: Flow, code: str, order_id: str) -> IssuedPolicy:
        """The policy insurer ``code`` issued for ``order_id``, from its own record, checked
        against ``flow``; raise FlowError (see ``paid``)."""
        insurer = self.insurers.get(code)
        if insurer is None:
            raise FlowError("order_unavailable", "the insurer is not configured")
        try:
            order = await insurer.order(order_id)
        except SourceFailure as exc:
            raise FlowError("order_unavailable", f"the insurer's record: {exc}") from exc
        if not order.paid or order.policy is None:
            raise FlowError("order_unpaid", "the insurer's record shows no payment")
        p = order.policy
        quote = next((q for q in flow.quotes if q.quote_id == flow.chosen), None)
        vin, _ = await self.store.vehicle_identity(flow.vid)
        begins = calendar.start_instant(p.start, p.starts_at)
        problems = [
            what
            for what, bad in (
                ("order", order.order_id != order_id),
                ("quote", quote is None or order.quote_id != quote.quote_id),
                (
                    "amount",
                    quote is None or order.amount != quote.total or order.amount != flow.amount,
                ),
                ("insurer", p.insurer_code != code),
                ("vehicle", vin is None or p.vin != vin),
                ("start", quote is None or begins < calendar.start_instant(quote.start)),
                ("term", p.end != calendar.one_year_end(p.start)),
            )
            if bad
        ]
        if problems:
            raise FlowError(
                "policy_mismatch", "the insurer's record disagrees: " + ", ".join(problems)
            )
        return p


def _with_next(
    current: PolicyRecord | None, issued: IssuedPolicy | None, vid: str, now: datetime
) -> PolicyRecord | None:
    """``current`` with ``issued`` as its next term when it follows without a gap, else the
    issued term alone (bought after a lapse: ``pending`` until it starts)."""
    if issued is None:
        return current
    gapless = current is not None and issued.start_instant == calendar.coverage_end_instant(
        current.coverage_end
    )
    if current is None or not gapless:
        return PolicyRecord(
            vid=vid,
            insurer_code=issued.insurer_code,
            insurer_name=issued.insurer_name,
            policy_no_masked=mask_policy_no(issued.policy_no),
            coverage_start=issued.start,
            coverage_end=issued.end,
            source=issued.insurer_code.lower(),
            verified_at=now,
            plate_masked=mask_plate(issued.plate),
            starts_at=issued.starts_at,
        )
    return replace(
        current,
        override=None,
        next_insurer_code=issued.insurer_code,
        next_insurer_name=issued.insurer_name,
        next_policy_no_masked=mask_policy_no(issued.policy_no),
        next_end=issued.end,
    )
