"""Who may connect: mutual TLS 1.2+ with a certificate of our CA, valid now, for a client."""

import datetime as dt
import socket
import ssl
import tempfile
import threading
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from agent.protocol.keys import generate_private_key, load_private_key, private_pem
from cloud.pki import CertificateAuthority, DevPki, cert_pem, new_ca, write_private

from .mqtt_probe import WAIT_S, Clients, Probe, client_context

OLD_TLS_CIPHERS = "DEFAULT:@SECLEVEL=0"
"""OpenSSL 3 refuses TLS 1.0/1.1 above security level 0; the probe lowers it on purpose."""


def _dev_ca(pki: DevPki) -> CertificateAuthority:
    return CertificateAuthority(
        load_private_key(pki.ca_key), x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    )


def _write_identity(
    where: Path,
    ca: CertificateAuthority,
    cn: str,
    *,
    days: int = 90,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    key = generate_private_key()
    where.mkdir(parents=True, exist_ok=True)
    write_private(where / "car.key", private_pem(key))
    cert = ca.issue(cn, key.public_key(), days=days, not_before=not_before)
    (where / "car.crt").write_bytes(cert_pem(cert))
    return where / "car.crt", where / "car.key"


def _assert_refused(probe: Probe) -> None:
    accepted = probe.try_connect()
    assert not accepted, f"{probe.name} was let in: {probe.state()}"
    assert probe.connack is None, f"{probe.name} got as far as a CONNACK: {probe.state()}"


# ---- accepted ------------------------------------------------------------------


def test_car_with_its_own_certificate_connects(clients: Clients, vids: list[str]) -> None:
    probe = clients.car(vids[0]).connect()
    assert probe.connack is not None and probe.connack.value == 0


def test_cloud_identity_connects(clients: Clients) -> None:
    probe = clients.cloud(subscribe=False)
    assert probe.connack is not None and probe.connack.value == 0


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_tls_1_2_and_1_3_are_accepted(
    clients: Clients, vids: list[str], version: ssl.TLSVersion
) -> None:
    probe = clients.car(vids[0], tls_min=version, tls_max=version).connect()
    sock = probe.client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    assert (
        sock.version()
        == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    )


# ---- refused -------------------------------------------------------------------


def test_client_without_certificate_is_refused(clients: Clients, broker_pki: DevPki) -> None:
    _assert_refused(clients.probe("no-cert", client_context(broker_pki.ca_cert)))


def test_certificate_from_another_ca_is_refused(
    clients: Clients, vids: list[str], tmp_path: Path
) -> None:
    rogue_key, rogue_cert = new_ca("Rogue CA")
    # Same CN as a real car: only the issuer is wrong.
    cert, key = _write_identity(tmp_path, CertificateAuthority(rogue_key, rogue_cert), vids[0])
    _assert_refused(clients.car(vids[0], cert=cert, key=key))


def test_expired_certificate_is_refused(
    clients: Clients, broker_pki: DevPki, vids: list[str], tmp_path: Path
) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    cert, key = _write_identity(tmp_path, _dev_ca(broker_pki), vids[1], days=1, not_before=start)
    assert x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc < dt.datetime.now(
        dt.UTC
    )
    _assert_refused(clients.car(vids[1], cert=cert, key=key))


def test_not_yet_valid_certificate_is_refused(
    clients: Clients, broker_pki: DevPki, vids: list[str], tmp_path: Path
) -> None:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    cert, key = _write_identity(tmp_path, _dev_ca(broker_pki), vids[1], days=30, not_before=start)
    _assert_refused(clients.car(vids[1], cert=cert, key=key))


def test_fresh_certificate_from_the_same_ca_is_accepted(
    clients: Clients, broker_pki: DevPki, vids: list[str], tmp_path: Path
) -> None:
    # The control for the two tests above: only the validity dates differ.
    cert, key = _write_identity(tmp_path, _dev_ca(broker_pki), vids[1], days=1)
    clients.car(vids[1], cert=cert, key=key).connect()


def test_server_certificate_cannot_be_used_as_a_client(
    clients: Clients, broker_pki: DevPki
) -> None:
    ctx = client_context(broker_pki.ca_cert, broker_pki.broker_cert, broker_pki.broker_key)
    _assert_refused(clients.probe("broker-cert", ctx))


def test_plain_tcp_without_tls_is_refused(clients: Clients) -> None:
    _assert_refused(clients.probe("plain-tcp", None))


# ---- below TLS 1.2 ---------------------------------------------------------------


def local_openssl_offers_tls_1_1() -> bool:
    """Whether this machine's OpenSSL completes a TLS 1.1 handshake with itself (on loopback)."""
    with tempfile.TemporaryDirectory() as tmp:
        ca = CertificateAuthority(*new_ca("TLS 1.1 control CA"))
        key = generate_private_key()
        write_private(Path(tmp) / "k.pem", private_pem(key))
        server_cert = ca.issue("control", key.public_key(), server_names=("127.0.0.1",))
        (Path(tmp) / "c.pem").write_bytes(cert_pem(server_cert))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                server_ctx.set_ciphers(OLD_TLS_CIPHERS)
                server_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                server_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ssl.SSLError, ValueError):
                return False
        server_ctx.load_cert_chain(str(Path(tmp) / "c.pem"), str(Path(tmp) / "k.pem"))
        client_ctx = client_context(
            Path(tmp) / "c.pem",
            tls_min=ssl.TLSVersion.TLSv1_1,
            tls_max=ssl.TLSVersion.TLSv1_1,
            ciphers=OLD_TLS_CIPHERS,
        )
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    served: list[str | None] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(WAIT_S)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(WAIT_S)
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        served.append(tls.version())
            except OSError:
                served.append(None)

        thread = threading.Thread(target=serve, name="tls11-control")
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=WAIT_S) as raw,
                client_ctx.wrap_socket(raw) as tls,
            ):
                spoken = tls.version()
        except OSError:
            spoken = None
        thread.join(WAIT_S)
    return spoken == "TLSv1.1" and served == ["TLSv1.1"]


TLS_1_1_OFFERED = local_openssl_offers_tls_1_1()
"""Decided once at collection, so the test id says which check ran."""


@pytest.mark.parametrize(
    "checked",
    [
        "tls1.1-offered-by-client-and-refused-by-broker"
        if TLS_1_1_OFFERED
        else "tls1.1-not-offerable-here-so-tls1.2-checked-instead"
    ],
)
def test_tls_below_1_2_is_refused(clients: Clients, vids: list[str], checked: str) -> None:
    if TLS_1_1_OFFERED:
        # This OpenSSL speaks TLS 1.1 (the control handshake succeeded): the broker must refuse.
        probe = clients.car(
            vids[0],
            tls_min=ssl.TLSVersion.TLSv1_1,
            tls_max=ssl.TLSVersion.TLSv1_1,
            ciphers=OLD_TLS_CIPHERS,
        )
        _assert_refused(probe)
        # Refused by the broker's alert, not by our own side failing to offer it.
        assert isinstance(probe.connect_error, ssl.SSLError), probe.state()
        assert "ALERT_PROTOCOL_VERSION" in str(probe.connect_error), probe.state()
    else:
        # This OpenSSL cannot offer TLS 1.1 at all, so nothing older than 1.2 can reach the
        # broker from here; what is checked is that TLS 1.2 itself still works.
        clients.car(
            vids[0], tls_min=ssl.TLSVersion.TLSv1_2, tls_max=ssl.TLSVersion.TLSv1_2
        ).connect()
