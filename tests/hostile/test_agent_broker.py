"""A malicious broker against a real agent (``tests/hostile/fake_broker.py``): junk on the
car's topics, packets past the maximum the car announced, forged and replayed states, broken
MQTT. The agent refuses each (a counted drop, or a dropped and counted session that it
reconnects), keeps its last good state, and never crashes: it still takes a newer genuine
state afterwards."""

import asyncio
import base64
import gc
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.link import MAX_PACKET_BYTES
from agent.protocol import messages, topics
from agent.protocol.envelope import Signer
from agent.protocol.keys import P256_ORDER, b64url, generate_private_key, load_private_key
from agent.runner import Agent
from cloud.pki import DevPki
from tests.agent.conftest import policy_state, running

from .conftest import TallyFactory
from .fake_broker import HostileBroker, Session, hostile_broker, publish_packet
from .figures import Tally

GROUP = "hostile broker → agent"
WAIT_S = 5.0


@dataclass
class Car:
    """A real agent connected to the hostile broker, and what it should hold."""

    agent: Agent
    broker: HostileBroker
    session: Session
    cloud: Signer
    vid: str
    other_vid: str
    version: int = 0
    """The version of the last genuine state the agent accepted."""

    def state(self, version: int, seq: int, **changes: object) -> bytes:
        """A genuine state (the cloud's key) for this car's down/policy."""
        body = messages.encode(policy_state(self.vid, version=version, seq=seq, **changes))
        return self.cloud.seal(topics.down(self.vid, "policy"), body)

    async def until(self, check: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not check():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def intact(self) -> bool:
        """The agent runs, holds the last genuine state, and never failed untyped."""
        held = self.agent.state
        return (
            held is not None
            and held.version == self.version
            and held.status == "active"
            and self.agent.renewal is None
            and self.agent.counters["internal"] == 0
        )

    async def takes_a_newer_state(self) -> bool:
        """Whether a newer genuine state is accepted now (the agent still works)."""
        if self.session.closed.is_set():
            self.session = await self.broker.next_session()
        self.version += 1
        await self.session.publish(
            topics.down(self.vid, "policy"), self.state(self.version, 100 + self.version)
        )
        return await self.until(
            lambda: self.agent.state is not None and self.agent.state.version == self.version
        )


@asynccontextmanager
async def agent_on_hostile_broker(pki: DevPki, tmp_path: Path) -> AsyncIterator[Car]:
    vid, other = pki.vids()[0], pki.vids()[1]
    async with hostile_broker(pki) as broker:
        config = AgentConfig(
            vid=vid,
            key_file=pki.car_dir(vid) / "car.key",
            cert_file=pki.car_dir(vid) / "car.crt",
            ca_file=pki.ca_cert,
            cloud_keys=(pki.signing_pub,),
            broker_port=broker.port,
            db_path=tmp_path / "agent.db",
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
            operation_timeout_s=WAIT_S,
        )
        agent = Agent(config)
        async with running(agent):
            session = await broker.next_session()
            car = Car(agent, broker, session, Signer(load_private_key(pki.signing_key)), vid, other)
            assert await car.takes_a_newer_state(), "the agent takes a genuine state"
            yield car
            assert not car.agent.link_failures.keys() - {
                "dropped",
                "connect",
                "publish",
                "subscribe",
            }


async def _counted(
    row: Tally, car: Car, what: str, reason: str, send: Callable[[], object]
) -> None:
    """Send one attack; it holds when the agent counts ``reason`` and stays intact."""
    before = car.agent.counters[reason]
    sent = send()
    if asyncio.iscoroutine(sent):
        await sent
    counted = await car.until(lambda: car.agent.counters[reason] > before)
    row.record(refused=counted, leaked=not car.intact(), what=f"{what}: {dict(car.agent.counters)}")


def _refusals(car: Car) -> tuple[int, int]:
    """What the agent has refused so far: messages dropped unread, sessions dropped."""
    return car.agent.counters["bad_envelope"], sum(car.agent.link_failures.values())


async def _finish(row: Tally, car: Car) -> None:
    if not await car.takes_a_newer_state() or not car.intact():
        row.crashed("the agent no longer takes a genuine state")
    row.check()


async def test_junk_and_packets_past_the_cars_maximum_are_counted_and_dropped(
    own_pki: DevPki, tmp_path: Path, tally: TallyFactory
) -> None:
    junk = tally(
        "junk on the car's down topics",
        group=GROUP,
        expected="counted drop `bad_envelope`, last state kept",
    )
    big = tally(
        "packets past the car's Maximum Packet Size (16 KiB)",
        group=GROUP,
        expected="counted drop or dropped session; last state kept",
    )
    async with agent_on_hostile_broker(own_pki, tmp_path) as car:
        s = car.session
        for kind in ("policy", "renewal", "error", "receipt"):
            topic = topics.down(car.vid, kind)
            for payload in (
                b"junk",
                b"",
                b"\xff" * 100,
                b"[" * 3000,
                b'{"v":1}',
                b"x" * 3000,
                b"null",
            ):
                await _counted(
                    junk,
                    car,
                    f"{kind} {payload[:8]!r}",
                    "bad_envelope",
                    partial(s.publish, topic, payload),
                )
        await _finish(junk, car)

        for size in (MAX_PACKET_BYTES + 1024, 100 * 1024, 1_500_000):

            def seen(before: tuple[int, int] = _refusals(car)) -> bool:
                return _refusals(car) != before

            session = car.session
            await session.publish(topics.down(car.vid, "policy"), b"x" * size)
            refused = await car.until(seen)
            big.record(
                refused=refused,
                leaked=not car.intact(),
                what=f"{size:,} bytes: counters {dict(car.agent.counters)}, "
                f"link failures {dict(car.agent.link_failures)}",
            )
            if session.closed.is_set():
                car.session = await car.broker.next_session()
        await _finish(big, car)


async def test_forged_and_replayed_states_are_refused_and_the_last_good_one_kept(
    own_pki: DevPki, tmp_path: Path, tally: TallyFactory
) -> None:
    row = tally(
        "forged states from the broker",
        group=GROUP,
        expected="counted drop (bad_signature, unknown_key, vid_mismatch, bad_envelope)",
    )
    rollback = tally(
        "an old genuine state replayed (rollback)", group=GROUP, expected="counted drop `rollback`"
    )
    async with agent_on_hostile_broker(own_pki, tmp_path) as car:
        assert await car.takes_a_newer_state()  # version 2 held; version 1 is in the past
        old = car.state(1, 50)
        s = car.session
        own = topics.down(car.vid, "policy")
        lapsed = dict(status="lapsed", coverage_end=None, coverage_start=None)
        rogue = Signer(generate_private_key())
        pinned_kid = car.cloud.kid
        forged = json.loads(
            rogue.seal(own, messages.encode(policy_state(car.vid, version=99, seq=99, **lapsed)))
        )
        genuine = json.loads(car.state(99, 99, **lapsed))
        sig = base64.urlsafe_b64decode(genuine["sig"] + "==")
        high_s = bytes(sig[:32]) + (P256_ORDER - int.from_bytes(sig[32:], "big")).to_bytes(
            32, "big"
        )
        other_state = car.cloud.seal(
            topics.down(car.other_vid, "policy"),
            messages.encode(policy_state(car.other_vid, version=99, seq=99, **lapsed)),
        )
        cases = [
            (
                "a rogue key under the pinned kid",
                own,
                json.dumps({**forged, "kid": pinned_kid}).encode(),
                "bad_signature",
            ),
            ("a rogue key and its own kid", own, json.dumps(forged).encode(), "unknown_key"),
            (
                "the high-S twin of a genuine state",
                own,
                json.dumps({**genuine, "sig": b64url(high_s)}).encode(),
                "bad_signature",
            ),
            (
                "alg none, lapsed",
                own,
                json.dumps({**genuine, "alg": "none", "sig": ""}).encode(),
                "bad_envelope",
            ),
            ("another car's genuine state on this car's topic", own, other_state, "bad_signature"),
            (
                "another car's genuine state on its own topic",
                topics.down(car.other_vid, "policy"),
                other_state,
                "vid_mismatch",
            ),
            (
                "a genuine state on down/renewal",
                topics.down(car.vid, "renewal"),
                car.state(99, 99),
                "bad_signature",
            ),
            (
                "a forged renewal update with a payment link",
                topics.down(car.vid, "renewal"),
                rogue.seal(topics.down(car.vid, "renewal"), b'{"type":"renewal.update"}'),
                "unknown_key",
            ),
        ]
        for what, topic, payload, reason in cases:
            await _counted(row, car, what, reason, partial(s.publish, topic, payload))
        for attempt in range(3):
            await _counted(
                rollback,
                car,
                f"version 1 again ({attempt + 1})",
                "rollback",
                lambda: s.publish(own, old, retain=True),
            )
        await _finish(row, car)
        await _finish(rollback, car)


def _untyped(caplog: pytest.LogCaptureFixture) -> int:
    """Exceptions that escaped into the MQTT library's callback handling (paho logs each
    as "Caught exception in …" and leaves the packet unread: not a typed refusal)."""
    return sum("Caught exception" in r.getMessage() for r in caplog.records)


async def _broken(
    row: Tally,
    car: Car,
    caplog: pytest.LogCaptureFixture,
    what: str,
    data: bytes,
    *,
    may_ignore: bool = False,
) -> None:
    """Send broken MQTT; it holds when the session is dropped and counted (or, with
    ``may_ignore``, when the agent ignores it and still takes a newer genuine state), the
    agent reconnects, no exception escaped untyped, and the last state is kept."""
    failures = sum(car.agent.link_failures.values())
    escaped = _untyped(caplog)
    await car.session.send_raw(data)
    dropped = await car.until(
        lambda: sum(car.agent.link_failures.values()) > failures, 1.0 if may_ignore else WAIT_S
    )
    if dropped:
        car.session = await car.broker.next_session()
    ignored = may_ignore and not dropped and await car.takes_a_newer_state()
    untyped = _untyped(caplog) - escaped
    row.record(
        refused=(dropped or ignored) and not untyped,
        leaked=not car.intact(),
        crashed=bool(untyped),
        what=f"{what}: link failures {dict(car.agent.link_failures)}, "
        f"{untyped} exceptions escaped untyped",
    )


async def test_broken_mqtt_from_the_broker_drops_the_session_not_the_agent(
    own_pki: DevPki, tmp_path: Path, tally: TallyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    row = tally(
        "broken MQTT from the broker",
        group=GROUP,
        expected="session dropped and counted, reconnected, last state kept",
    )
    async with agent_on_hostile_broker(own_pki, tmp_path) as car:
        own = topics.down(car.vid, "policy")
        cases = [
            ("0xff bytes", b"\xff" * 16),
            ("a bad remaining length", b"\x30\xff\xff\xff\xff\x7f"),
            ("a reserved packet type", b"\x00\x00"),
            ("a PUBLISH at QoS 3", b"\x36" + publish_packet(own, b"x", 9)[1:]),
            ("a PUBLISH whose topic runs past its end", b"\x32\x04\xff\xff\x00\x01"),
        ]
        for what, data in cases:
            await _broken(row, car, caplog, what, data)
        # paho ignores a CONNACK out of turn: harmless, as long as the agent carries on.
        await _broken(
            row, car, caplog, "a second CONNACK", b"\x20\x03\x00\x00\x00", may_ignore=True
        )
        await _finish(row, car)


async def test_a_publish_whose_topic_is_not_utf8_is_refused_like_other_broken_mqtt(
    own_pki: DevPki, tmp_path: Path, tally: TallyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT requires UTF-8 topics; paho hands the raw bytes to aiomqtt's callback, whose
    ``message.topic`` decodes them."""
    row = tally(
        "a PUBLISH whose topic is not UTF-8 (broker → agent)",
        group=GROUP,
        expected="session dropped and counted, no untyped exception, last state kept",
    )
    try:
        async with agent_on_hostile_broker(own_pki, tmp_path) as car:
            for topic in (b"\xff\xfe", b"ctpl/v1/" + car.vid.encode() + b"/down/\xc0\xaf"):
                await _broken(row, car, caplog, f"topic {topic!r}", publish_packet(topic, b"x", 9))
            await _finish(row, car)
    finally:
        gc.collect()  # a socket the MQTT library left open is this test's, not the next one's
