"""Fixtures shared by every test area: a dev PKI, a real Mosquitto from broker-config/, and
``db_target`` (a fresh store on SQLite, then on PostgreSQL: tests/store/conftest.py)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.pki import DevPki, write_dev_pki
from cloud.sealing import KEY_ENV, new_key_text
from simulator.broker import Mosquitto
from tests.store.conftest import db_target  # noqa: F401 - shared with the e2e tests

SHARED_CARS = 12

# One data key for the run, as an operator sets it for a PostgreSQL store (every process the
# tests start inherits it); tests/store/test_sealing.py covers the key file a SQLite store
# gets by default.
os.environ.setdefault(KEY_ENV, new_key_text())


@pytest.fixture(scope="session")
def shared_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """One dev PKI with SHARED_CARS cars for the whole run."""
    return write_dev_pki(tmp_path_factory.mktemp("pki"), SHARED_CARS)


@pytest.fixture(scope="session")
def shared_broker(
    shared_pki: DevPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mosquitto]:
    """Mosquitto started from broker-config/ (mTLS, real ACL) on a free port, for the whole run."""
    broker = Mosquitto(shared_pki, Path(tmp_path_factory.mktemp("broker"))).start()
    yield broker
    broker.stop()


@pytest.fixture
def own_pki(tmp_path: Path) -> DevPki:
    """A dev PKI of this test's own (three cars), for tests that change the CRL."""
    return write_dev_pki(tmp_path / "pki", 3)


@pytest.fixture
def own_broker(own_pki: DevPki, tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own, on ``own_pki``."""
    broker = Mosquitto(own_pki, tmp_path / "broker").start()
    yield broker
    broker.stop()
