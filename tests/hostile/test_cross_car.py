"""One car against another through the real broker (the identity plugin and ACL from
broker-config/), with a real worker serving the victim: another car's topics, the
wildcards, the cloud's shared group, another car's client id, several connections.

The attacker is a bare paho probe (tests/broker/mqtt_probe.py) holding its own certificate;
blocking probe calls run in threads so that the worker keeps serving meanwhile.
"""

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from agent.protocol import topics
from tests.broker.mqtt_probe import NOT_AUTHORIZED, QUIET_S, REFUSED, Clients, Probe

from .conftest import TallyFactory
from .figures import Tally
from .harness import Cloud

GROUP = "cross-car (broker)"


@pytest.fixture
def probes(cloud: Cloud) -> Iterator[Clients]:
    made = Clients(cloud.pki, cloud.broker)
    yield made
    made.close_all()


def _foreign(probe: Probe, vid: str) -> list[str]:
    """Topics of messages ``probe`` (car ``vid``) received that are not its own."""
    with probe._cond:
        return [m.topic for m in probe.messages if not m.topic.startswith(f"ctpl/v1/{vid}/")]


async def _connect(probe: Probe) -> Probe:
    return await asyncio.to_thread(probe.connect)


async def _subscribe_refused(row: Tally, probe: Probe, filters: list[str]) -> None:
    for filter_ in filters:
        codes = await asyncio.to_thread(probe.subscribe, filter_)
        row.record(refused=codes == REFUSED, what=f"SUBSCRIBE {filter_} -> {codes}")


async def _victim_traffic(cloud: Cloud, victim: str, requests: int = 3) -> int:
    """``requests`` legitimate requests of ``victim`` and the worker's answers; how many
    were answered (each answer is a state on the victim's down/policy)."""
    answered = 0
    for _ in range(requests):
        answered += await cloud.answers(victim)
    car = await cloud.car(victim)
    cloud.publish(car, "status", b"not an envelope")  # and an error on its down/error
    heard = await cloud.next_heard(car)
    assert heard is not None and heard.topic == topics.down(victim, "error")
    return answered


async def _after(row: Tally, cloud: Cloud, attacker: Probe, vid: str) -> None:
    await asyncio.sleep(QUIET_S)
    foreign = _foreign(attacker, vid)
    if foreign:
        row.leaked += len(foreign)
        row.notes.append(f"the attacker received {foreign[:3]}")
    if not await cloud.answers(cloud.vids[0]) or cloud.crashed():
        row.crashed("the worker no longer answers a signed request")
    row.check()


async def test_publishing_on_another_cars_topics_is_refused(
    cloud: Cloud, probes: Clients, tally: TallyFactory
) -> None:
    row = tally(
        "publish on another car's up topic (and on down topics)",
        group=GROUP,
        expected="PUBACK 135, nothing delivered",
    )
    attacker_vid, victim = cloud.vids[2], cloud.vids[1]
    watch = await _connect(probes.cloud_probe("watch"))
    assert await asyncio.to_thread(watch.subscribe, "ctpl/v1/#") == [1]
    attacker = await _connect(probes.car(attacker_vid))
    targets = [
        topics.up(victim, "status"),
        topics.up(victim, "renewal"),
        topics.up(victim, "event"),
        topics.presence(victim),
        topics.down(victim, "policy"),
        topics.down(attacker_vid, "policy"),  # its own down: a state only the cloud may send
        topics.down(attacker_vid, "error"),
    ]
    markers: dict[bytes, str] = {}
    for topic in targets:
        marker = f"forged-by-{attacker_vid}-{secrets.token_hex(8)}".encode()
        markers[marker] = topic
        code = await asyncio.to_thread(attacker.publish, topic, marker, retain=True)
        row.record(refused=code == NOT_AUTHORIZED, what=f"PUBLISH {topic} -> {code}")
    marker0 = b"qos0-" + secrets.token_hex(8).encode()
    markers[marker0] = topics.up(victim, "status")
    await asyncio.to_thread(attacker.publish, topics.up(victim, "status"), marker0, qos=0)
    await asyncio.sleep(QUIET_S)
    delivered = {m.payload for m in watch.messages} & set(markers)
    row.record(
        refused=marker0 not in delivered,
        leaked=marker0 in delivered,
        what="QoS 0 PUBLISH on the victim's up/status",
    )
    row.leaked += len(delivered - {marker0})
    # A car connecting later gets no retained forgery either.
    late = await _connect(probes.cloud_probe("late"))
    assert await asyncio.to_thread(late.subscribe, "ctpl/v1/#") == [1]
    await asyncio.sleep(QUIET_S)
    row.leaked += len({m.payload for m in late.messages} & set(markers))
    assert not attacker.closed, "a refused publish does not cost the car its connection"
    await _after(row, cloud, attacker, attacker_vid)


async def test_subscribing_to_another_cars_down_topics_or_the_wildcards_is_refused(
    cloud: Cloud, probes: Clients, tally: TallyFactory
) -> None:
    down = tally(
        "subscribe to another car's down topic",
        group=GROUP,
        expected="SUBACK 135, nothing received",
    )
    wild = tally(
        "subscribe to `#` and other wildcards", group=GROUP, expected="SUBACK 135, nothing received"
    )
    attacker_vid, victim = cloud.vids[2], cloud.vids[1]
    await cloud.answers(victim)  # the victim has a retained state by now
    attacker = await _connect(probes.car(attacker_vid))
    await _subscribe_refused(
        down,
        attacker,
        [
            f"ctpl/v1/{victim}/down/#",
            f"ctpl/v1/{victim}/down/policy",
            f"ctpl/v1/{victim}/down/error",
            f"ctpl/v1/{victim}/#",
            "ctpl/v1/+/down/#",
            "ctpl/v1/+/down/policy",
            f"ctpl/v1/{victim}/+/policy",
        ],
    )
    await _subscribe_refused(
        wild,
        attacker,
        [
            "#",
            "+/#",
            "ctpl/#",
            "ctpl/v1/#",
            "ctpl/v1/+/up/#",
            "ctpl/v1/+/presence",
            "+/+/+/down/policy",
            "$SYS/#",
            "+",
            "ctpl/v1/+/+/+",
        ],
    )
    # The victim's traffic, each way: states (retained and live) and an error.
    assert await _victim_traffic(cloud, victim) == 3
    await _after(down, cloud, attacker, attacker_vid)
    await _after(wild, cloud, attacker, attacker_vid)


async def test_a_car_cannot_join_the_clouds_shared_group(
    cloud: Cloud, probes: Clients, tally: TallyFactory
) -> None:
    row = tally(
        "join the cloud's group (`$share/cloud/…`)",
        group=GROUP,
        expected="SUBACK 135; the worker answers 12 of 12 of the victim's requests",
    )
    attacker_vid, victim = cloud.vids[2], cloud.vids[1]
    attacker = await _connect(probes.car(attacker_vid))
    await _subscribe_refused(
        row,
        attacker,
        [
            topics.CLOUD_SHARED_SUBSCRIPTION,
            f"$share/cloud/ctpl/v1/{victim}/up/#",
            "$share/cloud/#",
            "$share/cloud/ctpl/v1/+/up/status",
            "$share/cars/ctpl/v1/+/up/#",
        ],
    )
    answered = await _victim_traffic(cloud, victim, requests=12)
    if answered != 12:
        row.leaked += 12 - answered
        row.notes.append(f"the worker answered {answered} of the victim's 12 requests")
    await _after(row, cloud, attacker, attacker_vid)


async def test_a_car_cannot_take_over_another_client_id(
    cloud: Cloud, probes: Clients, tally: TallyFactory
) -> None:
    row = tally(
        "client-id takeover (another car's vid, the worker's id)",
        group=GROUP,
        expected="CONNACK 135; the victim stays connected",
    )
    attacker_vid, victim = cloud.vids[2], cloud.vids[1]
    victim_car = await cloud.car(victim)
    worker_id = cloud.worker.config.client_id
    claims = [victim, worker_id, "ctpl-cloud-1", victim.upper(), f"{victim} ", ""]
    for claimed in claims:
        probe = probes.car(attacker_vid, client_id=claimed)
        accepted = await asyncio.to_thread(probe.try_connect)
        code = probe.connack.value if probe.connack is not None else None
        await asyncio.sleep(0.1)
        kicked = not victim_car.link.connected
        row.record(
            refused=not accepted and code == NOT_AUTHORIZED,
            leaked=kicked,
            what=f"client id {claimed!r} -> {code}",
        )
    # Also claiming the victim's name as the username: the certificate decides.
    probe = probes.car(attacker_vid, client_id=victim, username=victim)
    accepted = await asyncio.to_thread(probe.try_connect)
    row.record(
        refused=not accepted,
        leaked=not victim_car.link.connected,
        what="client id and username the victim's",
    )
    assert await cloud.answers(victim), "the victim is still served"
    attacker = await _connect(probes.car(attacker_vid))
    await _after(row, cloud, attacker, attacker_vid)


async def test_one_car_cannot_hold_several_connections(
    cloud: Cloud, probes: Clients, tally: TallyFactory
) -> None:
    row = tally(
        "several connections of one car",
        group=GROUP,
        expected="CONNACK 135 for every client id but its CN",
    )
    attacker_vid, victim = cloud.vids[2], cloud.vids[1]
    first = await _connect(probes.car(attacker_vid))
    for suffix in ("-1", "-2", "-3", "-4", "/x", "#"):
        probe = probes.car(attacker_vid, client_id=attacker_vid + suffix)
        accepted = await asyncio.to_thread(probe.try_connect)
        row.record(refused=not accepted, what=f"client id {attacker_vid + suffix!r}")
    # A second connection under its own CN replaces the first (a car reconnecting).
    second = await _connect(probes.car(attacker_vid))
    await asyncio.to_thread(first.wait_closed)
    await _subscribe_refused(row, second, [topics.CLOUD_SHARED_SUBSCRIPTION])
    answered = await _victim_traffic(cloud, victim, requests=12)
    assert answered == 12
    await _after(row, cloud, second, attacker_vid)
