"""Insurer webhooks: the signature scheme and the strict body, as tables."""

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from cloud.webhooks import WebhookError, order_paid, sign, verify

SECRET = b"picc-webhook-secret"
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
TS = str(int(NOW.timestamp()))
POLICY = {"policy_no": "PDZA202700001234", "insurer_code": "PICC", "insurer_name": "中国人保财险",
          "plate": "沪A12345", "vin": "LSGCAR00000000001", "start": "2027-01-01",
          "end": "2027-12-31", "status": "in_force", "issued_at": NOW.isoformat()}  # fmt: skip
PAID = {"event": "order.paid", "order_id": "ord_1", "quote_id": "q_1", "insurer_code": "PICC",
        "policy": POLICY, "paid_at": NOW.isoformat()}  # fmt: skip
BODY = json.dumps(PAID).encode()


def test_a_signed_recent_delivery_verifies_and_reads() -> None:
    verify(SECRET, TS, sign(SECRET, TS, BODY), BODY, NOW)
    order_id, issued = order_paid(BODY, "PICC")
    assert order_id == "ord_1" and (issued.start, issued.end) == (
        date(2027, 1, 1),
        date(2027, 12, 31),
    )
    assert issued.policy_no == "PDZA202700001234" and issued.plate == "沪A12345"


@pytest.mark.parametrize(
    ("name", "ts", "sig", "body", "now", "code"),
    [
        ("no headers", None, None, BODY, NOW, "bad_signature"),
        ("signed with another secret", TS, sign(b"other", TS, BODY), BODY, NOW, "bad_signature"),
        ("body changed", TS, sign(SECRET, TS, BODY), BODY.replace(b"ord_1", b"ord_2"), NOW,
         "bad_signature"),
        ("timestamp changed", str(int(TS) + 1), sign(SECRET, TS, BODY), BODY, NOW,
         "bad_signature"),
        ("an old delivery replayed", TS, sign(SECRET, TS, BODY), BODY,
         NOW + timedelta(minutes=6), "stale_delivery"),
        ("a timestamp that is not a number", "soon", sign(SECRET, "soon", BODY), BODY, NOW,
         "bad_signature"),
        ("too large", TS, "x", b"{" + b" " * 20000 + b"}", NOW, "body_too_large"),
    ],
)  # fmt: skip
def test_bad_signatures_are_refused(
    name: str, ts: str | None, sig: str | None, body: bytes, now: datetime, code: str
) -> None:
    with pytest.raises(WebhookError) as info:
        verify(SECRET, ts, sig, body, now)
    assert info.value.code == code, name
    assert info.value.status in (401, 413)


def _with(**changes: object) -> bytes:
    obj = json.loads(BODY)
    policy = dict(obj["policy"])
    for k, v in changes.items():
        if k.startswith("policy."):
            policy[k.removeprefix("policy.")] = v
        else:
            obj[k] = v
    obj["policy"] = policy
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("name", "body", "code"),
    [
        ("not JSON", b"<html>oops</html>", "bad_body"),
        ("a list", b"[]", "bad_body"),
        ("another event", _with(event="order.refunded"), "unsupported_event"),
        ("no policy", json.dumps({**PAID, "policy": "none"}).encode(), "bad_body"),
        ("a number for the policy no", _with(**{"policy.policy_no": 5}), "bad_body"),
        ("a bad date", _with(**{"policy.end": "31/12/2027"}), "bad_body"),
        ("ends before it starts", _with(**{"policy.end": "2026-12-31"}), "bad_body"),
        ("another insurer's policy", _with(**{"policy.insurer_code": "PINGAN"}), "bad_body"),
        ("no order id", _with(order_id=None), "bad_body"),
    ],
)
def test_malformed_bodies_are_refused(name: str, body: bytes, code: str) -> None:
    with pytest.raises(WebhookError) as info:
        order_paid(body, "PICC")
    assert info.value.code == code, name
