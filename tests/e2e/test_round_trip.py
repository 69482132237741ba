"""End to end: real agents, a real cloud worker, the real broker with TLS and the ACL."""

import asyncio
import dataclasses
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from agent.runner import Agent
from cloud.pki import DevPki
from cloud.worker import Worker
from simulator.broker import Mosquitto
from simulator.cars import SimulatedFleet, car_config
from simulator.fleet import demo_plate, synthetic_vin

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


@pytest.mark.timeout(300)  # the lapsed car waits up to a minute for its cover to start
def test_the_demo_runs_and_stops_by_itself(tmp_path: Path) -> None:
    """What `make demo` runs (enrollment through the API included), with ten cars: the
    first ten show every case (simulator.fleet.DEMO_ROLES)."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "demo", "--cars", "10", "--duration", "0.5",
         "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=240, cwd=ROOT, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "gateways enrolled:  10/10" in out, out
    assert "verified policy state:  10/10" in out and "Stopped." in out
    # Car 3 (29 days left, Shanghai, a year without claims) renews on its head unit at
    # the region's price, the same at every insurer: 950 x (1 - 10 %) + 360 tax.
    assert re.search(r"quotes PICC CNY 1215\.00 \(CTPL 855\.00 \+ tax 360\.00", out), out
    assert "the same CTPL price at every insurer" in out
    assert "renewed through the head unit" in out, out
    assert "head unit shows covered, prompt gone" in out, out
    # Car 4 (14 days) was renewed at a counter and its prompts stop.
    assert "renewal elsewhere confirmed" in out and "prompts stop" in out
    # Car 1 lapsed two days ago, electric (no vehicle tax): it renews on its head unit
    # with cover from payment, shows 待生效 until then, then covered.
    lapsed = next(line for line in out.splitlines() if ": lapsed; tapped Renew now" in line)
    assert "CTPL 760.00 + tax 0.00 (new-energy: exempt)" in lapsed, lapsed
    assert "chose PINGAN (cover on payment)" in lapsed, lapsed
    assert "head unit showed pending (「交强险待生效：新保单自" in lapsed, lapsed
    assert "then covered until" in lapsed, lapsed
    # Car 9's term starts tomorrow: shown pending, and driving it raises a fleet alert,
    # as does car 8, lapsed and driving.
    assert re.search(r" pending +PICC .* pending \(moving\)", out), out
    assert re.search(r"Fleet alerts on the dashboard: .*1 lapsed_while_driving.*"
                     r"1 pending_while_driving", out), out  # fmt: skip
    # At rest (issue 13): the store, its WAL and the cloud's log are the owner's only, and
    # hold no VIN, plate or webhook secret in clear (sealed; the log scrubbed, also the
    # percent-encoded plates of HTTP client lines).
    demo = tmp_path / "demo"
    assert stat.S_IMODE(demo.stat().st_mode) == 0o700
    at_rest = [p for p in demo.iterdir() if p.name.startswith(("cloud.db", "cloud.log"))]
    assert {p.name for p in at_rest} >= {"cloud.db", "cloud.log"}
    for p in at_rest:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    blob = b"".join(p.read_bytes() for p in at_rest if p.exists())
    for i in range(10):
        for clear in (synthetic_vin(i), demo_plate(i), quote(demo_plate(i))):
            assert clear.encode() not in blob, f"{clear} in clear at rest"
    # The fleet dashboard is served, and the fleet API behind it lists the ten cars.
    assert re.search(r"Fleet dashboard, live .*: 10 vehicles \(.*1 pending", out), out
    assert re.search(r"https://127\.0\.0\.1:\d+/fleet#fleet=f[a-z2-7]{16}&token=", out)


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
