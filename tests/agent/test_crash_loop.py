"""Crash tests against a real Mosquitto: kill -9 the agent process at random points while
signed states stream in and it records intents, and restart the broker mid-stream.

The kill loop runs the real Agent (``intent_driver``: it records a ``vehicle.event``
every 5 ms and prints each id once recorded) and checks, after every kill, the SQLite
file it left behind: it passes ``PRAGMA integrity_check``, its policy state is one
complete record that verifies with the pinned key and whose version never goes back, its
outgoing seq never goes back, every intent it acknowledged is in its outbox, once, and
every stored receipt verifies. The cloud never sees one request seq twice. At the end
the agent runs until its outbox is drained: every intent acknowledged reaches the cloud.
A kill -9 loses the process, not the page cache, so this tests crash consistency; a
power cut also relies on ``synchronous=FULL``.
"""

import asyncio
import contextlib
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import pytest

from agent.config import AgentConfig, dumps_toml
from agent.errors import NotRunningError
from agent.protocol import envelope, messages, topics
from agent.protocol.keys import PublicKey, kid_for, load_public_key
from agent.protocol.messages import IntentReceipt, PolicyState, StatusRequest, VehicleEvent
from agent.runner import Agent
from cloud.pki import DevPki
from simulator.broker import Mosquitto

from .conftest import FakeCloud

ROOT: Final = Path(__file__).resolve().parents[2]
CYCLES: Final = 200
SEED: Final = 20250601
EARLY_SHARE: Final = 0.3
"""The share of kills during start-up (imports, store open, connect)."""
MID_SPAN_S: Final = 0.35
"""Mid-stream kills land this long after start-up at most. Start-up (spawn to the first
acknowledged intent) is measured first on the machine at hand: ~0.3 s with compiled
imports, ~0.6 s when every import compiles (PYTHONDONTWRITEBYTECODE, as in CI)."""
PUSH_EVERY_S: Final = 0.005


@dataclass
class StreamingCloud:
    """Answers every status request with a newer signed state and pushes newer ones unasked."""

    cloud: FakeCloud
    car_key: PublicKey
    vid: str
    make_state: Callable[..., PolicyState]
    version: int = 0
    requests: Counter[int] = field(default_factory=Counter)
    intents: Counter[str] = field(default_factory=Counter)
    """Deliveries per intent id (a resent intent arrives again; its effect counts once)."""
    receipts: int = 0
    pushing: bool = True
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> "StreamingCloud":
        """Start answering and pushing in named tasks (stopped by ``stop``)."""
        self.tasks = [
            asyncio.create_task(self._answer(), name="cloud-answer"),
            asyncio.create_task(self._push(), name="cloud-push"),
        ]
        return self

    async def stop(self) -> None:
        """Cancel the tasks and wait for them."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def publish(self, reply_to: int | None = None) -> mqtt.MQTTMessageInfo:
        """Publish the next version (QoS 1, not waiting for the PUBACK); paho keeps the order."""
        self.version += 1
        state = self.make_state(self.vid, version=self.version, seq=self.version)
        if reply_to is not None:
            state = replace(state, reply_to=reply_to)
        payload = self.cloud.seal_state(state)
        return self.cloud.client.publish(topics.down(self.vid, "policy"), payload, qos=1)

    async def publish_confirmed(self) -> int:
        """Publish the next version, wait for its PUBACK, and return the version."""
        info = self.publish()
        await asyncio.to_thread(info.wait_for_publish, 5.0)
        assert info.is_published()
        return self.version

    async def _answer(self) -> None:
        status, event = topics.up(self.vid, "status"), topics.up(self.vid, "event")
        keys = {kid_for(self.car_key): self.car_key}
        while True:
            got, payload, _ = await self.cloud.inbox.get()
            if got not in (status, event):
                continue
            request = messages.decode(envelope.open_with(got, payload, keys))
            self.requests[request.seq] += 1
            if isinstance(request, StatusRequest):
                self.publish(reply_to=request.seq)
            else:
                assert isinstance(request, VehicleEvent)
                self.intents[request.intent_id] += 1
                self.receipt(request)

    def receipt(self, request: VehicleEvent) -> None:
        """Publish the signed receipt for ``request``'s intent (QoS 1, not waiting)."""
        self.receipts += 1
        body = IntentReceipt(
            vid=self.vid,
            seq=10**9 + self.receipts,
            reply_to=request.seq,
            intent_id=request.intent_id,
            issued_at=datetime.now(UTC),
        )
        topic = topics.down(self.vid, "receipt")
        self.cloud.client.publish(
            topic, self.cloud.signer.seal(topic, messages.encode(body)), qos=1
        )

    async def _push(self) -> None:
        while True:
            await asyncio.sleep(PUSH_EVERY_S)
            if self.pushing and self.cloud.client.is_connected():
                self.publish()


@dataclass(frozen=True)
class Left:
    """What one killed agent left in its SQLite file."""

    integrity: str
    last_seq: int
    version: int | None
    outbox: list[str] = field(default_factory=list)
    """Intent ids in the outbox, in recording order."""
    receipted: set[str] = field(default_factory=set)


def inspect(db: Path, vid: str, key: PublicKey) -> Left:
    """Open the file read-only as a crash left it; raise AssertionError on a bad record."""
    keys = {kid_for(key): key}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        last_seq = 0
        if "seq_counter" in tables:
            row = conn.execute("SELECT last_seq FROM seq_counter WHERE id = 1").fetchone()
            last_seq = 0 if row is None else int(row[0])
        record = None
        if "policy_state" in tables:
            record = conn.execute(
                "SELECT topic, envelope, version, seq FROM policy_state WHERE id = 1"
            ).fetchone()
        outbox: list[str] = []
        receipted: set[str] = set()
        if "outbox" in tables:
            for intent_id, receipt_topic, receipt in conn.execute(
                "SELECT intent_id, receipt_topic, receipt FROM outbox ORDER BY n"
            ):
                outbox.append(intent_id)
                if receipt is not None:
                    body = messages.decode(envelope.open_with(receipt_topic, bytes(receipt), keys))
                    assert isinstance(body, IntentReceipt) and body.intent_id == intent_id
                    receipted.add(intent_id)
    finally:
        conn.close()
    assert len(outbox) == len(set(outbox)), "an intent is in the outbox twice"
    if record is None:
        return Left(integrity, last_seq, None, outbox, receipted)
    topic, env, version, seq = record
    assert topic == topics.down(vid, "policy")
    state = messages.decode(envelope.open_with(topic, bytes(env), keys))
    assert isinstance(state, PolicyState)
    assert (state.vid, state.version, state.seq) == (vid, version, seq)
    return Left(integrity, last_seq, int(version), outbox, receipted)


def write_toml(config: AgentConfig, path: Path) -> Path:
    """The config as the TOML file ``ctpl-agent run --config`` reads."""
    path.write_text(dumps_toml(asdict(config)))
    return path


async def _startup_s(toml: Path, log_path: Path) -> float:
    """Seconds from spawning the driver to its first acknowledged intent (then killed)."""
    with log_path.open("ab") as log:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.agent.intent_driver", str(toml),
            stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(15):
                await proc.stdout.readline()
            return time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


@pytest.mark.timeout(480)  # 200 spawns of a whole agent: ~2 min here, more on a busy CI host
async def test_kill_9_at_random_points_never_corrupts_or_goes_back(
    pki: DevPki,
    vid: str,
    make_config: Any,
    make_state: Any,
    cloud: FakeCloud,
    run_agent: Any,
    tmp_path: Path,
) -> None:
    config = make_config(reply_timeout_s=0.5)
    toml = write_toml(config, tmp_path / "agent.toml")
    car_key = load_public_key((pki.car_dir(vid) / "car.crt").read_bytes())
    cloud_key = load_public_key(pki.signing_pub.read_bytes())
    streaming = StreamingCloud(cloud, car_key, vid, make_state).start()
    rng = random.Random(SEED)
    tally: Counter[str] = Counter()
    version, last_seq = 0, 0
    acked: list[str] = []
    startup = await _startup_s(toml, tmp_path / "agent.log")
    early_s, mid_s = (0.0, startup), (startup, startup + MID_SPAN_S)
    started = time.monotonic()
    try:
        with (tmp_path / "agent.log").open("ab") as log:
            for cycle in range(CYCLES):
                early = rng.random() < EARLY_SHARE
                delay = rng.uniform(*(early_s if early else mid_s))
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.agent.intent_driver", str(toml),
                    stdout=asyncio.subprocess.PIPE, stderr=log, cwd=ROOT,
                )  # fmt: skip
                await asyncio.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                assert proc.stdout is not None
                async with asyncio.timeout(10):
                    out = await proc.stdout.read()
                    code = await proc.wait()
                # Killed, or it died by itself (and its log says why).
                assert code == -signal.SIGKILL, f"cycle {cycle}: agent exited with {code}"
                # Only whole lines: a line cut by the kill was not yet acknowledged.
                acked.extend(line.decode() for line in out.split(b"\n")[:-1])
                if not config.db_path.exists():
                    tally["no_db"] += 1
                    continue
                left = inspect(config.db_path, vid, cloud_key)
                tally["intents_lost"] += len(set(acked) - set(left.outbox))
                tally["intents_recorded"] = len(left.outbox)
                tally["intents_receipted"] = len(left.receipted)
                tally["integrity_ok" if left.integrity == "ok" else "integrity_failed"] += 1
                tally["seq_regressed"] += left.last_seq < last_seq
                if left.version is not None:
                    tally["version_regressed"] += left.version < version
                    tally["new_state"] += left.version > version
                    version = max(version, left.version)
                tally["seq_advanced"] += left.last_seq > last_seq
                last_seq = max(last_seq, left.last_seq)
        elapsed = time.monotonic() - started
        # Then the agent runs once more until its outbox is drained.
        streaming.pushing = False
        async with run_agent(Agent(config)) as agent, asyncio.timeout(30):
            while True:
                with contextlib.suppress(NotRunningError):  # until its store is open
                    if (await agent.outbox())[0] == 0:
                        break
                await asyncio.sleep(0.05)
    finally:
        await streaming.stop()
    final = inspect(config.db_path, vid, cloud_key)
    duplicates = sum(n - 1 for n in streaming.requests.values())
    unrecorded = [s for s in streaming.requests if s > final.last_seq]
    print(
        f"\ncrash loop: {CYCLES} kill -9 cycles in {elapsed:.1f} s (start-up {startup:.2f} s); "
        f"{dict(tally)}; "
        f"requests seen {len(streaming.requests)}, duplicate seqs {duplicates}, "
        f"stored version {version} of {streaming.version} published, last seq {last_seq}; "
        f"intents acknowledged {len(acked)}, in the outbox {len(final.outbox)}, "
        f"receipted {len(final.receipted)}, reached the cloud {len(streaming.intents)} "
        f"(delivered {sum(streaming.intents.values())} times)"
    )
    assert tally["intents_lost"] == 0
    assert len(acked) == len(set(acked)) and set(acked) <= set(final.outbox)
    assert set(final.receipted) == set(final.outbox) == set(streaming.intents)
    assert len(acked) >= CYCLES  # the schedule really recorded intents mid-stream
    assert tally["integrity_failed"] == 0
    assert tally["seq_regressed"] == 0
    assert tally["version_regressed"] == 0
    assert duplicates == 0
    # A seq reaches the cloud only after it was committed.
    assert unrecorded == []
    # The schedule really hit both start-up and the stream.
    assert tally["no_db"] + tally["integrity_ok"] == CYCLES
    assert tally["new_state"] >= CYCLES // 4
    assert tally["seq_advanced"] >= CYCLES // 4


async def test_broker_restart_mid_stream_loses_nothing(
    pki: DevPki,
    vid: str,
    broker: Mosquitto,
    make_config: Any,
    make_state: Any,
    cloud: FakeCloud,
    run_agent: Any,
    until: Any,
) -> None:
    car_key = load_public_key((pki.car_dir(vid) / "car.crt").read_bytes())
    streaming = StreamingCloud(cloud, car_key, vid, make_state).start()
    config = make_config()
    try:
        async with run_agent(Agent(config)) as agent:
            await until(lambda: agent.state is not None and agent.state.version >= 20, "states")
            broker.stop()  # the pusher is still publishing: some are in flight
            await until(lambda: not agent.connected, "noticing the broker is gone")
            broker.start()
            before = agent.counters["accepted"]
            await until(lambda: agent.connected, "reconnecting")
            await until(lambda: agent.counters["accepted"] >= before + 20, "states after restart")
            streaming.pushing = False
            newest = await streaming.publish_confirmed()
            await until(lambda: agent.state is not None and agent.state.version >= newest, "newest")
            assert agent.state is not None and agent.state.version == streaming.version
    finally:
        await streaming.stop()
    assert agent.link_failures["dropped"] >= 1
    assert agent.counters.keys() <= {"accepted", "duplicate"}
    left = inspect(config.db_path, vid, load_public_key(pki.signing_pub.read_bytes()))
    assert (left.integrity, left.version) == ("ok", streaming.version)
