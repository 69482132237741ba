"""Intents end to end: real agent, real cloud worker and store, the real broker restarted.

What must hold: an intent the agent acknowledged as recorded reaches the cloud's store
exactly once (one row per intent id), whatever the link does, and ends receipted in the
agent's outbox.
"""

import asyncio
import time
from pathlib import Path

import pytest

from agent.runner import Agent
from cloud.config import CloudConfig
from cloud.pki import DevPki
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto
from simulator.cars import car_config

from ..cloud.conftest import start_worker
from .helpers import FAST, until


async def drained(agent: Agent, timeout_s: float = 20.0) -> tuple[int, int]:
    """Wait until the outbox holds no pending intent; return (pending, receipted)."""
    deadline = time.monotonic() + timeout_s
    while (counts := await agent.outbox())[0] > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox still pending: {counts}")
        await asyncio.sleep(0.05)
    return counts


async def cloud_rows(db: Path, vid: str) -> list[tuple[str, str, int]]:
    async with await Store.open(db) as store:
        return [(r.intent_id, r.type, r.seq) for r in await store.intents(vid)]


@pytest.fixture
async def worker(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path):  # type: ignore[no-untyped-def]
    w, task = await start_worker(own_pki, own_broker, tmp_path / "cloud.db")
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_intents_recorded_offline_reach_the_cloud_once_urgent_first(
    worker: Worker, own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    vid = own_pki.vids()[0]
    own_broker.stop()
    agent = Agent(car_config(own_pki, vid, tmp_path / "cars", own_broker.port, **FAST))
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.link_failures["connect"] >= 1, "a failed connect")
        events = [await agent.report_event("ignition_on") for _ in range(5)]
        renewal = await agent.request_renewal("already_renewed")
        assert await agent.outbox() == (6, 0)  # on disk, nothing sent
        own_broker.start()
        assert await drained(agent) == (0, 6)
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
    rows = await cloud_rows(tmp_path / "cloud.db", vid)
    assert sorted(r[0] for r in rows) == sorted([*events, renewal])
    # Drained urgent first: the renewal went out under the lowest seq of the drain.
    assert min(rows, key=lambda r: r[2])[:2] == (renewal, "renewal.request")
    assert agent.sync.session_present is not None


async def test_a_broker_restart_with_intents_in_flight_loses_and_repeats_none(
    worker: Worker, own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    vid = own_pki.vids()[1]
    agent = Agent(car_config(own_pki, vid, tmp_path / "cars", own_broker.port, **FAST))
    task = asyncio.create_task(agent.run())
    recorded: list[str] = []

    async def record(n: int) -> None:
        for _ in range(n):
            recorded.append(await agent.report_event("moving", detail=f"#{len(recorded)}"))
            await asyncio.sleep(0.01)

    try:
        await agent.wait_for_state(10.0)
        recorder = asyncio.create_task(record(100))
        await until(lambda: len(recorded) >= 30, "30 intents recorded")
        own_broker.stop()  # some sent without receipt, some mid-publish
        await until(lambda: not agent.connected, "noticing the broker is gone")
        await until(lambda: len(recorded) >= 60, "60 intents recorded")
        own_broker.start()
        await recorder
        assert await drained(agent, 30.0) == (0, 100)
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
    rows = await cloud_rows(tmp_path / "cloud.db", vid)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 100 and set(ids) == set(recorded)
    print(
        f"\nbroker restart with intents in flight: recorded 100, cloud rows {len(ids)}, "
        f"agent {dict(agent.intent_events)}, cloud intents.new {worker.counters['intents.new']}, "
        f"intents.repeated {worker.counters['intents.repeated']}"
    )
    assert agent.link_failures["dropped"] >= 1


async def test_a_cloud_worker_killed_mid_stream_and_restarted_records_each_intent_once(
    own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    first, first_task = await start_worker(own_pki, own_broker, db)
    vid = own_pki.vids()[2]
    agent = Agent(car_config(own_pki, vid, tmp_path / "cars", own_broker.port, **FAST))
    task = asyncio.create_task(agent.run())
    recorded: list[str] = []
    second_task: asyncio.Task[None] | None = None
    try:
        await agent.wait_for_state(10.0)
        for n in range(60):
            recorded.append(await agent.report_event("parked", detail=f"#{n}"))
            if n == 20:
                first_task.cancel()  # mid-batch: some committed without their receipts
                with pytest.raises(asyncio.CancelledError):
                    await first_task
            if n == 40:
                config = CloudConfig.from_pki(
                    own_pki, db_path=db, broker_port=own_broker.port, client_id="test-cloud-again"
                )
                second = Worker(config)
                second_task = asyncio.create_task(second.run())
            await asyncio.sleep(0.01)
        assert await drained(agent, 30.0) == (0, 60)
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
        if second_task is not None:
            second_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second_task
    rows = await cloud_rows(db, vid)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 60 and set(ids) == set(recorded)
    print(
        f"\ncloud worker killed and restarted: 60 recorded, {len(ids)} rows; first worker "
        f"{first.counters['intents.new']} new; second {second.counters['intents.new']} new, "
        f"{second.counters['intents.repeated']} repeated; agent {dict(agent.intent_events)}"
    )
