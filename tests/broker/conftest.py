"""One real Mosquitto from broker-config/ (mTLS, real ACL) and a 3-car dev PKI for tests/broker."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.pki import DevPki, write_dev_pki
from simulator.broker import Mosquitto

from .mqtt_probe import Clients

CARS = 3


@pytest.fixture(scope="package")
def broker_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A dev PKI with three cars."""
    return write_dev_pki(tmp_path_factory.mktemp("broker-pki"), cars=CARS)


@pytest.fixture(scope="package")
def mosquitto(broker_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """Mosquitto started from broker-config/ on a free port."""
    broker = Mosquitto(broker_pki, Path(tmp_path_factory.mktemp("mosquitto"))).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="package")
def vids(broker_pki: DevPki) -> list[str]:
    """The three cars' vids: A, B, C."""
    return broker_pki.vids()


@pytest.fixture
def clients(broker_pki: DevPki, mosquitto: Mosquitto) -> Iterator[Clients]:
    """A probe factory; every probe is closed when the test ends."""
    made = Clients(broker_pki, mosquitto)
    yield made
    made.close_all()
