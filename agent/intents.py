"""Intents: what the car asks the cloud to act on exactly once. Pure, no I/O.

An intent is recorded once (an idempotency key, its type and its fields) and signed
anew, under a fresh ``seq``, every time it is sent: the cloud refuses any seq it has
seen (replay), and records an intent once per ``intent_id`` however often it arrives.
"""

import json
import secrets
from datetime import datetime
from typing import Any, Final

from .protocol import messages
from .protocol.errors import BodyError

INTENT_TYPES: Final = {"renewal.request": "renewal", "vehicle.event": "event"}
"""Intent body type → the up topic kind it is sent on."""


def new_id() -> str:
    """A fresh idempotency key: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def renewal_fields(action: str, quote_id: str | None = None) -> dict[str, Any]:
    """The fields of a ``renewal.request``."""
    return {"action": action} if quote_id is None else {"action": action, "quote_id": quote_id}


def event_fields(event: str, at: datetime | None, detail: str | None = None) -> dict[str, Any]:
    """The fields of a ``vehicle.event``; ``at`` is trusted time (None when the car has none)."""
    fields: dict[str, Any] = {"event": event}
    if at is not None:
        fields["at"] = at.isoformat()
    if detail is not None:
        fields["detail"] = detail
    return fields


def body(type_: str, intent_id: str, fields: dict[str, Any], vid: str, seq: int) -> messages.Intent:
    """The intent's body as sent under ``seq``; raise BodyError if it breaks the contract."""
    if type_ not in INTENT_TYPES:
        raise BodyError(f"{type_!r} is not an intent type")
    data = {"type": type_, "vid": vid, "seq": seq, "intent_id": intent_id, **fields}
    parsed = messages.decode(json.dumps(data, separators=(",", ":")).encode())
    assert isinstance(parsed, messages.RenewalRequest | messages.VehicleEvent)
    return parsed


def check(type_: str, intent_id: str, fields: dict[str, Any], vid: str) -> str:
    """The fields as stored (JSON text) once they make a valid body; raise BodyError if not."""
    body(type_, intent_id, fields, vid, seq=1)
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)
