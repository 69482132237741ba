"""Three cloud worker processes on one broker (shared subscription) and one PostgreSQL store.

What must hold: a request is acted on once whichever worker gets it (a copy sent thirty
times is answered once, the rest refused as replays, and no two replies to a car share a
seq); every intent a car recorded reaches the store once and is receipted, while one of
the workers is killed (SIGKILL) mid-stream.
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from agent.protocol import envelope, messages
from agent.runner import Agent
from cloud.fleet_file import import_files
from cloud.pki import DevPki, issue_cloud_identity
from cloud.store import Store
from simulator.broker import Mosquitto, free_port
from simulator.cars import car_config
from simulator.fleet import synthetic_policies

from ..cloud.test_worker import Car
from .helpers import FAST, until
from .test_intents import drained

WORKERS = 3
PER_CAR = 60
"""Intents each of the three cars records, one every 20 ms."""
HANDLED = ("ctpl_requests_accepted", "ctpl_requests_rejected")
CONFLICTS = 'ctpl_worker_events_total{event="counters.conflicts"}'
NEW_INTENTS = 'ctpl_intents_total{result="new"}'
CTPL_CLOUD = Path(sys.executable).parent / "ctpl-cloud"
METRICS_TOKEN = "m" * 32


class WorkerProcess:
    """One ``ctpl-cloud serve`` process with its /metrics on its own port."""

    def __init__(self, pki: DevPki, broker: Mosquitto, db: str, n: int, logs: Path) -> None:
        self.http_port = free_port()
        self.log = logs / f"worker-{n}.log"
        with self.log.open("wb") as log:
            self.proc = self._start(pki, broker, db, n, log)
        self.ca = pki.ca_cert

    def _start(
        self, pki: DevPki, broker: Mosquitto, db: str, n: int, log: BinaryIO
    ) -> "subprocess.Popen[bytes]":
        # A certificate per worker: the broker requires the client id to be its CN.
        me = issue_cloud_identity(pki, f"test-worker-{n}")
        return subprocess.Popen(
            [
                str(CTPL_CLOUD), "serve", "--pki", str(pki.root), "--db", db,
                "--broker-port", str(broker.port), "--client-id", me.cn,
                "--cert", str(me.cert), "--key", str(me.key),
                "--http-port", str(self.http_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "CTPL_ADMIN_TOKEN": "a" * 32, "CTPL_METRICS_TOKEN": METRICS_TOKEN},
        )  # fmt: skip

    def connected(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited: {self.log.read_text()[-2000:]}")
        return "connected to" in self.log.read_text(errors="replace")

    async def metrics(self) -> dict[str, float]:
        """The worker's counters: metric name (with labels) → value."""
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca)) as client:
            r = await client.get(f"https://127.0.0.1:{self.http_port}/metrics",
                                 headers={"Authorization": f"Bearer {METRICS_TOKEN}"})  # fmt: skip
        assert r.status_code == 200, r.text  # a refused scrape must not read as no counters
        text = r.text
        return {
            m[1]: float(m[2])
            for m in re.finditer(r"^(ctpl_\S+) (\S+)$", text, re.M)
            if not m[1].startswith("ctpl_request_latency")
        } | {m[1]: float(m[2]) for m in re.finditer(r"^(ctpl_\S+\{[^}]*\}) (\S+)$", text, re.M)}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
async def workers(
    own_pki: DevPki, own_broker: Mosquitto, db_target: Path | str, tmp_path: Path
) -> AsyncIterator[list[WorkerProcess]]:
    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps(synthetic_policies(own_pki.vids(), datetime.now(UTC))))
    async with await Store.open(db_target) as store:
        await import_files(store, own_pki.vehicles_file, policies)
    procs = [
        WorkerProcess(own_pki, own_broker, str(db_target), n, tmp_path) for n in range(WORKERS)
    ]
    try:
        await until(lambda: all(p.connected() for p in procs), "3 workers connected", 30.0)
        yield procs
    finally:
        for p in procs:
            p.stop()


async def test_a_request_copied_thirty_times_is_answered_once_by_three_workers(
    own_pki: DevPki, own_broker: Mosquitto, workers: list[WorkerProcess]
) -> None:
    car = Car(own_pki, own_pki.vids()[0])
    await car.link.connect(own_broker.host, own_broker.port)
    try:
        await asyncio.sleep(0.3)  # the retained state, if any, arrives first
        while not car.inbox.empty():
            car.inbox.get_nowait()
        copies = car.request(seq=1000)
        for _ in range(30):
            car.send(copies)
        replies: list[messages.Body] = []

        def answered(seqs: range) -> bool:
            while not car.inbox.empty():
                topic, payload = car.inbox.get_nowait()
                body = envelope.open_with(topic, payload, car.cloud_keys)
                replies.append(messages.decode(body))
            return any(getattr(r, "reply_to", None) in seqs for r in replies)

        # Then fresh requests, as a car asks again when unanswered (a reply whose
        # counters lost the race to another worker's write is dropped).
        for fresh in range(1001, 1041):
            car.send(car.request(seq=fresh))
            with contextlib.suppress(AssertionError):
                asked = range(1001, fresh + 1)
                await until(lambda asked=asked: answered(asked), "an answer", 0.5)  # type: ignore[misc]
                break
        else:
            raise AssertionError(f"no fresh request answered: {replies}")
        await asyncio.sleep(1.0)  # late replies to the copies, if any, would arrive now
        answered(range(0))
    finally:
        await car.link.close()
    states = [r for r in replies if isinstance(r, messages.PolicyState)]
    errors = [r for r in replies if isinstance(r, messages.ErrorReply) and r.reply_to == 1000]
    assert [s.reply_to for s in states if s.reply_to == 1000] == [1000], replies
    assert {e.code for e in errors} <= {"replay"}
    seqs = [r.seq for r in replies]
    assert len(seqs) == len(set(seqs)), f"two replies share a seq: {sorted(seqs)}"
    served = [await w.metrics() for w in workers]
    handled = [
        sum(
            v
            for k, v in m.items()
            if k.startswith(("ctpl_requests_accepted", "ctpl_requests_rejected"))
        )
        for m in served
    ]
    assert sum(1 for h in handled if h > 0) >= 2, f"the broker shared nothing: {handled}"
    conflicts = sum(
        m.get('ctpl_worker_events_total{event="counters.conflicts"}', 0) for m in served
    )
    print(
        f"\n3 workers, 30 copies of one request: handled per worker {handled}; 1 state for "
        f"the copies, {len(errors)} replay errors; then {fresh - 1000} fresh request(s) until "
        f"one was answered; {len(states)} states in all, "
        f"{conflicts:.0f} counter writes refused"
    )


async def test_a_killed_worker_loses_no_intent_and_records_none_twice(
    own_pki: DevPki,
    own_broker: Mosquitto,
    db_target: Path | str,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    cars = [
        Agent(car_config(own_pki, vid, tmp_path / "cars", own_broker.port, **FAST))
        for vid in own_pki.vids()
    ]
    assert len(cars) == 3
    tasks = [asyncio.create_task(a.run()) for a in cars]
    recorded: dict[str, list[str]] = {a.config.vid: [] for a in cars}

    async def report(agent: Agent) -> None:
        for n in range(PER_CAR):
            recorded[agent.config.vid].append(await agent.report_event("parked", detail=f"#{n}"))
            await asyncio.sleep(0.02)

    try:
        for a in cars:
            await a.wait_for_state(20.0)
        reporting = [asyncio.create_task(report(a)) for a in cars]
        await until(lambda: sum(map(len, recorded.values())) >= PER_CAR, "a third recorded")
        workers[0].kill()
        await asyncio.gather(*reporting)
        for a in cars:
            await drained(a, 60.0)
    finally:
        for a in cars:
            a.stop()
        async with asyncio.timeout(15):
            await asyncio.gather(*tasks)
    async with await Store.open(db_target) as store:
        rows = await store.intents()
    by_car = Counter(r.vid for r in rows)
    ids = [r.intent_id for r in rows]
    assert len(ids) == len(set(ids)) == 3 * PER_CAR, by_car
    assert {r.vid: sorted(x.intent_id for x in rows if x.vid == r.vid) for r in rows} == {
        vid: sorted(ids_) for vid, ids_ in recorded.items()
    }
    drops = Counter[str]()
    for a in cars:
        drops.update({k: v for k, v in a.counters.items() if k in ("replay", "rollback")})
    assert not drops, f"cars refused cloud messages: {drops}"
    alive = [(await w.metrics()).get(NEW_INTENTS, 0) for w in workers[1:]]
    print(
        f"\n3 workers, one killed after ≥{PER_CAR} of {3 * PER_CAR} intents: {len(ids)} rows, "
        f"{len(set(ids))} distinct; the two left recorded "
        f"{alive} new; cars' "
        f"intent events {dict(sum((a.intent_events for a in cars), Counter()))}"
    )
