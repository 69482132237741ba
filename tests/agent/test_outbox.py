"""The outbox in the agent's store, and recording intents: real SQLite files."""

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent import intents
from agent.errors import NotRunningError, StoreError
from agent.protocol.errors import BodyError
from agent.runner import Agent
from agent.store import Store

AT = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
VID = "vaaaaaaaaaaaaaaa1"
A, B, C = "a" * 32, "b" * 32, "c" * 32


async def test_intents_are_committed_at_once_and_kept_in_order_until_receipted(
    tmp_path: Path,
) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        for intent_id in (A, B, C):
            await store.add_intent(intent_id, "vehicle.event", '{"event":"parked"}', AT)
        # Another connection sees them at once: nothing waits for a later commit.
        with closing(sqlite3.connect(db)) as other:
            assert other.execute("SELECT count(*) FROM outbox").fetchone() == (3,)
        assert await store.save_receipt(B, "t", b"receipt", AT)
        assert not await store.save_receipt(B, "t", b"again", AT)  # kept, not replaced
        assert not await store.save_receipt("d" * 32, "t", b"x", AT)  # not ours
    async with Store(db) as store:
        assert [r.intent_id for r in await store.pending_intents()] == [A, C]
        assert await store.outbox_counts() == (2, 1)
        row = await store.intent(B)
        assert row is not None and row.receipted_at == AT and row.fields == '{"event":"parked"}'
        assert await store.intent("d" * 32) is None


async def test_an_intent_id_is_never_reused_and_a_receipt_never_replaced(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        await store.add_intent(A, "vehicle.event", "{}", AT)
        with pytest.raises(StoreError):
            await store.add_intent(A, "vehicle.event", "{}", AT)
        await store.save_receipt(A, "t", b"receipt", AT)
    with closing(sqlite3.connect(db)) as other, pytest.raises(sqlite3.IntegrityError):
        other.execute("UPDATE outbox SET receipt = x'00' WHERE intent_id = ?", (A,))
    async with Store(db) as store:
        assert await store.outbox_counts() == (0, 1)


def test_intent_bodies_are_checked_before_they_are_recorded() -> None:
    assert intents.check("vehicle.event", A, intents.event_fields("parked", AT), VID) == (
        '{"at":"2026-11-25T06:00:00+00:00","event":"parked"}'
    )
    body = intents.body("renewal.request", A, intents.renewal_fields("accept", "q-1"), VID, 9)
    assert (body.type, body.seq, body.intent_id) == ("renewal.request", 9, A)
    for type_, fields in [
        ("vehicle.event", {"event": "teleported"}),
        ("renewal.request", {"action": "buy"}),
        ("renewal.request", {"action": "accept", "quote_id": "no spaces"}),
        ("status.request", {}),
    ]:
        with pytest.raises(BodyError):
            intents.check(type_, A, fields, VID)
    assert len(intents.new_id()) == 32 and intents.new_id() != intents.new_id()


async def test_recording_needs_a_running_agent_and_a_valid_intent(
    make_config: Any, run_agent: Any, until: Any
) -> None:
    idle = Agent(make_config())
    with pytest.raises(NotRunningError):
        await idle.report_event("parked")
    async with run_agent(Agent(make_config(1))) as agent:
        await until(lambda: agent.connected, "connected (its store is open)")
        with pytest.raises(BodyError):
            await agent.request_renewal("buy_now")
        assert agent.intent_events["recorded"] == 0
        assert await agent.outbox() == (0, 0)
