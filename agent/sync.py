"""The agent's sync state machine: events in, commands out. Pure, no I/O.

One session with the broker goes OFFLINE → SUBSCRIBING → SYNCING → LIVE:

- ``Connected``: subscribe again whatever ``session_present`` says (a broker that
  restarted or expired the session has forgotten the subscription, and one that says it
  kept it costs one SUBSCRIBE to doubt).
- ``Subscribed``: ask for the current state first; pushes missed while offline are
  never relied on.
- ``StateAnswered`` (or ``AskTimedOut``: the cloud may be slow; intents must not wait
  for ever): drain the outbox, renewal intents before vehicle events, oldest first.
- LIVE: a queued intent is sent at once; ``RetryDue`` sends every intent still without
  a receipt again. A receipt ends an intent; a PUBACK never does.

Intents queued while not LIVE wait in ``pending``. ``LinkLost`` returns to OFFLINE from
any session phase and keeps every intent without a receipt. An event that makes no sense
in the current phase (a receipt while offline, a second ``Connected``, anything after
``Stop``) raises SyncError: it means the shell is wrong, not the network.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from .errors import AgentError


class SyncError(AgentError):
    """An event that cannot happen in the current phase (a bug in the shell)."""


class Phase(Enum):
    """Where the session is."""

    OFFLINE = "offline"
    SUBSCRIBING = "subscribing"
    SYNCING = "syncing"
    LIVE = "live"
    STOPPED = "stopped"


URGENT_TYPES: Final = frozenset({"renewal.request"})
"""Intent types drained before the others."""


@dataclass(frozen=True, slots=True)
class Connected:
    """A session with the broker is up; ``session_present`` as the CONNACK said."""

    session_present: bool


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The down-topic subscription is granted."""


@dataclass(frozen=True, slots=True)
class StateAnswered:
    """A verified state answering this session's status request was accepted."""


@dataclass(frozen=True, slots=True)
class AskTimedOut:
    """This session's first status request went unanswered for its wait."""


@dataclass(frozen=True, slots=True)
class IntentQueued:
    """An intent is durably in the outbox."""

    intent_id: str
    type: str


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    """A verified receipt for ``intent_id`` was stored."""

    intent_id: str


@dataclass(frozen=True, slots=True)
class RetryDue:
    """Intents sent this session have waited long enough for their receipts."""


@dataclass(frozen=True, slots=True)
class LinkLost:
    """The session ended (dropped, kicked, or closed to reconnect)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """The agent is stopping."""


Event = (
    Connected
    | Subscribed
    | StateAnswered
    | AskTimedOut
    | IntentQueued
    | ReceiptReceived
    | RetryDue
    | LinkLost
    | Stop
)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to the car's down topics."""


@dataclass(frozen=True, slots=True)
class AskStatus:
    """Send a status request."""


@dataclass(frozen=True, slots=True)
class SendIntent:
    """Sign (under a fresh seq) and publish the outbox intent ``intent_id``."""

    intent_id: str


Command = Subscribe | AskStatus | SendIntent


@dataclass
class Sync:
    """The machine; feed it events with ``handle`` and carry out the commands it returns.

    ``pending`` maps every intent without a receipt to its type, in queue order;
    ``sent`` holds those sent in this session.
    """

    phase: Phase = Phase.OFFLINE
    pending: dict[str, str] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)
    session_present: bool | None = None

    def handle(self, event: Event) -> list[Command]:
        """The commands ``event`` calls for, in order; raise SyncError when it makes no sense."""
        if self.phase is Phase.STOPPED:
            raise SyncError(f"{type(event).__name__} after Stop")
        match event:
            case Stop():
                self.phase = Phase.STOPPED
                return []
            case IntentQueued(intent_id, kind):
                if intent_id in self.pending:
                    raise SyncError(f"intent {intent_id} queued twice")
                self.pending[intent_id] = kind
                return self._send([intent_id]) if self.phase is Phase.LIVE else []
            case Connected(session_present):
                self._expect(Phase.OFFLINE, event)
                self.phase, self.session_present = Phase.SUBSCRIBING, session_present
                return [Subscribe()]
            case Subscribed():
                self._expect(Phase.SUBSCRIBING, event)
                self.phase = Phase.SYNCING
                return [AskStatus()]
            case StateAnswered() | AskTimedOut():
                if self.phase is Phase.LIVE and isinstance(event, StateAnswered):
                    return []  # a later answer (periodic asks) changes nothing here
                self._expect(Phase.SYNCING, event)
                self.phase = Phase.LIVE
                return self._send(self.drain_order())
            case ReceiptReceived(intent_id):
                if self.phase in (Phase.OFFLINE,):
                    raise SyncError("a receipt while offline")
                self.pending.pop(intent_id, None)  # a repeated receipt is harmless
                self.sent.discard(intent_id)
                return []
            case RetryDue():
                self._expect(Phase.LIVE, event)
                return self._send([i for i in self.drain_order() if i in self.sent])
            case LinkLost():
                if self.phase is Phase.OFFLINE:
                    raise SyncError("LinkLost while offline")
                self.phase, self.sent = Phase.OFFLINE, set()
                return []
        raise SyncError(f"unknown event {event!r}")  # pragma: no cover - exhaustive match

    def drain_order(self) -> list[str]:
        """Pending intent ids: urgent types first, each group in queue order."""
        urgent = [i for i, kind in self.pending.items() if kind in URGENT_TYPES]
        rest = [i for i, kind in self.pending.items() if kind not in URGENT_TYPES]
        return urgent + rest

    @property
    def awaiting_receipts(self) -> bool:
        """Whether intents sent in this session still wait for their receipts."""
        return bool(self.sent)

    def _send(self, ids: list[str]) -> list[Command]:
        self.sent.update(ids)
        return [SendIntent(i) for i in ids]

    def _expect(self, phase: Phase, event: Event) -> None:
        if self.phase is not phase:
            raise SyncError(f"{type(event).__name__} in phase {self.phase.value}")
