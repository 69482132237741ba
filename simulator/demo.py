"""``make demo``: broker, cloud and simulated cars on this machine, stopped cleanly on Ctrl-C."""

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import webbrowser
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from agent.protocol import calendar
from agent.runner import Agent
from agent.vehicle import SimulatedBus
from cloud.fleet_file import import_files
from cloud.pki import DevPki, write_dev_pki, write_private
from cloud.store import Store

from .broker import Mosquitto, free_port
from .cars import SimulatedFleet
from .enroller import Operator, create_fleet, enroll_cars, fleet_alerts, fleet_counts
from .fleet import (
    COMMUTER,
    LAPSED_DRIVING,
    PENDING_DRIVING,
    demo_plate,
    demo_policies,
    synthetic_vin,
    vehicle_facts,
)
from .walkthrough import OutsideWorld, walk_through


def _bar(what: str, done: int, total: int) -> None:
    bar = "#" * (20 * done // max(total, 1))
    print(f"\r  {what}: {done:3d}/{total} [{bar:<20}]", end="")
    if done == total:
        print()


def _table(fleet: SimulatedFleet) -> str:
    now = datetime.now(UTC)
    lines = [
        f"  {'vid':<18} {'status':<9} {'insurer':<8} {'ends':<10} {'days':>5} {'ver':>4}  head unit"
    ]
    for a in fleet.agents:
        s = a.state
        if s is None:
            lines.append(f"  {a.config.vid:<18} {'unverified'}")
            continue
        end = s.coverage_end.isoformat() if s.coverage_end else "-"
        days = str(calendar.days_left(now, s.coverage_end)) if s.coverage_end else "-"
        lines.append(
            f"  {a.config.vid:<18} {s.status:<9} {s.insurer_code or '-':<8} {end:<10} "
            f"{days:>5} {s.version:>4}  {_head_unit(a)}"
        )
    return "\n".join(lines)


def _head_unit(agent: Agent) -> str:
    """What the car's head unit shows, in a few words."""
    hu = agent.head_unit
    moving = " (moving)" if hu.signals.moving else ""
    if hu.on_screen is not None:
        return f"prompt {hu.on_screen.prompt.stage}{moving}"
    return f"{hu.snapshot()['status']}{moving}"


async def _cloud_ready(
    proc: "subprocess.Popen[bytes]", log: Path, http_port: int, timeout_s: float
) -> bool:
    """Wait until the worker logs that it is subscribed and the API accepts connections."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while proc.poll() is None:
                if b"connected to" in log.read_bytes():
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", http_port)
                    except OSError:
                        pass
                    else:
                        writer.close()
                        await writer.wait_closed()
                        return True
                await asyncio.sleep(0.05)
    return False


async def run_demo(workdir: Path, cars: int, duration_s: float | None) -> int:
    """Run the demo; with ``duration_s`` stop after that long once all cars are verified."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(mode=0o700, parents=True)  # keys, the store and logs: the owner's only
    print(f"Making a dev PKI (CA, broker, cloud, root key; no car identities) in {workdir / 'pki'}")
    pki = write_dev_pki(workdir / "pki", 0)
    db = workdir / "cloud.db"
    seeds = workdir / "policies-by-vin.json"
    vins = [synthetic_vin(i) for i in range(cars)]
    rows = demo_policies(vins, datetime.now(UTC))
    seeds.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    async with await Store.open(db) as store:
        _, np = await import_files(store, None, None, seeds)
    print(f"Cloud store {db}: {np} policies waiting for their cars' VINs")
    admin_token = secrets.token_urlsafe(24)
    token_file = workdir / "admin-token"
    write_private(token_file, admin_token.encode())

    http_port = free_port()
    world = OutsideWorld(pki, http_port)
    async with world:
        world.seed(rows, [vehicle_facts(i, v, demo_plate(i)) for i, v in enumerate(vins)])
        print(
            f"Policy sources (real HTTP servers): national platform {world.national.url}, "
            + ", ".join(f"{c} {i.url}" for c, i in world.insurers.items())
        )
        sources = world.write_config(workdir / "sources.json")
        return await _with_broker(
            workdir, pki, db, token_file, admin_token, cars, duration_s, http_port, sources, world
        )


async def _with_broker(
    workdir: Path,
    pki: DevPki,
    db: Path,
    token_file: Path,
    admin_token: str,
    cars: int,
    duration_s: float | None,
    http_port: int,
    sources: Path,
    world: OutsideWorld,
) -> int:
    with Mosquitto(pki, workdir / "broker") as broker:
        print(f"Mosquitto from broker-config/ on 127.0.0.1:{broker.port} (mTLS, per-car ACL)")
        url = f"https://127.0.0.1:{http_port}"
        log = os.fdopen(os.open(workdir / "cloud.log", os.O_WRONLY | os.O_CREAT, 0o600), "wb")
        cloud = subprocess.Popen(  # noqa: S603, ASYNC220 - our own module, started once
            [sys.executable, "-m", "cloud", "serve", "--pki", str(pki.root), "--db", str(db),
             "--broker-port", str(broker.port), "--http-port", str(http_port),
             "--admin-token-file", str(token_file), "--broker-pid-file", str(broker.pid_file),
             "--sources", str(sources)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        print(
            f"Cloud pid {cloud.pid}: MQTT worker, and the HTTPS API at {url} "
            "(its description: /openapi.json with the admin token)"
        )
        ok = False
        try:
            if not await _cloud_ready(cloud, workdir / "cloud.log", http_port, 30.0):
                print(f"The cloud did not come up; see {workdir / 'cloud.log'}")
                return 1
            operator = await create_fleet(url, pki.ca_cert, admin_token, "demo fleet")
            print(f"Fleet {operator.fleet_id} created; enrolling {cars} gateways with claim tokens")
            configs = await enroll_cars(
                url, pki.ca_cert, pki.root_pub, operator, workdir / "cars", cars,
                lambda d, t: _bar("gateways enrolled", d, t),
            )  # fmt: skip
            # Every car gets a head unit on a free local port and simulated signals.
            configs = [replace(c, head_unit_port=0, bus_poll_s=0.5) for c in configs]
            fleet = SimulatedFleet(configs, [_bus(i) for i in range(len(configs))])
            dashboard = Dashboard(url, pki.ca_cert, operator)
            ok = await _run_fleet(fleet, broker, pki, workdir, duration_s, world, dashboard)
        finally:
            cloud.terminate()
            try:
                cloud.wait(10)
            except subprocess.TimeoutExpired:
                cloud.kill()
            log.close()
    print("Stopped." if ok else "Stopped; not every car got a verified state (see the logs).")
    return 0 if ok else 1


DRIVING: Final = (LAPSED_DRIVING, PENDING_DRIVING)
"""The demo cars being driven though uninsured (lapsed; a term that starts tomorrow):
fleet alerts, never a pop-up (``simulator.fleet.DEMO_ROLES``)."""
ALERT_WAIT_S: Final = 20.0


def _bus(i: int) -> SimulatedBus:
    """Car ``i``'s signals: parked with the ignition on, but the uninsured ones drive."""
    return SimulatedBus(
        ignition_on=True, speed_kmh=40.0 if i in DRIVING else 0.0, vin=synthetic_vin(i)
    )


async def _commute(fleet: SimulatedFleet, every_s: float = 20.0) -> None:
    """Car COMMUTER drives for ``every_s``, then parks for as long, over and over."""
    if fleet.buses is None or len(fleet.buses) <= COMMUTER:
        return
    bus = fleet.buses[COMMUTER]
    while True:
        await asyncio.sleep(every_s)
        bus.speed_kmh = 30.0 if bus.speed_kmh == 0 else 0.0


_DRIVING_ALERT: Final = {
    LAPSED_DRIVING: "lapsed_while_driving",
    PENDING_DRIVING: "pending_while_driving",
}


def _showcase(fleet: SimulatedFleet) -> str:
    """Head-unit URLs of a few cars: one with a prompt on screen first."""
    lines = []
    for a in sorted(fleet.agents, key=lambda a: a.head_unit.on_screen is None)[:3]:
        shown = a.head_unit.snapshot()
        prompt = shown["prompt"]
        what = f"prompt {prompt['stage']} on screen" if prompt else f"status {shown['status']}"
        lines.append(f"  head unit of {a.config.vid} ({what}): {a.head_unit_url}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Dashboard:
    """The fleet dashboard the demo's operator opens."""

    url: str
    ca_file: Path
    operator: Operator

    @property
    def link(self) -> str:
        """The page, with the fleet and its operator token in the fragment (never sent)."""
        return f"{self.url}/fleet#fleet={self.operator.fleet_id}&token={self.operator.token}"

    async def describe(self) -> str:
        """What to open, and what it shows now (read through the fleet API)."""
        total, counts = await fleet_counts(self.url, self.ca_file, self.operator)
        shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        return (
            f"\nFleet dashboard, live (counts, expiry timeline, vehicles, alerts): {total} "
            f"vehicles ({shown}).\n  {self.link}\n"
            f"  (your browser does not know the dev CA, {self.ca_file}: accept its warning)"
        )

    async def alerts(self, wait_for: frozenset[str], timeout_s: float) -> str:
        """The fleet's alerts by kind, once every kind in ``wait_for`` is there (or the
        time is up): the monitor derives them every few seconds."""
        kinds: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            kinds = {}
            for a in await fleet_alerts(self.url, self.ca_file, self.operator):
                kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
            if wait_for <= kinds.keys() or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
        return f"Fleet alerts on the dashboard: {listed}"


def _open_in_browser(url: str) -> None:
    """Open ``url`` where a desktop is there to show it (never in CI or over SSH)."""
    desktop = (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or (sys.platform == "darwin")
    )
    if desktop and not os.environ.get("CI") and not os.environ.get("CTPL_DEMO_NO_BROWSER"):
        with contextlib.suppress(Exception):  # no browser is no reason to stop the demo
            webbrowser.open(url)


async def _run_fleet(
    fleet: SimulatedFleet,
    broker: Mosquitto,
    pki: DevPki,
    workdir: Path,
    duration_s: float | None,
    world: OutsideWorld,
    dashboard: "Dashboard",
) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fleet.run(), name="fleet")
            commute = tg.create_task(_commute(fleet), name="commute")
            print(f"Starting {len(fleet.agents)} cars (each a real agent with its own SQLite)")
            ok = await fleet.wait_all_verified(
                60.0, lambda d, t: _bar("cars holding a verified policy state", d, t)
            )
            await asyncio.sleep(1.0)  # a poll of the buses and a decision for every car
            print(_table(fleet))
            print(await dashboard.describe())
            _open_in_browser(dashboard.link)
            first = workdir / "cars" / "car-000" / "agent.toml"
            print("\nHead units (open in a browser; prompts show live, never while moving):")
            print(_showcase(fleet))
            print("\nRenewal, as three drivers would do it on their head units:")
            for line in await walk_through(fleet.agents, world):
                print(f"  {line}")
            driving = frozenset(f"{_DRIVING_ALERT[i]}" for i in DRIVING if i < len(fleet.agents))
            print(await dashboard.alerts(driving, ALERT_WAIT_S))
            print(
                "\nLook at:\n"
                f"  one car's verified state: .venv/bin/ctpl-agent status --config {first}\n"
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
            commute.cancel()
            fleet.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return ok
