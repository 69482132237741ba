"""The ACL of broker-config/, enforced by a real Mosquitto on real mTLS identities.

Observed with Mosquitto 2.0 and the identity plugin: a PUBLISH the ACL refuses gets PUBACK
135 "Not authorized"; a SUBSCRIBE outside the car's own down/ topics gets SUBACK 135 (the
plugin; the acl_file alone never checks SUBSCRIBE), and the read rules are still applied
to each message on delivery. What matters most is checked on what arrives: no foreign
message is ever delivered.
"""

import pytest

from .mqtt_probe import GRANTED, NOT_AUTHORIZED, REFUSED, Clients, Probe

ACCEPTED = (0, 16)
"""PUBACK "Success" or "No matching subscribers": the broker took the message."""


def _vid_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 else topic


def _marker(cloud: Probe, car: Probe, vid: str, text: bytes) -> None:
    """Send ``text`` on ``vid``'s own down/error and wait until ``car`` has it.

    Mosquitto handles one connection's packets in order, so once the marker is in,
    anything published before it that was going to be delivered has been delivered.
    """
    assert cloud.publish(f"ctpl/v1/{vid}/down/error", text) in ACCEPTED
    car.wait_for(f"marker {text!r}", lambda: any(m.payload == text for m in car.messages))


def test_car_publishes_on_its_own_up_status_and_the_cloud_receives_it(
    clients: Clients, vids: list[str]
) -> None:
    a = vids[0]
    cloud = clients.cloud()
    car = clients.car(a).connect()
    assert car.publish(f"ctpl/v1/{a}/up/status", b"status-request-1") == 0
    [got] = cloud.wait_messages(1)
    assert (got.topic, got.payload, got.qos) == (f"ctpl/v1/{a}/up/status", b"status-request-1", 1)


@pytest.mark.parametrize("qos", [1, 0])
def test_car_publishing_on_another_cars_up_topic_is_refused(
    clients: Clients, vids: list[str], qos: int
) -> None:
    a, b = vids[0], vids[1]
    cloud = clients.cloud()
    car = clients.car(a).connect()
    code = car.publish(f"ctpl/v1/{b}/up/status", b"forged-by-a", qos=qos)
    if qos == 1:
        assert code == NOT_AUTHORIZED
    # The refused message is dropped: only the legitimate one that follows arrives.
    assert car.publish(f"ctpl/v1/{a}/up/status", b"legit-from-a") == 0
    cloud.wait_messages(1)
    assert [(m.topic, m.payload) for m in cloud.messages] == [
        (f"ctpl/v1/{a}/up/status", b"legit-from-a")
    ]
    assert not car.closed, "a refused publish does not cost the car its connection"


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("ctpl/v1/{A}/up/status", True),
        ("ctpl/v1/{A}/up/renewal", True),
        ("ctpl/v1/{A}/up/event", True),
        ("ctpl/v1/{A}/presence", True),
        ("ctpl/v1/{B}/up/status", False),
        ("ctpl/v1/{B}/up/renewal", False),
        ("ctpl/v1/{B}/presence", False),
        ("ctpl/v1/{A}/down/policy", False),
        ("ctpl/v1/{A}/down/renewal", False),
        ("ctpl/v1/{A}/down/error", False),
        ("ctpl/v1/{B}/down/policy", False),
        ("ctpl/v1/ctpl-cloud/up/status", False),
        ("ctpl/v1/{A}", False),
        ("ctpl/v2/{A}/up/status", False),
        ("ctpl/v1/{A}x/up/status", False),
        ("other/topic", False),
        ("$SYS/broker/version", False),
    ],
)
def test_car_publish_acl(clients: Clients, vids: list[str], topic: str, allowed: bool) -> None:
    a, b = vids[0], vids[1]
    car = clients.car(a).connect()
    code = car.publish(topic.format(A=a, B=b), b"probe")
    if allowed:
        assert code in ACCEPTED
    else:
        assert code == NOT_AUTHORIZED


@pytest.mark.parametrize(
    "filter_",
    [
        "#",
        "ctpl/v1/+/down/#",
        "ctpl/v1/{B}/down/#",
        "ctpl/v1/{B}/down/policy",
        "ctpl/#",
        "$share/cloud/ctpl/v1/+/up/#",
    ],
)
def test_car_is_refused_and_receives_nothing_of_another_car(
    clients: Clients, vids: list[str], filter_: str
) -> None:
    a, b = vids[0], vids[1]
    cloud = clients.cloud(subscribe=False)
    car_b = clients.car(b).connect()
    assert car_b.subscribe(f"ctpl/v1/{b}/down/#") == [1]
    # B's current state, retained before A subscribes.
    assert cloud.publish(f"ctpl/v1/{b}/down/policy", b"B-retained", retain=True) in ACCEPTED
    assert car_b.publish(f"ctpl/v1/{b}/presence", b"online", retain=True) in ACCEPTED

    car_a = clients.car(a).connect()
    subacks = {
        filter_.format(B=b): car_a.subscribe(filter_.format(B=b)),
        f"ctpl/v1/{a}/down/#": car_a.subscribe(f"ctpl/v1/{a}/down/#"),
    }
    # Live traffic of B's, in every direction, then a marker on A's own topic.
    assert cloud.publish(f"ctpl/v1/{b}/down/policy", b"B-live") in ACCEPTED
    assert cloud.publish(f"ctpl/v1/{b}/down/renewal", b"B-renewal") in ACCEPTED
    assert car_b.publish(f"ctpl/v1/{b}/up/status", b"B-request") in ACCEPTED
    _marker(cloud, car_a, a, b"marker-for-a")

    assert subacks == {filter_.format(B=b): REFUSED, f"ctpl/v1/{a}/down/#": GRANTED}
    foreign = [(m.topic, m.payload) for m in car_a.messages if _vid_of(m.topic) != a]
    assert foreign == [], f"A received another car's messages; SUBACK codes were {subacks}"
    # The control: the messages existed and B, their owner, got them.
    car_b.wait_for("B's own messages", lambda: len(car_b.messages) >= 3)
    assert {m.payload for m in car_b.messages} >= {b"B-retained", b"B-live", b"B-renewal"}


def test_car_receives_its_own_down_policy_retained_and_live(
    clients: Clients, vids: list[str]
) -> None:
    a = vids[0]
    cloud = clients.cloud(subscribe=False)
    assert cloud.publish(f"ctpl/v1/{a}/down/policy", b"A-state-v7", retain=True) in ACCEPTED
    car = clients.car(a).connect()
    assert car.subscribe(f"ctpl/v1/{a}/down/#") == [1]
    [retained] = car.wait_messages(1)
    assert (retained.topic, retained.payload, retained.retain) == (
        f"ctpl/v1/{a}/down/policy",
        b"A-state-v7",
        True,
    )
    assert cloud.publish(f"ctpl/v1/{a}/down/policy", b"A-state-v8", retain=True) == 0
    live = car.wait_messages(2)[1]
    assert (live.payload, live.retain, live.qos) == (b"A-state-v8", False, 1)


@pytest.mark.parametrize("owner", ["own", "other"])
@pytest.mark.parametrize("kind", ["policy", "renewal", "error"])
def test_car_cannot_publish_on_down_topics(
    clients: Clients, vids: list[str], owner: str, kind: str
) -> None:
    a, b = vids[0], vids[1]
    target = a if owner == "own" else b
    cloud = clients.cloud(subscribe=False)
    victim = clients.car(target).connect()
    assert victim.subscribe(f"ctpl/v1/{target}/down/#") == [1]

    forger = clients.car(a).connect() if target != a else victim
    topic = f"ctpl/v1/{target}/down/{kind}"
    assert forger.publish(topic, b"your insurance lapsed, pay here") == NOT_AUTHORIZED
    assert forger.publish(topic, b"forged retained", retain=True) == NOT_AUTHORIZED

    _marker(cloud, victim, target, b"marker-after-forgery")
    # Retained state from earlier tests may arrive on subscribe; every live message is counted.
    live = [m.payload for m in victim.messages if not m.retain]
    assert live == [b"marker-after-forgery"]


def test_forged_retained_policy_never_replaces_the_clouds(
    clients: Clients, vids: list[str]
) -> None:
    a = vids[2]
    cloud = clients.cloud(subscribe=False)
    assert cloud.publish(f"ctpl/v1/{a}/down/policy", b"cloud-signed-state", retain=True) in (
        ACCEPTED
    )
    car = clients.car(a).connect()
    forged = car.publish(f"ctpl/v1/{a}/down/policy", b"forged-state", retain=True)
    assert forged == NOT_AUTHORIZED
    fresh = clients.car(a).connect()
    assert fresh.subscribe(f"ctpl/v1/{a}/down/policy") == [1]
    [got] = fresh.wait_messages(1)
    assert (got.payload, got.retain) == (b"cloud-signed-state", True)


def test_cloud_reads_and_writes_every_vehicle(clients: Clients, vids: list[str]) -> None:
    cloud = clients.cloud()
    for vid in vids:
        assert cloud.publish(f"ctpl/v1/{vid}/down/error", b"to-" + vid.encode()) in ACCEPTED
    for i, vid in enumerate(vids):
        car = clients.car(vid).connect()
        assert car.publish(f"ctpl/v1/{vid}/up/event", b"from-" + vid.encode()) == 0
        cloud.wait_messages(i + 1)
    assert sorted(m.payload for m in cloud.messages) == sorted(b"from-" + v.encode() for v in vids)


@pytest.mark.parametrize("claimed", ["ctpl-cloud", "{B}", "#", "%u"])
def test_username_sent_in_connect_is_ignored_the_certificate_decides(
    clients: Clients, vids: list[str], claimed: str
) -> None:
    a, b = vids[0], vids[1]
    car = clients.car(a, username=claimed.format(B=b)).connect()
    assert car.publish(f"ctpl/v1/{b}/down/policy", b"forged") == NOT_AUTHORIZED
    assert car.publish(f"ctpl/v1/{b}/up/status", b"forged") == NOT_AUTHORIZED
    assert car.publish(f"ctpl/v1/{a}/up/status", b"own") in ACCEPTED
