"""Holes that Mosquitto 2.0 with a plain ACL file cannot close; see broker-config/README.md.

Each test states what should hold and is marked xfail(strict): it fails today, and
the day a broker change closes the hole it passes, strict xfail turns that into a
failure, and the marker must come off.
"""

import pytest

from .mqtt_probe import QUIET_S, Clients


@pytest.mark.xfail(
    strict=True,
    reason="Mosquitto 2.0's acl_file does not check SUBSCRIBE: a car may join the cloud's "
    "shared group, takes its turn in the round robin, and the read ACL drops those messages",
)
def test_a_car_cannot_take_turns_in_the_clouds_shared_subscription(
    clients: Clients, vids: list[str]
) -> None:
    a, b = vids[0], vids[1]
    cloud = clients.cloud()
    thief = clients.car(a).connect()
    thief_suback = thief.subscribe("$share/cloud/ctpl/v1/+/up/#")
    car_b = clients.car(b).connect()
    sent = [f"request-{i}".encode() for i in range(6)]
    for payload in sent:
        assert car_b.publish(f"ctpl/v1/{b}/up/status", payload) in (0, 16)
    cloud.holds_within(lambda: len(cloud.messages) >= len(sent), QUIET_S * 2)
    got = [m.payload for m in cloud.messages]
    assert thief.messages == []
    assert got == sent, f"cloud got {len(got)} of {len(sent)}; thief SUBACK {thief_suback}"


@pytest.mark.xfail(
    strict=True,
    reason="client ids are not tied to certificates (use_username_as_clientid would make all "
    "cloud workers share one id): any car can connect with another car's vid as client id "
    "and the broker disconnects that car",
)
def test_a_car_cannot_kick_another_car_off_by_reusing_its_client_id(
    clients: Clients, vids: list[str]
) -> None:
    a, b = vids[0], vids[1]
    victim = clients.car(b, client_id=b).connect()
    impostor = clients.car(a, client_id=b)
    impostor.try_connect()
    victim.holds_within(lambda: victim.closed, QUIET_S)
    assert not victim.closed, f"victim {b} was disconnected: {victim.state()}"
