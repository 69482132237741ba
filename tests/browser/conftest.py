"""Fixtures for the browser tests: one headless Chromium per module (Debian's, driven by
Playwright); per test a real Agent on its own Mosquitto, a FakeCloud that answers as the
cloud, and pages on the agent's head-unit server.

Chromium or Playwright missing is an error, never a skip: these tests are the only check
that the page works in a real browser.
"""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from agent.config import AgentConfig
from agent.protocol import envelope, messages, topics
from agent.protocol.keys import PublicKey, kid_for, load_public_key
from agent.protocol.messages import (
    IntentReceipt,
    PolicyState,
    RenewalRequest,
    RenewalUpdate,
    StatusRequest,
    VehicleEvent,
)
from agent.protocol.vin import vin_digest
from agent.runner import Agent
from agent.vehicle import SimulatedBus
from cloud.pki import DevPki
from simulator.broker import Mosquitto
from tests.agent.conftest import WAIT_S, FakeCloud, eventually, running

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIN = "LSGCAR00000000001"
CHINA = ZoneInfo("Asia/Shanghai")
DAYS_LEFT = 10
"""Days of cover left in the signed state: the d15 reminder stage is due."""
WIDE = (1280, 720)
SMALL = (800, 480)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, for the whole module."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium`", pytrace=False)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Cloud:
    """The FakeCloud acting as the cloud for one car.

    Each status request is answered with ``state`` issued now and replying to its seq,
    which gives the agent fresh trusted time; each intent gets its signed receipt. Every
    up message is also queued, as received, by kind (``status``, ``renewal``, ``event``).
    """

    fake: FakeCloud
    vid: str
    car_key: PublicKey
    state: PolicyState
    received: defaultdict[str, asyncio.Queue[tuple[str, bytes]]] = field(
        default_factory=lambda: defaultdict(asyncio.Queue)
    )
    seq: int = 0
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._serve(), name=f"cloud-{self.vid}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _serve(self) -> None:
        keys = {kid_for(self.car_key): self.car_key}
        while True:
            topic, payload, _ = await self.fake.inbox.get()
            parsed = topics.parse(topic)
            if parsed.direction != "up" or parsed.vid != self.vid:
                continue
            self.received[parsed.kind].put_nowait((topic, payload))
            body = messages.decode(envelope.open_with(topic, payload, keys))
            if isinstance(body, StatusRequest):
                self._reply(body.seq)
            elif isinstance(body, RenewalRequest | VehicleEvent):
                self._receipt(body)

    def _publish(self, kind: Any, body: Any) -> None:
        topic = topics.down(self.vid, kind)
        # Not waiting for the PUBACK: the cloud must not stall when the broker is stopped.
        self.fake.client.publish(topic, self.fake.signer.seal(topic, messages.encode(body)), qos=1)

    def _reply(self, request_seq: int) -> None:
        self.seq += 1
        now = datetime.now(UTC)
        state = replace(
            self.state,
            seq=self.seq,
            issued_at=now,
            fresh_until=now + timedelta(days=7),
            verified_at=now,
            reply_to=request_seq,
        )
        self._publish("policy", state)

    def push_state(self, state: PolicyState) -> None:
        """Make ``state`` the car's state (a newer version) and push it, unsolicited."""
        self.seq += 1
        self.state = replace(state, version=self.state.version + 1)
        now = datetime.now(UTC)
        pushed = replace(self.state, seq=self.seq, issued_at=now, reply_to=None,
                         fresh_until=min(self.state.fresh_until, now + timedelta(days=7)),
                         verified_at=now)  # fmt: skip
        self._publish("policy", pushed)

    def push_renewal(self, update: RenewalUpdate) -> None:
        """Send the car a renewal update (quotes, payment link, result) under a fresh seq."""
        self.seq += 1
        self._publish("renewal", replace(update, seq=self.seq, issued_at=datetime.now(UTC)))

    def _receipt(self, request: RenewalRequest | VehicleEvent) -> None:
        self.seq += 1
        receipt = IntentReceipt(
            vid=self.vid,
            seq=self.seq,
            reply_to=request.seq,
            intent_id=request.intent_id,
            issued_at=datetime.now(UTC),
        )
        self._publish("receipt", receipt)

    async def next(self, kind: str) -> tuple[str, bytes]:
        """The next up message of ``kind`` as received: topic and envelope bytes."""
        async with asyncio.timeout(WAIT_S):
            return await self.received[kind].get()


def expiring_state(vid: str) -> PolicyState:
    """A verified-looking state with DAYS_LEFT days of cover, for ``vid`` driving VIN."""
    now = datetime.now(UTC)
    end = now.astimezone(CHINA).date() + timedelta(days=DAYS_LEFT)
    return PolicyState(
        vid=vid,
        seq=1,
        version=1,
        issued_at=now,
        fresh_until=now + timedelta(days=7),
        status="expiring",
        insurer_code="PICC",
        insurer_name="PICC P&C",
        policy_no_masked="PDZA****1234",
        coverage_start=end - timedelta(days=364),
        coverage_end=end,
        source="national",
        verified_at=now,
        plate_masked="沪A·****8",
        claims_phone="95518",
        vin_digest=vin_digest(vid, VIN),
    )


@dataclass
class Car:
    """A running agent with a prompt on its head unit, and what the test drives it with."""

    agent: Agent
    bus: SimulatedBus
    cloud: Cloud
    broker: Mosquitto
    pki: DevPki
    vid: str
    url: str

    def snapshot(self) -> dict[str, Any]:
        return self.agent.head_unit.snapshot()

    @property
    def car_key(self) -> PublicKey:
        return self.cloud.car_key


@pytest_asyncio.fixture(loop_scope="module")
async def car(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Car]:
    """A real Agent (simulated bus, parked, ignition on) verified by the cloud: prompt due."""
    async with a_car(own_pki, own_broker, tmp_path) as running_car:
        yield running_car


@contextlib.asynccontextmanager
async def a_car(
    own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path, **changes: Any
) -> AsyncIterator[Car]:
    """A real Agent (simulated bus, parked, ignition on) that the cloud verified with
    ``expiring_state`` (the d15 prompt on screen); ``changes`` change its AgentConfig."""
    vid = own_pki.vids()[0]
    car_dir = own_pki.car_dir(vid)
    fake = FakeCloud(own_pki, own_broker, asyncio.get_running_loop())
    await fake.start()
    key = load_public_key((car_dir / "car.crt").read_bytes())
    cloud = Cloud(fake, vid, key, expiring_state(vid))
    cloud.start()
    config = AgentConfig(
        vid=vid,
        key_file=car_dir / "car.key",
        cert_file=car_dir / "car.crt",
        ca_file=own_pki.ca_cert,
        cloud_keys=(own_pki.signing_pub,),
        broker_host=own_broker.host,
        broker_port=own_broker.port,
        db_path=tmp_path / "agent.db",
        reply_timeout_s=0.5,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        operation_timeout_s=WAIT_S,
        head_unit_port=0,
        bus_poll_s=0.05,
    )
    config = replace(config, **changes)
    bus = SimulatedBus(vin=VIN)
    agent = Agent(config, bus=bus)
    try:
        async with running(agent):
            await eventually(
                lambda: agent.head_unit_url is not None and agent.head_unit.on_screen is not None,
                "a prompt on the head unit",
            )
            assert agent.head_unit_url is not None
            yield Car(agent, bus, cloud, own_broker, own_pki, vid, agent.head_unit_url)
    finally:
        await cloud.stop()
        fake.close()


@dataclass
class Screen:
    """One page on the head unit in its own browser context; what went wrong in it."""

    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    expected: tuple[str, ...] = ()
    """Substrings of problems a test provokes on purpose (aborted requests)."""

    def note(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(e in p for e in self.expected)]


async def open_screen(browser: Browser, url: str, size: tuple[int, int] = WIDE) -> Screen:
    """A fresh context at ``size`` with the page loaded."""
    context = await browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = await context.new_page()
    screen = Screen(context, page)
    page.on("console", screen.note)
    page.on("pageerror", lambda exc: screen.problems.append(f"page error: {exc}"))
    await page.goto(url)
    return screen


@pytest_asyncio.fixture(loop_scope="module")
async def screen(browser: Browser, car: Car) -> AsyncIterator[Screen]:
    """The head unit's page at 1280×720; fails the test on console errors or CSP refusals."""
    opened = await open_screen(browser, car.url)
    try:
        yield opened
    finally:
        await opened.context.close()
    assert not opened.unexpected(), opened.problems
