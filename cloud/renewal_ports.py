"""The ports renewals run through: what the renewal service asks of insurers, of the
policy look-up and of the cars' notifier, and the plain values they answer with.

``cloud.sources_config`` fits the HTTP source clients to these; ``cloud.renewals`` uses
them and never sees HTTP.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from agent.protocol import calendar

from . import tariff
from .policy import PolicyRecord
from .renewal_flow import Flow, FlowError, QuoteOffer


@dataclass(frozen=True, slots=True)
class VehicleFacts:
    """Which vehicle (the cloud's record): what the sources are asked about. The plate
    is None until a policy or the national platform's registry gave it (a car never
    insured)."""

    vid: str
    vin: str
    plate: str | None


@dataclass(frozen=True, slots=True)
class Order:
    """An insurer's answer to a bind."""

    order_id: str
    payment_url: str
    amount: str


@dataclass(frozen=True, slots=True)
class IssuedPolicy:
    """The policy an insurer issued for a paid order."""

    policy_no: str
    insurer_code: str
    insurer_name: str
    plate: str
    start: date
    end: date
    starts_at: datetime | None = None
    """The exact instant cover begins when not 00:00 China time of ``start``."""
    vin: str | None = None
    """The insured vehicle's VIN, as the insurer's own record gives it."""

    @property
    def start_instant(self) -> datetime:
        """When the policy's cover begins."""
        return calendar.start_instant(self.start, self.starts_at)


@dataclass(frozen=True, slots=True)
class InsurerOrder:
    """An order as the insurer's own record holds it (``GET /v1/orders/{id}``)."""

    order_id: str
    quote_id: str
    amount: str
    paid: bool
    policy: IssuedPolicy | None


class SourceFailure(Exception):
    """A source or insurer call that failed; ``permanent`` when retrying cannot help;
    ``code`` the source's own error code, if it gave one (``not_found``)."""

    def __init__(self, message: str, *, permanent: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


class Insurer(Protocol):
    """One insurer's quote and bind API."""

    code: str

    async def quote(
        self, facts: VehicleFacts, vehicle: tariff.Vehicle, start: date | None
    ) -> QuoteOffer:
        """A quote for the term starting on ``start`` (None: the earliest the insurer
        allows); raise SourceFailure."""
        ...

    async def bind(self, quote_id: str, idempotency_key: str) -> Order:
        """Bind the quote (the same key again: the same order); raise SourceFailure."""
        ...

    async def order(self, order_id: str) -> InsurerOrder:
        """The order as the insurer's record holds it, with its policy once issued;
        raise SourceFailure."""
        ...


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What the sources say now: the term in force (as a record) and a next term bought."""

    record: PolicyRecord | None
    next_term: IssuedPolicy | None


class Lookup(Protocol):
    """The aggregated, freshly re-queried policy of a vehicle."""

    async def refresh(self, facts: VehicleFacts) -> LookupResult:
        """Ask the sources now (a failing source never makes a lapse: see cloud.aggregate)."""
        ...

    async def vehicle(self, facts: VehicleFacts) -> tuple[str, tariff.Vehicle]:
        """The registered plate and the facts the national platform records (region,
        kind, seats, displacement, fuel, claims record); raise SourceFailure."""
        ...


class Notifier(Protocol):
    """What the service tells the cars (the worker publishes after its commit)."""

    async def renewal_changed(self, flow: Flow, error: FlowError | None = None) -> None:
        """Send the car a ``renewal.update`` for ``flow`` (or for a refused request)."""
        ...

    async def policy_changed(self, record: PolicyRecord) -> None:
        """Serve ``record`` from now on and push the car a new ``policy.state``."""
        ...
