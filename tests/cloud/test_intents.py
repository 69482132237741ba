"""Intents at the cloud: the handler receipts every arrival, the store keeps one per id."""

import json
from pathlib import Path

import pytest

from agent import intents
from agent.protocol import messages, topics
from cloud.store import Store

from .test_handler import CAR, CAR_KEY, NOW, VID, make_handler, request

INTENT = "0123456789abcdef" * 2


def intent(
    seq: int, intent_id: str = INTENT, kind: str = "event", **fields: object
) -> tuple[str, bytes]:
    """An intent sent by the car under ``seq`` (re-sent intents are re-signed)."""
    type_ = "vehicle.event" if kind == "event" else "renewal.request"
    data = {"type": type_, "vid": VID, "seq": seq, "intent_id": intent_id}
    data.update(fields or ({"event": "ignition_on"} if kind == "event" else {"action": "quote"}))
    topic = topics.up(VID, kind)  # type: ignore[arg-type]
    return topic, CAR.seal(topic, json.dumps(data, separators=(",", ":")).encode())


@pytest.mark.parametrize("kind", ["event", "renewal"])
def test_an_intent_gets_a_receipt_and_is_queued_for_the_commit(kind: str) -> None:
    h = make_handler()
    topic, payload = intent(3, kind=kind)
    reply = h.handle(topic, payload, NOW)
    assert reply is not None and not reply.retain and reply.topic == topics.down(VID, "receipt")
    receipt = reply.body
    assert isinstance(receipt, messages.IntentReceipt)
    assert (receipt.vid, receipt.reply_to, receipt.intent_id, receipt.issued_at) == (
        VID, 3, INTENT, NOW,
    )  # fmt: skip
    [row] = h.intents
    assert (row.vid, row.intent_id, row.seq, row.received_at) == (VID, INTENT, 3, NOW)
    assert messages.decode(row.body).intent_id == INTENT  # type: ignore[union-attr]
    assert h.vehicles[VID].last_seq == 3 and VID in h.dirty


def test_a_resent_intent_is_receipted_again_and_its_exact_replay_refused() -> None:
    h = make_handler()
    first = intent(3)
    assert isinstance(h.handle(*first, NOW).body, messages.IntentReceipt)  # type: ignore[union-attr]
    again = h.handle(*intent(4), NOW)  # the car re-signs it under a new seq
    assert again is not None and isinstance(again.body, messages.IntentReceipt)
    assert [r.seq for r in h.intents] == [3, 4]  # the store keeps the first (below)
    replayed = h.handle(*first, NOW)  # the same bytes again: a replay
    assert replayed is not None and isinstance(replayed.body, messages.ErrorReply)
    assert replayed.body.code == "replay" and len(h.intents) == 2


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("event moved to the status topic", lambda: (request(9)[0], intent(9)[1]), "bad_signature"),
        ("short intent id", lambda: intent(9, intent_id="abc"), "bad_body"),
        ("upper-case intent id", lambda: intent(9, intent_id=INTENT.upper()), "bad_body"),
        ("unknown event", lambda: intent(9, event="teleported"), "bad_body"),
        ("unknown action", lambda: intent(9, kind="renewal", action="buy_now"), "bad_body"),
        ("extra field", lambda: intent(9, event="moving", speed_kmh=80), "bad_body"),
        ("naive time", lambda: intent(9, event="moving", at="2026-11-25T06:00:00"), "bad_body"),
    ],
)
def test_bad_intents_get_an_error_and_record_nothing(name: str, make: object, code: str) -> None:
    h = make_handler()
    reply = h.handle(*make(), NOW)  # type: ignore[operator]
    assert reply is not None and isinstance(reply.body, messages.ErrorReply), name
    assert reply.body.code == code, name
    assert h.intents == []


def test_an_intent_on_the_wrong_up_topic_is_unsupported() -> None:
    h = make_handler()
    topic = topics.up(VID, "renewal")
    body = intents.body("vehicle.event", INTENT, {"event": "parked"}, VID, 5)
    reply = h.handle(topic, CAR.seal(topic, messages.encode(body)), NOW)
    assert reply is not None and isinstance(reply.body, messages.ErrorReply)
    assert reply.body.code == "unsupported_type" and h.intents == []


async def test_the_store_records_each_intent_once_whatever_the_arrivals(tmp_path: Path) -> None:
    h = make_handler()
    for seq in (3, 4, 5):
        h.handle(*intent(seq), NOW)
    h.handle(*intent(6, intent_id="f" * 32, kind="renewal"), NOW)
    async with await Store.open(tmp_path / "cloud.db") as store:
        await store.add_vehicle(VID, CAR_KEY.public_key(), None)
        first = await store.save_counters([h.vehicles[VID].row(VID)], h.intents[:2])
        assert first.new_intents == 1 and not first.conflicts
        again = await store.save_counters([h.vehicles[VID].row(VID)], h.intents[2:])
        assert again.new_intents == 1 and not again.conflicts  # seq 5 repeats, f… new
        kept = await store.intents(VID)
    assert [(r.intent_id, r.seq) for r in kept] == [(INTENT, 3), ("f" * 32, 6)]
