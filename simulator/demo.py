"""``make demo``: broker, cloud and simulated cars on this machine, stopped cleanly on Ctrl-C."""

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.protocol import calendar
from cloud.fleet_file import import_files
from cloud.pki import write_dev_pki
from cloud.store import Store

from .broker import Mosquitto
from .cars import SimulatedFleet, car_config
from .fleet import synthetic_policies


def _progress(done: int, total: int) -> None:
    bar = "#" * (20 * done // max(total, 1))
    print(f"\r  cars holding a verified policy state: {done:3d}/{total} [{bar:<20}]", end="")
    if done == total:
        print()


def _table(fleet: SimulatedFleet) -> str:
    now = datetime.now(UTC)
    lines = [f"  {'vid':<18} {'status':<9} {'insurer':<8} {'ends':<10} {'days':>5} {'ver':>4}"]
    for a in fleet.agents:
        s = a.state
        if s is None:
            lines.append(f"  {a.config.vid:<18} {'unverified'}")
            continue
        end = s.coverage_end.isoformat() if s.coverage_end else "-"
        days = str(calendar.days_left(now, s.coverage_end)) if s.coverage_end else "-"
        lines.append(
            f"  {a.config.vid:<18} {s.status:<9} {s.insurer_code or '-':<8} {end:<10} "
            f"{days:>5} {s.version:>4}"
        )
    return "\n".join(lines)


async def _cloud_ready(proc: "subprocess.Popen[bytes]", log: Path, timeout_s: float) -> bool:
    """Wait until the worker logs that it is connected (and so subscribed)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while proc.poll() is None:
                if b"connected to" in log.read_bytes():
                    return True
                await asyncio.sleep(0.05)
    return False


async def run_demo(workdir: Path, cars: int, duration_s: float | None) -> int:
    """Run the demo; with ``duration_s`` stop after that long once all cars are verified."""
    if workdir.exists():
        shutil.rmtree(workdir)
    print(f"Making a dev PKI with {cars} car identities in {workdir / 'pki'}")
    pki = write_dev_pki(workdir / "pki", cars)
    db = workdir / "cloud.db"
    policies = workdir / "policies.json"
    policies.write_text(json.dumps(synthetic_policies(pki.vids(), datetime.now(UTC)), indent=1))
    async with await Store.open(db) as store:
        nv, np = await import_files(store, pki.vehicles_file, policies)
    print(f"Cloud store {db}: {nv} vehicles, {np} policies (every 10th car has none on record)")

    with Mosquitto(pki, workdir / "broker") as broker:
        print(f"Mosquitto from broker-config/ on 127.0.0.1:{broker.port} (mTLS, per-car ACL)")
        log = (workdir / "cloud.log").open("wb")
        cloud = subprocess.Popen(  # noqa: S603, ASYNC220 - our own module, started once
            [sys.executable, "-m", "cloud", "serve", "--pki", str(pki.root), "--db", str(db),
             "--broker-port", str(broker.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        print(f"Cloud worker pid {cloud.pid}, log {workdir / 'cloud.log'}")
        if not await _cloud_ready(cloud, workdir / "cloud.log", 20.0):
            cloud.kill()
            log.close()
            print(f"The cloud worker did not come up; see {workdir / 'cloud.log'}")
            return 1
        fleet = SimulatedFleet(
            [car_config(pki, vid, workdir / "cars", broker.port, 300.0) for vid in pki.vids()]
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fleet.run(), name="fleet")
                print(f"Starting {cars} simulated cars (each a real agent with its own SQLite)")
                ok = await fleet.wait_all_verified(60.0, _progress)
                print(_table(fleet))
                first = fleet.agents[0].config
                print(
                    "\nLook at:\n"
                    f"  one car's verified state: .venv/bin/ctpl-agent status --db {first.db_path}"
                    f" --cloud-key {pki.signing_pub}\n"
                    f"  the broker log:           {broker.log_path}\n"
                    f"  the cloud log:            {workdir / 'cloud.log'}\n"
                )
                if duration_s is None:
                    print("Running; press Ctrl-C to stop everything.")
                    await stop.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(duration_s):
                            await stop.wait()
                print("Stopping cars, cloud and broker...")
                fleet.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            cloud.terminate()
            try:
                cloud.wait(10)
            except subprocess.TimeoutExpired:
                cloud.kill()
            log.close()
    print("Stopped." if ok else "Stopped; not every car got a verified state (see the logs).")
    return 0 if ok else 1
