"""End to end: real agents, a real cloud worker, the real broker with TLS and the ACL."""

import asyncio
import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.runner import Agent
from cloud.pki import DevPki
from cloud.worker import Worker
from simulator.broker import Mosquitto
from simulator.cars import SimulatedFleet, car_config

from ..cloud.conftest import start_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def worker(shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path):
    w, task = await start_worker(shared_pki, shared_broker, tmp_path / "cloud.db")
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_car_gets_a_verified_policy_state_through_broker_and_cloud(
    worker: Worker, shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path
) -> None:
    vid = shared_pki.vids()[2]
    agent = Agent(car_config(shared_pki, vid, tmp_path / "cars", shared_broker.port))
    task = asyncio.create_task(agent.run())
    try:
        state = await agent.wait_for_state(10.0)
        assert state.vid == vid and state.status == "active" and state.insurer_code == "CPIC"
        # One more request, timed from publish to the verified, stored reply.
        started = time.perf_counter()
        seq = await agent.request_status()
        newer = await agent.wait_for_state(5.0, min_seq=state.seq + 1)
        round_trip_ms = (time.perf_counter() - started) * 1000
        assert newer.reply_to == seq and newer.version == state.version
        print(f"\ne2e signed round trip, agent to cloud and back, verified: {round_trip_ms:.1f} ms")
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
    assert worker.handler is not None and worker.handler.vehicles[vid].last_seq == seq


async def test_a_simulated_fleet_all_hold_verified_states(
    worker: Worker, shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path
) -> None:
    vids = shared_pki.vids()[3:9]
    fleet = SimulatedFleet([car_config(shared_pki, v, tmp_path, shared_broker.port) for v in vids])
    task = asyncio.create_task(fleet.run())
    try:
        assert await fleet.wait_all_verified(20.0)
        assert {a.state.vid for a in fleet.agents if a.state} == set(vids)
    finally:
        fleet.stop()
        async with asyncio.timeout(10):
            await task


def test_the_demo_runs_and_stops_by_itself(tmp_path: Path) -> None:
    """What `make demo` runs (enrollment through the API included), with fewer cars."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "demo", "--cars", "5", "--duration", "0.5",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gateways enrolled:   5/5" in proc.stdout, proc.stdout
    assert "verified policy state:   5/5" in proc.stdout and "Stopped." in proc.stdout
    # The renewal walk-through: car 3 (29 days left) renews on its head unit, car 4
    # (14 days) was renewed at a counter and its prompts stop.
    assert "renewed through the head unit" in proc.stdout, proc.stdout
    assert "head unit shows covered, prompt gone" in proc.stdout, proc.stdout
    assert "renewal elsewhere confirmed" in proc.stdout and "prompts stop" in proc.stdout
    # The fleet dashboard is served, and the fleet API behind it lists the five cars.
    assert re.search(r"Fleet dashboard, live .*: 5 vehicles \(", proc.stdout), proc.stdout
    assert re.search(r"https://127\.0\.0\.1:\d+/fleet#fleet=f[a-z2-7]{16}&token=", proc.stdout)


async def test_a_request_nobody_answered_is_asked_again_until_the_cloud_answers(
    shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path
) -> None:
    """The broker drops a request when no worker is subscribed; the car must not wait an hour."""
    vid = shared_pki.vids()[9]
    config = dataclasses.replace(
        car_config(shared_pki, vid, tmp_path / "cars", shared_broker.port), reply_timeout_s=0.2
    )
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(10):
            while agent.counters["unanswered"] < 1:
                await asyncio.sleep(0.05)
        _, worker_task = await start_worker(shared_pki, shared_broker, tmp_path / "cloud.db")
        try:
            state = await agent.wait_for_state(10.0)
            assert state.reply_to is not None and state.reply_to > 1
        finally:
            worker_task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker_task
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
