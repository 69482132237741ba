"""Verification of incoming messages, in contract order, as tables (no broker)."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from agent import inbox
from agent.protocol import messages, topics
from agent.protocol.envelope import Signer
from agent.protocol.keys import b64url, generate_private_key, kid_for
from agent.protocol.messages import ErrorReply, StatusRequest

VID = "vaaaaaaaaaaaaaaa1"
OTHER = "vbbbbbbbbbbbbbbb2"
CLOUD = generate_private_key()
KEYS = {kid_for(CLOUD.public_key()): CLOUD.public_key()}
SIGNER = Signer(CLOUD)
ROGUE = Signer(generate_private_key())
POLICY = topics.down(VID, "policy")


def sealed(topic: str, body: Any, signer: Signer = SIGNER) -> bytes:
    return signer.seal(topic, messages.encode(body))


def tampered(payload: bytes) -> bytes:
    env = json.loads(payload)
    env["body"] = b64url(json.dumps({"tampered": True}).encode())
    return json.dumps(env).encode()


def test_signed_state_on_its_topic_verifies(make_state: Any) -> None:
    state = make_state(VID, version=1, seq=1)
    payload = sealed(POLICY, state)
    assert inbox.read(VID, KEYS, POLICY, payload) == inbox.Verified(POLICY, payload, state)


def test_signed_error_on_its_topic_verifies() -> None:
    topic = topics.down(VID, "error")
    reply = ErrorReply(vid=VID, seq=2, code="replay", message="seq already seen")
    assert inbox.read(VID, KEYS, topic, sealed(topic, reply)).body == reply  # type: ignore[union-attr]


CASES: list[tuple[str, str, Callable[[Any], bytes], str]] = [
    ("bad topic", "ctpl/v1/+/down/policy", lambda s: sealed(POLICY, s), "bad_topic"),
    ("unknown kind", f"ctpl/v1/{VID}/down/nope", lambda s: sealed(POLICY, s), "bad_topic"),
    (
        "other car's topic",
        topics.down(OTHER, "policy"),
        lambda s: sealed(topics.down(OTHER, "policy"), s),
        "vid_mismatch",
    ),
    (
        "up topic",
        topics.up(VID, "status"),
        lambda s: sealed(topics.up(VID, "status"), s),
        "wrong_topic",
    ),
    ("not json", POLICY, lambda s: b"\xff not json", "bad_envelope"),
    ("unpinned key", POLICY, lambda s: sealed(POLICY, s, ROGUE), "unknown_key"),
    (
        "signed for another topic",
        POLICY,
        lambda s: sealed(topics.down(VID, "error"), s),
        "bad_signature",
    ),
    ("body swapped", POLICY, lambda s: tampered(sealed(POLICY, s)), "bad_signature"),
]


@pytest.mark.parametrize(("name", "topic", "build", "reason"), CASES, ids=[c[0] for c in CASES])
def test_drops(
    make_state: Any, name: str, topic: str, build: Callable[[Any], bytes], reason: str
) -> None:
    outcome = inbox.read(VID, KEYS, topic, build(make_state(VID, version=1, seq=1)))
    assert isinstance(outcome, inbox.Dropped), name
    assert outcome.reason == reason


def test_body_for_another_car_is_dropped(make_state: Any) -> None:
    outcome = inbox.read(VID, KEYS, POLICY, sealed(POLICY, make_state(OTHER, version=1, seq=1)))
    assert isinstance(outcome, inbox.Dropped) and outcome.reason == "vid_mismatch"


def test_error_on_the_policy_topic_is_dropped() -> None:
    reply = ErrorReply(vid=VID, seq=2, code="internal", message="x")
    outcome = inbox.read(VID, KEYS, POLICY, sealed(POLICY, reply))
    assert isinstance(outcome, inbox.Dropped) and outcome.reason == "wrong_topic"


def test_a_request_is_never_taken_from_the_cloud() -> None:
    outcome = inbox.read(VID, KEYS, POLICY, sealed(POLICY, StatusRequest(vid=VID, seq=1)))
    assert isinstance(outcome, inbox.Dropped) and outcome.reason == "wrong_topic"


def test_signed_garbage_body_is_dropped() -> None:
    payload = SIGNER.seal(POLICY, b'{"type":"policy.state","vid":"' + VID.encode() + b'"}')
    outcome = inbox.read(VID, KEYS, POLICY, payload)
    assert isinstance(outcome, inbox.Dropped) and outcome.reason == "bad_body"


def test_signed_unknown_type_is_dropped() -> None:
    body = json.dumps({"type": "fleet.broadcast", "vid": VID, "seq": 1}).encode()
    outcome = inbox.read(VID, KEYS, POLICY, SIGNER.seal(POLICY, body))
    assert isinstance(outcome, inbox.Dropped) and outcome.reason == "unsupported_type"
