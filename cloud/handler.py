"""The request handler: the worker's pure core.

Takes one received (topic, payload) and the current instant, checks it, and returns
the reply to publish. It holds every vehicle's counters in memory; ``dirty`` names
the vehicles whose counters changed since the caller last saved them. No I/O.

Checks, in order: topic shape → registered vehicle → envelope form → key id →
signature over the exact bytes → body schema → body vid = topic vid → body type
fits the topic → ``seq`` grows. The first failure becomes an ``error`` reply.

A ``status.request`` gets the current ``policy.state``. An intent (``renewal.request``
on up/renewal, ``vehicle.event`` on up/event) is queued in ``intents`` for the caller
to record, keyed by (vid, intent_id), in the same commit as the counters; its
``intent.receipt`` must be published only after that commit. A car re-sends an intent
(re-signed under a new ``seq``) until it holds the receipt, so the same intent_id may
arrive many times: the store keeps the first and the receipt is sent every time.
"""

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.protocol import envelope, messages, topics
from agent.protocol.errors import ProtocolError
from agent.protocol.keys import PublicKey

from .policy import PolicyRecord, StateContent, content_of, status_changes_at


@dataclass(slots=True)
class VehicleState:
    """What the cloud keeps per vehicle between requests."""

    kid: str
    key: PublicKey
    last_seq: int = 0
    """Highest request ``seq`` accepted from the car."""
    down_seq: int = 0
    """Highest ``seq`` the cloud has used towards the car."""
    version: int = 0
    """Version of the last policy.state issued; grows when its content changes."""
    content_key: str = ""
    """Digest of that version's content."""
    vin_digest: str | None = None
    """``agent.protocol.vin.vin_digest`` of the registered VIN, told in every state."""
    last_seen: datetime | None = None
    """When the cloud last accepted a request from the car (the fleet's data freshness)."""
    stored: tuple[int, int] = (0, 0)
    """(last_seq, down_seq) the store holds, or will once this worker's pending writes land:
    the base a write of these counters is conditional on (several workers share a store)."""

    def row(self, vid: str) -> "CounterRow":
        """A snapshot of the counters for the store, conditional on ``stored``.

        Taking it advances ``stored`` to the snapshot: the next snapshot builds on this one
        (writes of one worker land in order). If the write is refused (another worker wrote
        first), the caller reloads the vehicle from the store.
        """
        seen = None if self.last_seen is None else self.last_seen.isoformat()
        base, self.stored = self.stored, (self.last_seq, self.down_seq)
        return (vid, self.last_seq, self.down_seq, self.version, self.content_key, seen, *base)

    def adopt(self, last_seq: int, down_seq: int, version: int, content_key: str) -> None:
        """Take the counters another worker stored (they are the truth from now on)."""
        self.last_seq, self.down_seq = last_seq, down_seq
        self.version, self.content_key = version, content_key
        self.stored = (last_seq, down_seq)


CounterRow = tuple[str, int, int, int, str, str | None, int, int]
"""A vehicle's counters to store: vid, last_seq, down_seq, version, content_key, last_seen,
then the (last_seq, down_seq) the write expects to replace (compare-and-set)."""


@dataclass(frozen=True, slots=True)
class IntentRow:
    """An intent to record once per (vid, intent_id)."""

    vid: str
    intent_id: str
    type: str
    body: bytes
    """The verified body bytes, as the car signed them."""
    seq: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Reply:
    """A body to seal and publish on ``topic``."""

    topic: str
    body: (
        messages.PolicyState | messages.ErrorReply | messages.IntentReceipt | messages.RenewalUpdate
    )
    retain: bool
    again: "Callable[[], Reply | None] | None" = field(default=None, compare=False)
    """For a cloud-initiated message: issue it afresh (another worker took its seq)."""

    @property
    def vid(self) -> str:
        """The vehicle the reply goes to."""
        return self.body.vid


class Rejected(Exception):
    """A request that gets an ``error`` reply (internal to the handler)."""

    def __init__(self, code: str, message: str, reply_to: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reply_to = reply_to


_UP_KIND: dict[str, str] = {
    "status.request": "status",
    "renewal.request": "renewal",
    "vehicle.event": "event",
}
"""The one up topic kind each car body type may arrive on."""


def _content_key(content: StateContent) -> str:
    return hashlib.sha256(repr(content).encode()).hexdigest()[:32]


@dataclass
class RequestHandler:
    """Decides the reply to each request; see the module docstring for the checks."""

    vehicles: dict[str, VehicleState]
    policies: dict[str, PolicyRecord]
    fresh_for: timedelta = timedelta(days=1)
    expiring_within_days: int = 30
    dirty: set[str] = field(default_factory=set)
    intents: list[IntentRow] = field(default_factory=list)
    """Intents accepted since the caller last took them; record before sending replies."""
    counters: Counter[str] = field(default_factory=Counter)
    _contents: dict[str, tuple[datetime, PolicyRecord | None, StateContent, str, datetime]] = field(
        default_factory=dict, init=False, repr=False
    )
    """Per vid: the content told for a record, valid until the first field (from the
    last), and its digest."""

    def handle(self, topic: str, payload: bytes, now: datetime) -> Reply | None:
        """The reply to one request, or None when there is nowhere to send one."""
        try:
            parsed = topics.parse(topic)
        except ProtocolError:
            self.counters["rejected.bad_topic"] += 1
            return None
        vehicle = self.vehicles.get(parsed.vid)
        if parsed.direction != "up" or vehicle is None:
            self.counters[
                "rejected.unknown_vehicle" if vehicle is None else "rejected.bad_topic"
            ] += 1
            return None
        try:
            reply = self._accept(parsed, vehicle, topic, payload, now)
        except Rejected as rej:
            self.counters[f"rejected.{rej.code}"] += 1
            return self._error(parsed.vid, vehicle, rej, now)
        self.counters["accepted"] += 1
        return reply

    def _accept(
        self, parsed: topics.Topic, vehicle: VehicleState, topic: str, payload: bytes, now: datetime
    ) -> Reply:
        try:
            env = envelope.parse(payload)
            if env.kid != vehicle.kid:
                raise Rejected("unknown_key", "envelope kid is not this vehicle's key")
            body_bytes = env.verify(topic, vehicle.key)
            body = messages.decode(body_bytes)
        except ProtocolError as exc:
            raise Rejected(exc.code, str(exc)) from exc
        if body.vid != parsed.vid:
            raise Rejected("vid_mismatch", "body vid differs from topic vid", body.seq)
        if _UP_KIND.get(body.type) != parsed.kind:
            raise Rejected(
                "unsupported_type", f"{body.type} is not served on {parsed.kind}", body.seq
            )
        if body.seq <= vehicle.last_seq:
            raise Rejected("replay", f"seq {body.seq} is not above {vehicle.last_seq}", body.seq)
        vehicle.last_seq = body.seq
        vehicle.last_seen = now
        if isinstance(body, messages.RenewalRequest | messages.VehicleEvent):
            return self._receipt(parsed.vid, vehicle, body, body_bytes, now)
        return self._state(parsed.vid, vehicle, now, reply_to=body.seq)

    def _receipt(
        self,
        vid: str,
        vehicle: VehicleState,
        body: messages.Intent,
        body_bytes: bytes,
        now: datetime,
    ) -> Reply:
        self.intents.append(IntentRow(vid, body.intent_id, body.type, body_bytes, body.seq, now))
        vehicle.down_seq += 1
        self.dirty.add(vid)
        receipt = messages.IntentReceipt(
            vid=vid,
            seq=vehicle.down_seq,
            reply_to=body.seq,
            intent_id=body.intent_id,
            issued_at=now,
        )
        return Reply(topics.down(vid, "receipt"), receipt, retain=False)

    def set_policy(self, vid: str, record: PolicyRecord | None) -> None:
        """Serve ``record`` (None: no policy) for ``vid`` from now on."""
        self._contents.pop(vid, None)
        if record is None:
            self.policies.pop(vid, None)
        else:
            self.policies[vid] = record

    def push_state(self, vid: str, now: datetime) -> Reply | None:
        """An unsolicited ``policy.state`` for ``vid`` (its policy changed); None if unknown."""
        vehicle = self.vehicles.get(vid)
        if vehicle is None:
            return None
        self._contents.pop(vid, None)
        return self._state(vid, vehicle, now, reply_to=None)

    def push(
        self, vid: str, kind: str, build: Callable[[int], messages.RenewalUpdate]
    ) -> Reply | None:
        """A cloud-initiated message to ``vid`` on down/``kind``, under its next seq."""
        vehicle = self.vehicles.get(vid)
        if vehicle is None:
            return None
        vehicle.down_seq += 1
        self.dirty.add(vid)
        return Reply(topics.down(vid, kind), build(vehicle.down_seq), retain=False)  # type: ignore[arg-type]

    def _state(self, vid: str, vehicle: VehicleState, now: datetime, reply_to: int | None) -> Reply:
        content, key = self._content(vid, now)
        if key != vehicle.content_key:
            vehicle.version += 1
            vehicle.content_key = key
        vehicle.down_seq += 1
        self.dirty.add(vid)
        # The cloud's own validated content and clock: built unchecked (the car checks).
        body = messages.PolicyState.unchecked(
            vid=vid,
            seq=vehicle.down_seq,
            version=vehicle.version,
            issued_at=now,
            fresh_until=now + self.fresh_for,
            reply_to=reply_to,
            status=content.status,
            insurer_code=content.insurer_code,
            insurer_name=content.insurer_name,
            policy_no_masked=content.policy_no_masked,
            coverage_start=content.coverage_start,
            coverage_end=content.coverage_end,
            source=content.source,
            verified_at=content.verified_at,
            plate_masked=content.plate_masked,
            claims_phone=content.claims_phone,
            vin_digest=vehicle.vin_digest,
            next_coverage_end=content.next_coverage_end,
            starts_at=content.starts_at,
            insurer_address=content.insurer_address,
        )
        return Reply(topics.down(vid, "policy"), body, retain=True)

    def _content(self, vid: str, now: datetime) -> tuple[StateContent, str]:
        # A status changes only at 00:00 China time or at a term's start instant, so the
        # content is cached until the next of those (``status_changes_at``).
        record = self.policies.get(vid)
        cached = self._contents.get(vid)
        if cached is not None and cached[1] is record and cached[4] <= now < cached[0]:
            return cached[2], cached[3]
        content = content_of(record, now, self.expiring_within_days)
        key = _content_key(content)
        self._contents[vid] = (status_changes_at(record, now), record, content, key, now)
        return content, key

    def _error(self, vid: str, vehicle: VehicleState, rej: Rejected, now: datetime) -> Reply:
        vehicle.down_seq += 1
        self.dirty.add(vid)
        body = messages.ErrorReply(
            vid=vid,
            seq=vehicle.down_seq,
            reply_to=rej.reply_to,
            code=rej.code,
            message=str(rej)[:256],
        )
        return Reply(topics.down(vid, "error"), body, retain=False)
