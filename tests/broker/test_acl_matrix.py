"""The ACL as a matrix: every one of 20 cars tries every other car's topics and the wildcards.

Each forged publish must be refused with PUBACK 135 and never reach anyone; each
foreign or wildcard subscription may be granted (Mosquitto 2.0 filters on delivery)
but must deliver nothing foreign. The figure the issue asks for is the count of
attempts that succeeded: it must be 0.
"""

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.pki import DevPki, write_dev_pki
from simulator.broker import Mosquitto

from .mqtt_probe import NOT_AUTHORIZED, Clients, Probe

CARS = 20
UP_KINDS = ("up/status", "up/renewal", "up/event", "presence")
WILDCARDS = ("#", "ctpl/v1/+/down/#", "ctpl/v1/+/up/#", "ctpl/v1/+/presence", "ctpl/#", "+/+/+/+")


@pytest.fixture(scope="module")
def matrix_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("matrix-pki"), cars=CARS)


@pytest.fixture(scope="module")
def matrix_broker(
    matrix_pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mosquitto]:
    broker = Mosquitto(matrix_pki, Path(tmp_path_factory.mktemp("matrix-broker"))).start()
    yield broker
    broker.stop()


@pytest.fixture
def matrix_clients(matrix_pki: DevPki, matrix_broker: Mosquitto) -> Iterator[Clients]:
    made = Clients(matrix_pki, matrix_broker)
    yield made
    made.close_all()


def test_no_car_can_touch_another_cars_topics_or_the_wildcards(
    matrix_pki: DevPki, matrix_clients: Clients
) -> None:
    vids = matrix_pki.vids()
    observer = matrix_clients.cloud(subscribe=False)
    assert observer.subscribe("ctpl/v1/#") == [1]
    cars: dict[str, Probe] = {v: matrix_clients.car(v, client_id=v).connect() for v in vids}

    attempts = succeeded = 0
    for a, car in cars.items():
        for b in vids:
            if b != a:
                car.subscribe(f"ctpl/v1/{b}/down/#")
                attempts += 1
        for pattern in WILDCARDS:
            car.subscribe(pattern)
            attempts += 1
    for (a, car), b in itertools.product(cars.items(), vids):
        if b == a:
            continue
        for kind in (*UP_KINDS, "down/policy", "down/error"):
            code = car.publish(f"ctpl/v1/{b}/{kind}", b"forged:" + a.encode())
            attempts += 1
            succeeded += code != NOT_AUTHORIZED
    for a, car in cars.items():
        # A car may not write its own down topics either: only the cloud speaks there.
        for kind in ("down/policy", "down/renewal"):
            code = car.publish(f"ctpl/v1/{a}/{kind}", b"forged:" + a.encode())
            attempts += 1
            succeeded += code != NOT_AUTHORIZED

    # Deliver one genuine message to every car, then check what each one holds.
    for v in vids:
        assert observer.publish(f"ctpl/v1/{v}/down/policy", b"genuine:" + v.encode()) in (0, 16)
    for v, car in cars.items():
        car.wait_for("its own message", lambda car=car, v=v: any(
            m.payload == b"genuine:" + v.encode() for m in car.messages))  # fmt: skip
    for v, car in cars.items():
        foreign = [m.topic for m in car.messages if m.topic.split("/")[2] != v]
        forged = [m.topic for m in car.messages if m.payload.startswith(b"forged:")]
        succeeded += len(foreign) + len(forged)
        assert not foreign and not forged, f"{v} received {foreign + forged}"
    leaked = [m.topic for m in observer.messages if m.payload.startswith(b"forged:")]
    succeeded += len(leaked)
    assert not leaked, f"forged messages reached the cloud: {leaked[:5]}"
    assert succeeded == 0
    print(f"\nACL matrix: {CARS} cars, {attempts} attempts on others' topics and wildcards, "
          f"{succeeded} succeeded")  # fmt: skip
    assert attempts == CARS * (CARS - 1) * 6 + CARS * 2 + CARS * (CARS - 1 + len(WILDCARDS))
