"""Limits of broker-config/: packet size, QoS ceiling, what the broker tells MQTT 5 clients."""

from simulator.broker import Mosquitto

from .mqtt_probe import Clients, poll_until

KIB = 1024
MAX_PACKET_BYTES = 64 * KIB


def test_connack_advertises_the_limits(clients: Clients, vids: list[str]) -> None:
    probe = clients.car(vids[0]).connect()
    assert probe.connack_properties is not None
    props = vars(probe.connack_properties)
    assert props["MaximumPacketSize"] == MAX_PACKET_BYTES
    # max_qos sits in the listener section; placed before it, this would not be sent.
    assert props["MaximumQoS"] == 1
    # max_inflight_messages: how many QoS 1 messages the broker sends before waiting for acks.
    assert props["ReceiveMaximum"] == 100


def test_payload_over_max_packet_size_gets_the_client_disconnected(
    clients: Clients, vids: list[str], mosquitto: Mosquitto
) -> None:
    a = vids[0]
    cloud = clients.cloud()
    car = clients.car(a).connect()
    info = car.client.publish(f"ctpl/v1/{a}/up/status", b"x" * (70 * KIB), qos=1)
    car.wait_closed()
    assert info.mid not in car.pubacks, "an oversize packet must not be acknowledged"
    # Nothing reached the cloud: a marker from another connection arrives alone.
    other = clients.car(a).connect()
    assert other.publish(f"ctpl/v1/{a}/up/status", b"after-oversize") == 0
    cloud.wait_messages(1)
    assert [m.payload for m in cloud.messages] == [b"after-oversize"]
    poll_until(
        "'oversize packet' in the broker log",
        lambda: "oversize packet" in mosquitto.log_path.read_text(errors="replace"),
    )


def test_payload_just_under_max_packet_size_is_delivered(clients: Clients, vids: list[str]) -> None:
    # The control for the test above: the limit is the packet size, not something smaller.
    a = vids[0]
    cloud = clients.cloud()
    car = clients.car(a).connect()
    payload = b"y" * (MAX_PACKET_BYTES - 200)
    assert car.publish(f"ctpl/v1/{a}/up/status", payload) == 0
    [got] = cloud.wait_messages(1)
    assert got.payload == payload
    assert not car.closed


def test_subscription_qos_is_capped_at_1(clients: Clients, vids: list[str]) -> None:
    a = vids[0]
    car = clients.car(a).connect()
    assert car.subscribe(f"ctpl/v1/{a}/down/#", qos=2) == [1]


def test_publish_at_qos_2_gets_the_client_disconnected(clients: Clients, vids: list[str]) -> None:
    a = vids[0]
    cloud = clients.cloud()
    car = clients.car(a).connect()
    car.client.publish(f"ctpl/v1/{a}/up/status", b"qos2", qos=2)
    car.wait_closed()
    other = clients.car(a).connect()
    assert other.publish(f"ctpl/v1/{a}/up/status", b"after-qos2") == 0
    cloud.wait_messages(1)
    assert [m.payload for m in cloud.messages] == [b"after-qos2"]
