"""Device PKI with cryptography's x509 API: CA, broker, cloud and car certificates, CRL.

``write_dev_pki`` lays out a complete development PKI for tests and the demo: the
device CA, the broker's and the HTTPS API's server certificates, a client certificate per
cloud worker, the cloud's message-signing key, the root key that signs key sets, and cars.
Every private key file is written with mode 0600.

Identities (the certificate's CN, which the broker's plugin also requires as the MQTT
client id, broker-config/README.md): a car is its vid; a cloud worker is ``ctpl-cloud-<name>``,
one certificate per worker, so that workers never share a client id.
"""

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.protocol.keys import generate_private_key, load_private_key, private_pem, public_pem

CLOUD_IDENTITY: Final = "ctpl-cloud-1"
"""The dev PKI's first cloud worker (``cloud.crt``); CloudConfig's default client id."""
CLOUD_CN_RE: Final = re.compile(r"ctpl-cloud(-[a-z0-9-]{1,40})?")
"""A cloud worker's CN, which is also its client id: the broker plugin's rule, mirrored."""
_VID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"


def new_vid() -> str:
    """A fresh opaque vehicle id: ``v`` and 16 random base32 characters (80 bits)."""
    return "v" + "".join(secrets.choice(_VID_ALPHABET) for _ in range(16))


def cloud_cn(name: str) -> str:
    """The cloud identity named ``name``: itself if it is one, else ``ctpl-cloud-<name>``."""
    cn = name if name.startswith("ctpl-cloud") else f"ctpl-cloud-{name}"
    if CLOUD_CN_RE.fullmatch(cn) is None:
        raise ValueError(f"{name!r} cannot name a cloud identity (ctpl-cloud-[a-z0-9-]{{1,40}})")
    return cn


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(
    cn: str = "CTPL dev device CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA key and certificate."""
    key = generate_private_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and certificate that issue leaf certificates and CRLs."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> "CertificateAuthority":
        """The CA whose PEM certificate and P-256 key are in these files; ValueError if unusable."""
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = load_private_key(key_file)
        if cert.public_key() != key.public_key():
            raise ValueError(f"{key_file} is not the key of {cert_file}")
        return cls(key, cert)

    def issue(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        days: int = 90,
        server_names: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A leaf certificate for ``cn``: a server certificate when ``server_names`` is given."""
        start = not_before or _now() - dt.timedelta(minutes=5)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def crl(self, revoked_serials: list[int], *, days: int = 30) -> x509.CertificateRevocationList:
        """A CRL revoking ``revoked_serials``, valid ``days`` days."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return builder.sign(self.key, hashes.SHA256())


def write_private(path: Path, pem: bytes) -> None:
    """Write a private key file with mode 0600 from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of ``cert``."""
    return cert.public_bytes(Encoding.PEM)


@dataclass(frozen=True)
class CloudIdentity:
    """A cloud worker's client certificate and key; ``cn`` is also its MQTT client id."""

    cn: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """Paths of a development PKI laid out by ``write_dev_pki``."""

    root: Path

    ca_cert = property(lambda self: self.root / "ca.crt")
    ca_key = property(lambda self: self.root / "ca.key")
    crl = property(lambda self: self.root / "ca.crl")
    broker_cert = property(lambda self: self.root / "broker.crt")
    broker_key = property(lambda self: self.root / "broker.key")
    cloud_cert = property(lambda self: self.root / "cloud.crt")
    cloud_key = property(lambda self: self.root / "cloud.key")
    signing_key = property(lambda self: self.root / "cloud-signing.key")
    signing_pub = property(lambda self: self.root / "cloud-signing.pub")
    # The signing-key ring: made by the first ``ctpl-cloud roll-signing-key``.
    signing_keys = property(lambda self: self.root / "signing-keys.json")
    root_key = property(lambda self: self.root / "root.key")
    root_pub = property(lambda self: self.root / "root.pub")
    api_cert = property(lambda self: self.root / "api.crt")
    api_key = property(lambda self: self.root / "api.key")
    vehicles_file = property(lambda self: self.root / "vehicles.json")

    def cloud_identity(self, cn: str) -> CloudIdentity:
        """Where cloud worker ``cn``'s certificate and key live (``issue_cloud_identity``)."""
        if cn == CLOUD_IDENTITY:
            return CloudIdentity(cn, self.cloud_cert, self.cloud_key)
        return CloudIdentity(
            cn, self.root / "clouds" / cn / "cloud.crt", self.root / "clouds" / cn / "cloud.key"
        )

    def car_dir(self, vid: str) -> Path:
        """Where car ``vid``'s key and certificate live."""
        return self.root / "cars" / vid

    def vids(self) -> list[str]:
        """The vids issued, in issue order."""
        data: list[dict[str, str]] = json.loads(self.vehicles_file.read_text())
        return [v["vid"] for v in data]


def issue_cloud_identity(pki: DevPki, name: str, *, days: int = 365) -> CloudIdentity:
    """Cloud worker ``name``'s identity (``cloud_cn``), issued by the PKI's CA the first time.

    Safe when several processes ask at once: the key and certificate are written into a
    directory of their own, which is renamed into place; a loser of the race uses the winner's.
    """
    identity = pki.cloud_identity(cloud_cn(name))
    if identity.cert.exists():
        return identity
    ca = CertificateAuthority.load(pki.ca_cert, pki.ca_key)
    final = identity.cert.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{identity.cn}.", dir=final.parent))
    try:
        key = generate_private_key()
        write_private(staging / identity.key.name, private_pem(key))
        cert = ca.issue(identity.cn, key.public_key(), days=days)
        (staging / identity.cert.name).write_bytes(cert_pem(cert))
        try:
            staging.rename(final)
        except OSError:
            if not identity.cert.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return identity


def write_dev_pki(
    root: Path,
    cars: int,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    cloud_workers: int = 1,
) -> DevPki:
    """Create a CA, broker, API certificates, ``cloud_workers`` cloud worker identities
    (``ctpl-cloud-1`` … ``-N``), signing and root keys, ``cars`` cars.

    ``vehicles.json`` lists each car's vid, VIN and certificate path, for import into the cloud.
    """
    pki = DevPki(root)
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = new_ca()
    ca = CertificateAuthority(ca_key, ca_cert)
    write_private(pki.ca_key, private_pem(ca_key))
    pki.ca_cert.write_bytes(cert_pem(ca_cert))
    pki.crl.write_bytes(ca.crl([]).public_bytes(Encoding.PEM))

    broker_key = generate_private_key()
    write_private(pki.broker_key, private_pem(broker_key))
    pki.broker_cert.write_bytes(
        cert_pem(ca.issue("ctpl-broker", broker_key.public_key(), days=365, server_names=hosts))
    )
    cloud_key = generate_private_key()
    write_private(pki.cloud_key, private_pem(cloud_key))
    pki.cloud_cert.write_bytes(cert_pem(ca.issue(CLOUD_IDENTITY, cloud_key.public_key(), days=365)))
    for n in range(2, cloud_workers + 1):
        issue_cloud_identity(pki, f"ctpl-cloud-{n}")
    signing = generate_private_key()
    write_private(pki.signing_key, private_pem(signing))
    pki.signing_pub.write_bytes(public_pem(signing.public_key()))
    root_key = generate_private_key()
    write_private(pki.root_key, private_pem(root_key))
    pki.root_pub.write_bytes(public_pem(root_key.public_key()))
    api_key = generate_private_key()
    write_private(pki.api_key, private_pem(api_key))
    pki.api_cert.write_bytes(
        cert_pem(ca.issue("ctpl-api", api_key.public_key(), days=365, server_names=hosts))
    )

    vehicles = []
    for i in range(cars):
        vid = new_vid()
        key = generate_private_key()
        d = pki.car_dir(vid)
        write_private(d / "car.key", private_pem(key))
        (d / "car.crt").write_bytes(cert_pem(ca.issue(vid, key.public_key())))
        vin = f"LSGCAR{i:011d}"
        vehicles.append({"vid": vid, "vin": vin, "cert": str(d / "car.crt")})
    pki.vehicles_file.write_text(json.dumps(vehicles, indent=1))
    return pki
