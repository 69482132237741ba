"""``make bench``: signed round trips per second through one cloud worker, and the crypto ceiling.

Load: one generator process holds ``cars`` real mTLS connections (each with its own car
certificate), each car with one request in flight; requests are signed before the clock
starts and replies are counted, not verified, so the generator spends its CPU on MQTT
only. The worker is a separate ``ctpl-cloud serve`` process doing the full work (verify,
parse, replay check, group commit to SQLite, build, sign, publish). Where the machine
has two cores the worker is pinned to one and the broker and generator to the other.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.protocol import envelope, messages, topics
from agent.protocol.keys import generate_private_key, load_private_key, sign_raw, verify_raw
from cloud.fleet_file import import_files
from cloud.link import tls_context
from cloud.pki import DevPki, write_dev_pki
from cloud.store import Store

from .broker import Mosquitto
from .fleet import synthetic_policies
from .loadgen import LeanClient


@dataclass(frozen=True)
class CryptoFigures:
    verify_us: float
    sign_us: float

    @property
    def ceiling_per_s(self) -> float:
        """Round trips per second one core could do if it did nothing but the crypto."""
        return 1e6 / (self.verify_us + self.sign_us)


def measure_crypto(n: int = 4000) -> CryptoFigures:
    """Time ES256 verify and sign of a typical request/reply on this core (the code path used)."""
    key = generate_private_key()
    pub = key.public_key()
    msg = envelope.signing_input("ctpl/v1/vaaaaaaaaaaaaaaaa/up/status", b"x" * 60)
    sig = sign_raw(key, msg)
    t0 = time.perf_counter()
    for _ in range(n):
        verify_raw(pub, sig, msg)
    t1 = time.perf_counter()
    for _ in range(n):
        sign_raw(key, msg)
    t2 = time.perf_counter()
    return CryptoFigures((t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6)


@dataclass
class LoadFigures:
    cars: int
    seconds: float
    round_trips: int
    latencies_ms: list[float]
    total_replies: int = 0
    """Replies during warm-up and measurement: what the CPU figures cover."""
    cpu: dict[str, float] | None = None
    """CPU seconds each process used during warm-up and measurement."""

    @property
    def per_s(self) -> float:
        return self.round_trips / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class _LoadCar:
    def __init__(self, pki: DevPki, vid: str, requests: int) -> None:
        d = pki.car_dir(vid)
        signer = envelope.Signer(load_private_key(d / "car.key"))
        self.topic = topics.up(vid, "status")
        self.reply_topic = topics.down(vid, "policy")
        self.payloads = [
            signer.seal(self.topic, messages.encode(messages.StatusRequest(vid=vid, seq=s)))
            for s in range(1, requests + 1)
        ]
        self.next = 0
        self.sent_at = 0.0
        self.vid = vid
        self.tls = tls_context(pki.ca_cert, d / "car.crt", d / "car.key")
        self.link = LeanClient(vid, self._on_message)  # client id = the certificate's CN
        self.on_reply: Callable[[_LoadCar, str], None] | None = None

    def _on_message(self, topic: str, _payload: bytes) -> None:
        if self.on_reply is not None:
            self.on_reply(self, topic)

    def send(self) -> bool:
        if self.next >= len(self.payloads):
            return False
        self.sent_at = time.perf_counter()
        self.link.publish(self.topic, self.payloads[self.next])
        self.next += 1
        return True


async def _drive(cars: list[_LoadCar], seconds: float, warmup_s: float) -> LoadFigures:
    latencies: list[float] = []
    count = 0
    errors = 0
    measuring = False
    done = asyncio.Event()

    total = 0

    def on_reply(car: _LoadCar, topic: str) -> None:
        nonlocal count, errors, total
        total += 1
        if topic != car.reply_topic:
            errors += 1
        if measuring:
            count += 1
            latencies.append((time.perf_counter() - car.sent_at) * 1000)
        if not car.send():
            done.set()

    for car in cars:
        car.on_reply = on_reply
    # Drop retained states from earlier runs: subscribe first, then start.
    await asyncio.sleep(0.3)
    for car in cars:
        car.send()
    await asyncio.sleep(warmup_s)
    measuring = True
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(seconds):
            await done.wait()
    except TimeoutError:
        pass
    measuring = False
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{errors} error replies during the benchmark")
    return LoadFigures(len(cars), elapsed, count, latencies, total)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(pid, {cpu})


async def run_load(
    workdir: Path, cars: int, seconds: float, warmup_s: float = 2.0, rate_hint: int = 8000
) -> LoadFigures:
    """Start broker and one worker process, drive ``cars`` cars for ``seconds``; return figures."""
    pki = write_dev_pki(workdir / "pki", cars)
    db = workdir / "cloud.db"
    policies = workdir / "policies.json"
    policies.write_text(json.dumps(synthetic_policies(pki.vids(), datetime.now(UTC))))
    async with await Store.open(db) as store:
        await import_files(store, pki.vehicles_file, policies)
    per_car = int(rate_hint * (seconds + warmup_s + 5) / cars) + 10
    load = [_LoadCar(pki, vid, per_car) for vid in pki.vids()]
    with Mosquitto(pki, workdir / "broker") as broker:
        _pin(broker.proc.pid, 1) if broker.proc else None
        _pin(0, 1)
        worker_log = (workdir / "worker.log").open("wb")
        worker = subprocess.Popen(  # noqa: S603, ASYNC220 - our own module, started once
            [
                sys.executable,
                "-m",
                "cloud",
                "serve",
                "--pki",
                str(pki.root),
                "--db",
                str(db),
                "--broker-port",
                str(broker.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=worker_log,
            start_new_session=True,
        )
        _pin(worker.pid, 0)
        try:
            for car in load:
                await car.link.connect(
                    broker.host,
                    broker.port,
                    car.tls,
                    [topics.down(car.vid, "policy"), topics.down(car.vid, "error")],
                )
            await asyncio.sleep(1.5)  # the worker connects and subscribes
            pids = {
                "worker": worker.pid,
                "broker": broker.proc.pid if broker.proc else 0,
                "generator": os.getpid(),
            }
            before = {k: _cpu_s(p) for k, p in pids.items()}
            figures = await _drive(load, seconds, warmup_s)
            figures.cpu = {k: (_cpu_s(p) - before[k]) for k, p in pids.items()}
            return figures
        finally:
            for car in load:
                await car.link.close()
            worker.terminate()
            worker.wait(10)
            worker_log.close()


def report(
    crypto: CryptoFigures, loaded: LoadFigures, single: LoadFigures, rates: list[float]
) -> str:
    """The Markdown section for docs/benchmarks.md; ``loaded`` is the median of ``rates``."""
    ratio = loaded.per_s / crypto.ceiling_per_s
    spread = ", ".join(f"{r:,.0f}" for r in rates)
    worker_us = (loaded.cpu or {}).get("worker", 0.0) / max(loaded.total_replies, 1) * 1e6
    return f"""## Signed status round trips through one cloud worker

Measured {datetime.now(UTC):%Y-%m-%d} with `make bench` (`ctpl-sim bench`) on this machine
({os.cpu_count()} cores, Python {sys.version.split()[0]}).

| figure | value |
|---|---|
| ES256 verify, one core | {crypto.verify_us:.1f} µs |
| ES256 sign (r‖s), one core | {crypto.sign_us:.1f} µs |
| crypto ceiling 1 / (t_verify + t_sign) | {crypto.ceiling_per_s:,.0f} round trips/s |
| one worker, {loaded.cars} cars (median of {len(rates)} runs) | **{loaded.per_s:,.0f}/s** |
| all runs, round trips/s | {spread} |
| ratio of the median to the ceiling (target ≥ 0.5) | **{ratio:.2f}** |
| worker CPU per round trip (median run) | {worker_us:.0f} µs |
| latency under that load, p50 / p99 | {loaded.pct(50):.2f} / {loaded.pct(99):.2f} ms |
| one request at a time (one car), p50 / p99 | {single.pct(50):.2f} / {single.pct(99):.2f} ms |
| one request at a time, round trips/s | {single.per_s:,.0f} |

How the load was made: one generator process holds {loaded.cars} mTLS MQTT 3.1.1
connections (a lean asyncio client, `simulator/loadgen.py`; paho's per-packet cost made
the generator the bottleneck at ≈ 2k/s),
one per simulated car with its own certificate; each car sends its next signed
`status.request` (QoS 1) as soon as its `policy.state` reply arrives. Requests are
signed before the clock starts and replies are counted, not verified, so the
generator spends its CPU on MQTT only. The worker is a separate `ctpl-cloud serve`
process doing the full work per request: envelope parse, ES256 verify, strict body
parse, replay check, group commit of the counters to SQLite (WAL, synchronous=FULL)
before any reply of the batch is sent, build and sign the `policy.state`, publish it
retained at QoS 1. The worker is pinned to CPU 0, the broker and the generator to
CPU 1. Warm-up {2.0:.0f} s, then {loaded.seconds:.1f} s measured
({loaded.round_trips:,} round trips).
"""


def main(out: Path | None, cars: int, seconds: float, runs: int = 3) -> int:
    """Run the benchmark (the loaded part ``runs`` times) and write (or print) the report."""
    crypto = measure_crypto()
    print(
        f"crypto: verify {crypto.verify_us:.1f} µs, sign {crypto.sign_us:.1f} µs, "
        f"ceiling {crypto.ceiling_per_s:,.0f}/s"
    )
    with tempfile.TemporaryDirectory(prefix="ctpl-bench-") as tmp:
        single = asyncio.run(run_load(Path(tmp) / "single", 1, min(5.0, seconds), 1.0, 2000))
        print(f"one at a time: p50 {single.pct(50):.2f} ms, {single.per_s:,.0f}/s")
        all_runs = []
        for i in range(runs):
            run = asyncio.run(run_load(Path(tmp) / f"loaded{i}", cars, seconds))
            all_runs.append(run)
            print(
                f"loaded run {i + 1}/{runs}: {run.per_s:,.0f}/s with {cars} cars, "
                f"p99 {run.pct(99):.2f} ms, ratio {run.per_s / crypto.ceiling_per_s:.2f}"
            )
    all_runs.sort(key=lambda r: r.per_s)
    loaded = all_runs[len(all_runs) // 2]
    text = report(crypto, loaded, single, [r.per_s for r in all_runs])
    if out is None:
        print(text)
    else:
        _write_section(out, "## Signed status round trips", text)
        print(f"wrote {out}")
    return 0


def _write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section starting with ``heading`` in ``path`` (or append it)."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from `make bench`.\n"
    start = old.find(heading)
    if start < 0:
        path.write_text(old.rstrip() + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(heading))
    path.write_text(old[:start] + text + (old[end + 1 :] if end >= 0 else ""))
