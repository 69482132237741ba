"""The targets the attacks run against: the real broker (Mosquitto from broker-config/ with
the identity plugin), a real cloud worker on a real SQLite store, raw cars that sign what
they are told, and the checks made after every attack: did anything crash, does the worker
still answer a legitimate signed request.

``Cloud`` wraps ``tests.cloud.conftest.start_worker`` and ``tests.cloud.test_worker.Car``;
nothing of ours is stood in for.
"""

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.protocol import envelope, messages, topics
from agent.protocol.errors import ProtocolError
from cloud.pki import DevPki
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto
from tests.cloud.conftest import start_worker
from tests.cloud.test_worker import Car

REPLY_S: Final = 5.0
"""The longest the cloud may take to answer one request."""
QUIET_S: Final = 0.2
"""How long to listen for a late message after the last answer."""


@dataclass(frozen=True)
class Heard:
    """One message a car received: its topic and verified body (None if it did not verify)."""

    topic: str
    body: messages.AnyBody | None
    payload: bytes

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Stored:
    """What the store holds of one vehicle: what a refused request must leave as it was."""

    last_seq: int
    version: int
    intents: int
    policy: object


@dataclass
class Cloud:
    """A running worker on the real broker, and the cars that talk to it."""

    pki: DevPki
    broker: Mosquitto
    db: Path
    worker: Worker
    task: "asyncio.Task[None]"
    cars: dict[str, Car] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)

    @property
    def vids(self) -> list[str]:
        return self.pki.vids()

    async def car(self, vid: str) -> Car:
        """Car ``vid`` connected (once), its retained state read and set aside."""
        car = self.cars.get(vid)
        if car is None:
            car = self.cars[vid] = Car(self.pki, vid)
            await car.link.connect(self.broker.host, self.broker.port)
            await asyncio.sleep(0.05)  # a retained state, if any, arrives on subscribing
            self.drain(car)
        return car

    @staticmethod
    def drain(car: Car) -> list[tuple[str, bytes]]:
        """Everything queued for ``car``, taken out."""
        out = []
        while not car.inbox.empty():
            out.append(car.inbox.get_nowait())
        return out

    def next_seq(self, vid: str) -> int:
        """A ``seq`` above any this car used (the cloud's counter starts at 0)."""
        self.seqs[vid] = self.seqs.get(vid, 0) + 1
        return self.seqs[vid]

    def hear(self, car: Car, topic: str, payload: bytes) -> Heard:
        """``payload`` received by ``car`` on ``topic``, verified with the cloud's keys."""
        try:
            body = messages.decode(envelope.open_with(topic, payload, car.cloud_keys))
        except ProtocolError:
            return Heard(topic, None, payload)
        return Heard(topic, body, payload)

    async def next_heard(self, car: Car, timeout_s: float = REPLY_S) -> Heard | None:
        """The next message ``car`` receives, or None if none comes within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                topic, payload = await car.inbox.get()
        except TimeoutError:
            return None
        return self.hear(car, topic, payload)

    async def late(self, car: Car) -> list[Heard]:
        """Whatever else arrives for ``car`` within QUIET_S."""
        await asyncio.sleep(QUIET_S)
        return [self.hear(car, t, p) for t, p in self.drain(car)]

    def sign(self, car: Car, kind: topics.UpKind, body: bytes) -> bytes:
        """``body`` sealed by ``car``'s own key for its own up/``kind`` topic."""
        return car.signer.seal(topics.up(car.vid, kind), body)

    def status_request(self, car: Car, seq: int | None = None) -> tuple[int, bytes]:
        """A genuine ``status.request`` of ``car``: its seq and envelope."""
        seq = self.next_seq(car.vid) if seq is None else seq
        body = messages.encode(messages.StatusRequest(vid=car.vid, seq=seq))
        return seq, self.sign(car, "status", body)

    def renewal_request(self, car: Car, action: str = "already_renewed") -> tuple[int, str, bytes]:
        """A genuine ``renewal.request`` of ``car``: its seq, intent id and envelope."""
        seq, intent = self.next_seq(car.vid), secrets.token_hex(16)
        body = messages.RenewalRequest(vid=car.vid, seq=seq, intent_id=intent, action=action)  # type: ignore[arg-type]
        return seq, intent, self.sign(car, "renewal", messages.encode(body))

    def publish(self, car: Car, kind: topics.UpKind, payload: bytes) -> None:
        assert car.link.publish(topics.up(car.vid, kind), payload), "not connected"

    async def answers(self, vid: str | None = None) -> bool:
        """Whether the worker answers a legitimate signed request with a verified state."""
        car = await self.car(vid or self.vids[0])
        self.drain(car)
        seq, payload = self.status_request(car)
        self.publish(car, "status", payload)
        deadline = asyncio.get_running_loop().time() + REPLY_S
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            heard = await self.next_heard(car, left)
            if heard is None:
                return False
            body = heard.body
            if isinstance(body, messages.PolicyState) and body.reply_to == seq:
                return True
        return False

    def crashed(self) -> list[str]:
        """What has died or failed untyped since the start: empty when nothing."""
        found = []
        if self.task.done():
            found.append("the worker task ended")
        if self.worker.counters["internal_error"]:
            found.append(f"{self.worker.counters['internal_error']} handler exceptions")
        handler = self.worker.handler
        if handler is not None and handler.counters["rejected.internal"]:
            found.append("internal error replies")
        if self.broker.proc is None or self.broker.proc.poll() is not None:
            found.append("the broker exited")
        return found

    async def stored(self, vid: str) -> Stored:
        async with await Store.open(self.db) as store:
            vehicle = (await store.load_vehicles()).get(vid)
            intents = await store.intents(vid)
            policy = (await store.load_policies(vid)).get(vid)
        assert vehicle is not None, vid
        return Stored(vehicle.last_seq, vehicle.version, len(intents), policy)

    async def stop_worker(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def restart_worker(self) -> None:
        """Kill the worker and start a new one on the same store."""
        await self.stop_worker()
        self.worker, self.task = await start_worker(self.pki, self.broker, self.db, seed=False)

    async def close_cars(self) -> None:
        for car in self.cars.values():
            await car.link.close()
        self.cars.clear()

    async def close(self) -> None:
        await self.close_cars()
        await self.stop_worker()


@asynccontextmanager
async def running_cloud(pki: DevPki, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Cloud]:
    """A worker on a fresh store seeded with the PKI's cars, on ``broker``."""
    db = tmp_path / "cloud.db"
    worker, task = await start_worker(pki, broker, db)
    cloud = Cloud(pki, broker, db, worker, task)
    try:
        yield cloud
    finally:
        await cloud.close()
