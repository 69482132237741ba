"""The insurer and look-up adapters a worker runs renewals with, built from its config.

They fit the source clients of ``cloud.sources`` (httpx, retries, a breaker per source)
to the ports ``cloud.renewal_ports`` defines, so the renewal flow never sees HTTP.
"""

from dataclasses import replace
from datetime import date

from agent.protocol import calendar

from .config import CloudConfig
from .renewal_flow import QuoteOffer
from .renewal_ports import (
    Insurer,
    InsurerOrder,
    IssuedPolicy,
    Lookup,
    LookupResult,
    Order,
    SourceFailure,
    VehicleFacts,
)
from .source_registry import SourceRegistry
from .sources import (
    InsurerClient,
    SourceConfig,
    SourceError,
    SourcesConfig,
)
from .tariff import Vehicle

PERMANENT = frozenset({"not_found", "conflict", "gone", "refused", "invalid"})
"""Source failures that retrying cannot mend (an expired or unknown quote, say)."""


class InsurerAdapter:
    """One insurer's quote and bind, as the renewal flow asks for them."""

    def __init__(self, code: str, client: InsurerClient) -> None:
        self.code = code
        self.client = client

    async def quote(self, facts: VehicleFacts, vehicle: Vehicle, start: date | None) -> QuoteOffer:
        """A quote for the term starting on ``start`` (None: the earliest the insurer
        allows); raise SourceFailure."""
        if facts.plate is None:
            raise SourceFailure("no plate to quote", code="vehicle_facts_unavailable")
        try:
            q = await self.client.quote(facts.plate, facts.vin, vehicle, start=start)
        except SourceError as exc:
            raise _failure(exc) from exc
        p = q.premium
        return QuoteOffer(
            quote_id=q.quote_id, insurer_code=q.insurer_code, insurer_name=q.insurer_name,
            start=q.start, end=q.end, ctpl=f"{p.ctpl:.2f}", floating_rate=f"{p.floating_rate:.2f}",
            vehicle_vessel_tax=f"{p.vehicle_vessel_tax:.2f}", total=f"{p.total:.2f}",
            expires_at=q.expires_at, start_rule=q.start_rule, rate_basis=p.row,
            tax_exemption=p.tax_exemption,
        )  # fmt: skip

    async def bind(self, quote_id: str, idempotency_key: str) -> Order:
        """Bind the quote; the same key again gives the same order. Raise SourceFailure."""
        try:
            order = await self.client.bind(quote_id, idempotency_key)
        except SourceError as exc:
            raise _failure(exc) from exc
        return Order(order.order_id, order.payment_url, f"{order.amount:.2f}")

    async def order(self, order_id: str) -> InsurerOrder:
        """The order as this insurer's record holds it; raise SourceFailure."""
        try:
            o = await self.client.order(order_id)
        except SourceError as exc:
            raise _failure(exc) from exc
        p = o.policy
        issued = None if p is None else IssuedPolicy(
            p.policy_no, p.insurer_code, p.insurer_name, p.plate, p.start, p.end, p.starts_at,
            p.vin,
        )  # fmt: skip
        return InsurerOrder(o.order_id, o.quote_id, f"{o.amount:.2f}", o.status == "paid", issued)


def _failure(exc: SourceError) -> SourceFailure:
    """A source client's error as the renewal flow's (its code: the source's, else the reason)."""
    return SourceFailure(str(exc), permanent=exc.reason in PERMANENT, code=exc.code or exc.reason)


class LookupAdapter:
    """The aggregated policy of a vehicle, asked of every source now."""

    def __init__(self, registry: SourceRegistry) -> None:
        self.registry = registry

    async def refresh(self, facts: VehicleFacts) -> LookupResult:
        """Force a look-up round: the term in force and a next term bought, if any."""
        found = await self.registry.refresh(facts.plate, facts.vin, force=True)
        record = found.record(facts.vid)
        if record is not None and record.override == "renewal_pending":
            record = replace(record, override=None)  # the next term says so, below
        term = found.renewal
        current = found.current
        if term is None and current is not None:
            begins = calendar.start_instant(current.policy.start, current.policy.starts_at)
            if found.decided_at < begins:
                term, record = current, None  # the only term known has not begun: a next one
        nxt = None
        if term is not None:
            p = term.policy
            nxt = IssuedPolicy(p.policy_no, p.insurer_code, p.insurer_name, p.plate, p.start,
                               p.end, p.starts_at)  # fmt: skip
        return LookupResult(record, nxt)

    async def vehicle(self, facts: VehicleFacts) -> tuple[str, Vehicle]:
        """The registered plate and facts from the national platform; raise SourceFailure."""
        try:
            found = await self.registry.vehicle(facts.plate, facts.vin)
        except SourceError as exc:
            raise _failure(exc) from exc
        return found.plate, found.vehicle


def sources_config(config: CloudConfig) -> SourcesConfig | None:
    """The source clients' configuration from the cloud's; None without sources."""
    sources = [SourceConfig(name=i.code, kind="insurer", base_url=i.url) for i in config.insurers]
    if config.national_url is not None:
        sources.append(SourceConfig(name="national", kind="national", base_url=config.national_url))
    return SourcesConfig(sources=tuple(sources)) if sources else None


def build_sources(config: CloudConfig) -> tuple[dict[str, Insurer], Lookup | None]:
    """The insurers (by code) and the aggregated look-up the config names."""
    cfg = sources_config(config)
    if cfg is None:
        return {}, None
    registry = SourceRegistry(cfg)
    insurers: dict[str, Insurer] = {
        i.code: InsurerAdapter(i.code, registry.insurer(i.code)) for i in config.insurers
    }
    return insurers, LookupAdapter(registry)
