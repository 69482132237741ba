"""Verification of one incoming message, in contract order: pure, no I/O.

Topic first, then the signature over the exact bytes received, then the body;
the first failure names the drop reason (a wire error code where there is one).
"""

from dataclasses import dataclass
from typing import Final

from .protocol import envelope, messages, topics
from .protocol.errors import ProtocolError
from .protocol.keys import PublicKey

CloudBody = (
    messages.PolicyState | messages.ErrorReply | messages.IntentReceipt | messages.RenewalUpdate
)
KIND_OF_TYPE: Final[dict[str, str]] = {
    "policy.state": "policy",
    "error": "error",
    "intent.receipt": "receipt",
    "renewal.update": "renewal",
}
"""The one down topic kind each cloud body type may arrive on."""


@dataclass(frozen=True, slots=True)
class Verified:
    """A cloud message whose signature, topic and body all check out."""

    topic: str
    payload: bytes
    body: CloudBody


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message to ignore; ``reason`` is a short stable word for the counters."""

    reason: str
    detail: str


def read(vid: str, keys: dict[str, PublicKey], topic: str, payload: bytes) -> Verified | Dropped:
    """Verify ``payload`` received on ``topic`` by the agent of ``vid`` trusting ``keys``."""
    try:
        parsed = topics.parse(topic)
    except ProtocolError as exc:
        return Dropped(exc.code, str(exc))
    if parsed.vid != vid:
        return Dropped("vid_mismatch", f"topic is for {parsed.vid}, not {vid}")
    if parsed.direction != "down":
        return Dropped("wrong_topic", f"{parsed.direction} is not a down topic")
    try:
        body = messages.decode(envelope.open_with(topic, payload, keys))
    except ProtocolError as exc:
        return Dropped(exc.code, str(exc))
    if body.vid != vid:
        return Dropped("vid_mismatch", f"body is for {body.vid}, not {vid}")
    if KIND_OF_TYPE.get(body.type) != parsed.kind or not isinstance(
        body,
        messages.PolicyState
        | messages.ErrorReply
        | messages.IntentReceipt
        | messages.RenewalUpdate,
    ):
        return Dropped("wrong_topic", f"{body.type} does not belong on down/{parsed.kind}")
    return Verified(topic, payload, body)
