"""Fixtures for the agent's tests: a dev PKI, a real Mosquitto, a fake cloud, agent configs."""

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig
from agent.protocol import messages, topics
from agent.protocol.envelope import Signer
from agent.protocol.keys import load_private_key
from agent.protocol.messages import PolicyState
from agent.runner import Agent
from cloud.pki import DevPki, issue_cloud_identity, write_dev_pki
from simulator.broker import Mosquitto

WAIT_S = 5.0
"""The longest any single wait in these tests may take."""

NOW = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A dev PKI with two cars, shared by the session."""
    return write_dev_pki(tmp_path_factory.mktemp("agent-pki"), cars=2)


@pytest.fixture
def broker(pki: DevPki, tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto from broker-config/ per test: no session or retained message lingers."""
    with Mosquitto(pki, tmp_path / "broker") as running:
        yield running


@pytest.fixture
def vid(pki: DevPki) -> str:
    """The first car's vid."""
    return pki.vids()[0]


@pytest.fixture
def make_config(pki: DevPki, broker: Mosquitto, tmp_path: Path) -> Callable[..., AgentConfig]:
    """Build an AgentConfig for car ``index`` against the test's broker."""

    def build(index: int = 0, **changes: Any) -> AgentConfig:
        car = pki.vids()[index]
        values: dict[str, Any] = {
            "vid": car,
            "key_file": pki.car_dir(car) / "car.key",
            "cert_file": pki.car_dir(car) / "car.crt",
            "ca_file": pki.ca_cert,
            "cloud_keys": (pki.signing_pub,),
            "broker_host": broker.host,
            "broker_port": broker.port,
            "db_path": tmp_path / f"agent-{car}.db",
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "operation_timeout_s": WAIT_S,
        }
        values.update(changes)
        return AgentConfig(**values)

    return build


def policy_state(vid: str, version: int, seq: int, **changes: Any) -> PolicyState:
    """A plausible active PolicyState for ``vid``, fresh for a week after NOW."""
    values: dict[str, Any] = {
        "vid": vid,
        "seq": seq,
        "version": version,
        "issued_at": NOW,
        "fresh_until": NOW + timedelta(days=7),
        "status": "active",
        "insurer_code": "PICC",
        "insurer_name": "PICC P&C",
        "policy_no_masked": "PDZA****1234",
        "coverage_start": date(2024, 12, 1),
        "coverage_end": date(2025, 11, 30),
        "source": "national",
        "verified_at": NOW,
    }
    values.update(changes)
    return PolicyState(**values)


@pytest.fixture
def make_state() -> Callable[..., PolicyState]:
    """The ``policy_state`` factory, as a fixture."""
    return policy_state


class FakeCloud:
    """A raw paho client with the cloud's certificate: sees ctpl/v1/#, signs as the cloud."""

    def __init__(self, pki: DevPki, broker: Mosquitto, loop: asyncio.AbstractEventLoop) -> None:
        self.signer = Signer(load_private_key(pki.signing_key))
        self.inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self._loop = loop
        self._subscribed = threading.Event()
        self._broker = broker
        ident = issue_cloud_identity(pki, "fake")  # its own worker identity: client id = CN
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=ident.cn, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(pki.ca_cert), certfile=str(ident.cert), keyfile=str(ident.key)
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        item = (msg.topic, bytes(msg.payload), bool(msg.retain))
        self._loop.call_soon_threadsafe(self.inbox.put_nowait, item)

    async def start(self) -> None:
        """Connect and subscribe to every vehicle's topics."""
        self.client.connect(self._broker.host, self._broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe("ctpl/v1/#", qos=1)
        assert await asyncio.to_thread(self._subscribed.wait, WAIT_S), "no SUBACK"

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()
        # loop_start() made a wake-up socket pair that only paho's __del__ would close.
        self.client._reset_sockets(sockpair_only=True)

    async def receive(self, topic: str) -> tuple[bytes, bool]:
        """The next message on ``topic`` (others are skipped): payload and retain flag."""
        async with asyncio.timeout(WAIT_S):
            while True:
                got, payload, retain = await self.inbox.get()
                if got == topic:
                    return payload, retain

    def seal_state(self, state: PolicyState, signer: Signer | None = None) -> bytes:
        """The envelope of ``state`` for its vehicle's down/policy topic."""
        topic = topics.down(state.vid, "policy")
        return (signer or self.signer).seal(topic, messages.encode(state))

    async def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        await asyncio.to_thread(info.wait_for_publish, WAIT_S)
        assert info.is_published()

    async def send_state(self, state: PolicyState, **kwargs: Any) -> bytes:
        """Seal and publish ``state`` on its down/policy topic; return the envelope."""
        retain = kwargs.pop("retain", False)
        payload = self.seal_state(state, **kwargs)
        await self.send(topics.down(state.vid, "policy"), payload, retain=retain)
        return payload


@pytest.fixture
async def new_cloud(pki: DevPki, broker: Mosquitto) -> AsyncIterator[Callable[[], Any]]:
    """Start another FakeCloud on the test's broker (closed after the test)."""
    made: list[FakeCloud] = []

    async def start() -> FakeCloud:
        fake = FakeCloud(pki, broker, asyncio.get_running_loop())
        made.append(fake)
        await fake.start()
        return fake

    yield start
    for fake in made:
        fake.close()


@pytest.fixture
async def cloud(new_cloud: Callable[[], Any]) -> FakeCloud:
    """A connected FakeCloud on the test's broker."""
    fake: FakeCloud = await new_cloud()
    return fake


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """Run ``agent`` in a task for the block; stop it and wait for it after."""
    task = asyncio.create_task(agent.run(), name="agent-under-test")
    try:
        yield agent
    finally:
        agent.stop()
        async with asyncio.timeout(WAIT_S * 2):
            await task


@pytest.fixture
def run_agent() -> Callable[[Agent], Any]:
    """The ``running`` context manager, as a fixture."""
    return running


async def eventually(check: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``check`` until it holds, at most WAIT_S."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {WAIT_S} s") from None


@pytest.fixture
def until() -> Callable[..., Any]:
    """The ``eventually`` poller, as a fixture."""
    return eventually
