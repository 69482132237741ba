"""The cloud side of the golden vectors: its handler and its store accept exactly them."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.protocol import messages
from agent.protocol.keys import load_public_key
from cloud.handler import RequestHandler, VehicleState
from cloud.store import Store

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "envelope_v1.json").read_text()
)
KEY = VECTORS["test_key"]
REQUEST = next(v for v in VECTORS["vectors"] if v["direction"] == "car -> cloud")
NOW = datetime(2026, 11, 25, tzinfo=UTC)


async def handler_from_store(tmp_path: Path) -> RequestHandler:
    """A handler whose vehicle key went through the cloud store, as in production."""
    body = messages.decode(REQUEST["body_text"].encode())
    async with await Store.open(tmp_path / "cloud.db") as store:
        await store.add_vehicle(body.vid, load_public_key(KEY["public_key_pem"].encode()), None)
        vehicles = await store.load_vehicles()
    assert vehicles[body.vid].kid == KEY["kid"]
    return RequestHandler(vehicles=vehicles, policies={})


async def test_the_cloud_accepts_the_golden_request_and_answers_its_seq(tmp_path: Path) -> None:
    h = await handler_from_store(tmp_path)
    reply = h.handle(REQUEST["topic"], REQUEST["envelope_text"].encode(), NOW)
    assert reply is not None and isinstance(reply.body, messages.PolicyState)
    assert reply.body.reply_to == json.loads(REQUEST["body_text"])["seq"]


async def test_the_cloud_refuses_the_golden_request_on_another_topic(tmp_path: Path) -> None:
    h = await handler_from_store(tmp_path)
    vid = json.loads(REQUEST["body_text"])["vid"]
    other = REQUEST["must_not_verify_on_topic"].split("/")[2]
    h.vehicles[other] = VehicleState(kid=h.vehicles[vid].kid, key=h.vehicles[vid].key)
    reply = h.handle(REQUEST["must_not_verify_on_topic"], REQUEST["envelope_text"].encode(), NOW)
    assert reply is not None and isinstance(reply.body, messages.ErrorReply)
    assert reply.body.code == "bad_signature"


@pytest.mark.parametrize("flip", [0, 1, 7])
async def test_the_cloud_refuses_the_golden_request_with_one_body_bit_changed(
    tmp_path: Path, flip: int
) -> None:
    h = await handler_from_store(tmp_path)
    env = json.loads(REQUEST["envelope_text"])
    body = env["body"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = 10 + flip
    env["body"] = body[:i] + alphabet[alphabet.index(body[i]) ^ 1] + body[i + 1 :]
    forged = json.dumps(env, separators=(",", ":")).encode()
    reply = h.handle(REQUEST["topic"], forged, NOW)
    assert reply is not None and isinstance(reply.body, messages.ErrorReply)
    assert reply.body.code in {"bad_signature", "bad_envelope"}


async def test_the_cloud_refuses_the_high_s_twin_of_the_golden_request(tmp_path: Path) -> None:
    """(r, n - s) verifies as ECDSA too: the cloud takes only the low-S form (issue 13)."""
    h = await handler_from_store(tmp_path)
    reply = h.handle(REQUEST["topic"], REQUEST["high_s_twin_envelope_text"].encode(), NOW)
    assert reply is not None and isinstance(reply.body, messages.ErrorReply)
    assert reply.body.code == "bad_signature"
