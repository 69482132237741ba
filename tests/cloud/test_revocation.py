"""Revoking a car against the real broker: it is kicked now and refused later; others stay."""

from collections.abc import Iterator

import pytest
from cryptography import x509

from agent.protocol.keys import load_private_key
from cloud.pki import CertificateAuthority, DevPki
from cloud.revocation import BrokerControl, sighup_from_pid_file
from simulator.broker import Mosquitto

from ..broker.mqtt_probe import Clients


@pytest.fixture
def pki(own_pki: DevPki) -> DevPki:
    return own_pki


@pytest.fixture
def broker(own_broker: Mosquitto) -> Mosquitto:
    return own_broker


@pytest.fixture
def clients(pki: DevPki, broker: Mosquitto) -> Iterator[Clients]:
    made = Clients(pki, broker)
    yield made
    made.close_all()


def control(pki: DevPki, broker: Mosquitto) -> BrokerControl:
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    return BrokerControl(
        ca=CertificateAuthority(load_private_key(pki.ca_key), ca_cert),
        crl_path=pki.crl,
        reload=sighup_from_pid_file(broker.pid_file),
    )


def serial_of(pki: DevPki, vid: str) -> int:
    return x509.load_pem_x509_certificate((pki.car_dir(vid) / "car.crt").read_bytes()).serial_number


async def test_a_revoked_car_is_disconnected_and_cannot_reconnect_and_others_stay(
    pki: DevPki, broker: Mosquitto, clients: Clients
) -> None:
    a, b, _ = pki.vids()
    car_a = clients.car(a, client_id=a).connect()
    car_b = clients.car(b, client_id=b).connect()
    await control(pki, broker).revoke(a, [serial_of(pki, a)])
    car_a.wait_closed()
    assert not clients.car(a, client_id=a).try_connect(), "a revoked car got back in"
    # The other car was not touched: still connected, still served, and can reconnect.
    assert not car_b.closed
    assert car_b.publish(f"ctpl/v1/{b}/up/status", b"still-here") in (0, 16)  # 16: no subscriber
    assert clients.car(b).try_connect()


async def test_the_crl_written_is_valid_and_lists_exactly_the_revoked_serials(
    pki: DevPki, broker: Mosquitto
) -> None:
    a, b, _ = pki.vids()
    await control(pki, broker).publish_crl(
        [serial_of(pki, a), serial_of(pki, b), serial_of(pki, a)]
    )
    crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
    assert {r.serial_number for r in crl} == {serial_of(pki, a), serial_of(pki, b)}
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
