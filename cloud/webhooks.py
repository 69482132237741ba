"""Insurer webhooks: the HMAC check and the strict reading of an ``order.paid`` body. Pure.

Scheme (docs/sources.md): ``X-CTPL-Timestamp: <unix seconds>`` and
``X-CTPL-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>``. A
timestamp further than ``TOLERANCE_S`` from now is refused (a replayed old delivery);
a delivery repeated within it is harmless: paying an order twice issues once.
"""

import hashlib
import hmac
import json
from datetime import date, datetime
from typing import Final

from agent.protocol import calendar

from .renewal_ports import IssuedPolicy

TOLERANCE_S: Final = 300
MAX_BODY: Final = 16 * 1024


class WebhookError(Exception):
    """A delivery refused; ``status`` and ``code`` go back to the insurer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(
    secret: bytes, timestamp: str | None, signature: str | None, body: bytes, now: datetime
) -> None:
    """Raise WebhookError unless ``signature`` is ours over ``body`` and recent."""
    if len(body) > MAX_BODY:
        raise WebhookError(413, "body_too_large", f"webhook bodies are at most {MAX_BODY} bytes")
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookError(401, "bad_signature", "missing or malformed signature headers")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise WebhookError(401, "bad_signature", "the signature does not match")
    if abs(now.timestamp() - int(timestamp)) > TOLERANCE_S:
        raise WebhookError(401, "stale_delivery", "the delivery's timestamp is too far off")


def _text(obj: dict[str, object], key: str, limit: int = 64) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise WebhookError(400, "bad_body", f"{key}: should be text of 1..{limit} characters")
    return value


def _day(obj: dict[str, object], key: str) -> date:
    try:
        return date.fromisoformat(_text(obj, key, 10))
    except ValueError:
        raise WebhookError(400, "bad_body", f"{key}: should be a YYYY-MM-DD date") from None


def _instant(obj: dict[str, object], key: str) -> datetime | None:
    """An optional RFC 3339 instant with an offset (absent or null: None)."""
    if obj.get(key) is None:
        return None
    try:
        at = datetime.fromisoformat(_text(obj, key, 40))
    except ValueError:
        at = None
    if at is None or at.utcoffset() is None:
        raise WebhookError(400, "bad_body", f"{key}: should be an instant with an offset")
    return at


def order_paid(body: bytes, insurer_code: str) -> tuple[str, IssuedPolicy]:
    """The order id and the policy issued, from a verified ``order.paid`` body."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError(400, "bad_body", "the body is not JSON") from None
    if not isinstance(obj, dict):
        raise WebhookError(400, "bad_body", "the body should be an object")
    if obj.get("event") != "order.paid":
        raise WebhookError(400, "unsupported_event", "only order.paid is taken")
    policy = obj.get("policy")
    if not isinstance(policy, dict):
        raise WebhookError(400, "bad_body", "policy: should be an object")
    issued = IssuedPolicy(
        policy_no=_text(policy, "policy_no"),
        insurer_code=_text(policy, "insurer_code"),
        insurer_name=_text(policy, "insurer_name"),
        plate=_text(policy, "plate", 16),
        start=_day(policy, "start"),
        end=_day(policy, "end"),
        starts_at=_instant(policy, "starts_at"),
    )
    if issued.starts_at is not None and calendar.china_date(issued.starts_at) != issued.start:
        raise WebhookError(400, "bad_body", "starts_at: should fall on the start date")
    if issued.insurer_code != insurer_code:
        raise WebhookError(400, "bad_body", "the policy is not this insurer's")
    if issued.end <= issued.start:
        raise WebhookError(400, "bad_body", "the policy ends before it starts")
    return _text(obj, "order_id"), issued
