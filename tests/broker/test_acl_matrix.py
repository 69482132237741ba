"""The ACL as a matrix: every one of 20 enrolled cars tries every other car's topics and wildcards.

The cars get their identities the production way: a fleet, claim tokens, and
``ctpl-agent enroll`` against the cloud's real HTTPS API (no pre-baked certificates).

Each forged publish must be refused with PUBACK 135 and never reach anyone; each
foreign or wildcard subscription must be refused with SUBACK 135 (the identity plugin)
and deliver nothing foreign. The figure the issue asks for is the count of attempts
that succeeded: it must be 0.
"""

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from cloud.config import CloudConfig
from cloud.pki import DevPki, write_dev_pki
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port
from simulator.enroller import create_fleet, enroll_cars

from .mqtt_probe import GRANTED, NOT_AUTHORIZED, REFUSED, Clients, Probe

CARS = 20
UP_KINDS = ("up/status", "up/renewal", "up/event", "presence")
WILDCARDS = ("#", "ctpl/v1/+/down/#", "ctpl/v1/+/up/#", "ctpl/v1/+/presence", "ctpl/#", "+/+/+/+")


@pytest.fixture(scope="module")
def matrix_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return write_dev_pki(tmp_path_factory.mktemp("matrix-pki"), cars=0)


@pytest.fixture(scope="module")
def enrolled(
    matrix_pki: DevPki, matrix_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> list[AgentConfig]:
    """CARS gateways enrolled through a real cloud (worker + HTTPS API), which then stops."""
    work = tmp_path_factory.mktemp("matrix-cloud")
    config = CloudConfig.from_pki(
        matrix_pki, db_path=work / "cloud.db", broker_port=matrix_broker.port,
        http_port=free_port(), admin_token="matrix-admin-token-0123456789",
    )  # fmt: skip

    async def enroll_all() -> list[AgentConfig]:
        worker = Worker(config)
        task = asyncio.create_task(worker.run(), name="matrix-cloud")
        try:
            async with asyncio.timeout(30):
                await worker.api_ready.wait()
                url = f"https://127.0.0.1:{config.http_port}"
                op = await create_fleet(url, matrix_pki.ca_cert, "matrix-admin-token-0123456789",
                                        "matrix")  # fmt: skip
                return await enroll_cars(
                    url, matrix_pki.ca_cert, matrix_pki.root_pub, op, work / "cars", CARS
                )
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return asyncio.run(enroll_all())


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
    enrolled: list[AgentConfig], matrix_clients: Clients
) -> None:
    vids = [c.vid for c in enrolled]
    assert len(set(vids)) == CARS
    observer = matrix_clients.cloud(subscribe=False)
    assert observer.subscribe("ctpl/v1/#") == [1]
    cars: dict[str, Probe] = {
        c.vid: matrix_clients.car(
            c.vid, cert=c.cert_file, key=c.key_file, client_id=c.vid
        ).connect()
        for c in enrolled
    }

    attempts = succeeded = 0
    for a, car in cars.items():
        assert car.subscribe(f"ctpl/v1/{a}/down/#") == GRANTED
        for b in vids:
            if b != a:
                attempts += 1
                succeeded += car.subscribe(f"ctpl/v1/{b}/down/#") != REFUSED
        for pattern in WILDCARDS:
            attempts += 1
            succeeded += car.subscribe(pattern) != REFUSED
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
