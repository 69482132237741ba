"""One certificate per cloud worker, CN = client id, as the broker's identity plugin requires."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.protocol.keys import load_private_key
from cloud.config import CloudConfig
from cloud.pki import CLOUD_IDENTITY, DevPki, cloud_cn, issue_cloud_identity, write_dev_pki


def _cn(cert: Path) -> str:
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    return str(parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize(
    ("name", "cn"),
    [
        ("ctpl-cloud-1", "ctpl-cloud-1"),
        ("ctpl-cloud", "ctpl-cloud"),
        ("test-cloud-3", "ctpl-cloud-test-cloud-3"),
        ("night-cloud", "ctpl-cloud-night-cloud"),
        ("w7", "ctpl-cloud-w7"),
    ],
)
def test_a_worker_name_becomes_a_cloud_cn(name: str, cn: str) -> None:
    assert cloud_cn(name) == cn


@pytest.mark.parametrize("name", ["", "Worker", "ctpl-cloudx", "a/b", "w+", "n" * 41])
def test_a_name_that_cannot_be_a_cloud_cn_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cloud identity"):
        cloud_cn(name)


def test_the_dev_pki_issues_one_certificate_per_worker(tmp_path: Path) -> None:
    pki = write_dev_pki(tmp_path, cars=0, cloud_workers=3)
    identities = [pki.cloud_identity(f"ctpl-cloud-{n}") for n in (1, 2, 3)]
    assert identities[0].cert == pki.cloud_cert
    assert [_cn(i.cert) for i in identities] == ["ctpl-cloud-1", "ctpl-cloud-2", "ctpl-cloud-3"]
    assert len({i.key.read_bytes() for i in identities}) == 3
    assert all(i.key.stat().st_mode & 0o777 == 0o600 for i in identities)


def test_from_pki_gives_each_client_id_its_own_identity(broker_pki: DevPki, tmp_path: Path) -> None:
    def config(**kw: object) -> CloudConfig:
        return CloudConfig.from_pki(broker_pki, db_path=tmp_path / "db", broker_port=8883, **kw)

    default, first, second = config(), config(client_id="test-cloud-1"), config(client_id="w2")
    assert (default.client_id, default.cert_file) == (CLOUD_IDENTITY, broker_pki.cloud_cert)
    assert first.client_id == "ctpl-cloud-test-cloud-1" == _cn(first.cert_file)
    assert second.client_id == "ctpl-cloud-w2" == _cn(second.cert_file)
    assert config(client_id="test-cloud-1").cert_file == first.cert_file, "issued once, kept"
    # A config that names its own certificate keeps its client id as given.
    own = config(client_id="x", cert_file=default.cert_file, key_file=default.key_file)
    assert own.client_id == "x"


def test_workers_asking_for_the_same_identity_at_once_get_one_matching_pair(
    broker_pki: DevPki,
) -> None:
    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(lambda _: issue_cloud_identity(broker_pki, "racer"), range(8)))
    [identity] = got
    cert = x509.load_pem_x509_certificate(identity.cert.read_bytes())
    assert cert.public_key() == load_private_key(identity.key).public_key()
    leftovers = [p.name for p in identity.cert.parent.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
