"""Certificate renewal: when, the signed request, the torn-pair-proof swap, and the running agent.

The HTTP tests run against ``fake_api`` (a real HTTPS server with a Starlette fake of the
cloud's API); the agent tests add a real Mosquitto from broker-config/.
"""

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from agent import identity, provisioning
from agent.cli import main
from agent.config import AgentConfig, dumps_toml
from agent.enrollment import needs_renewal, renew_topic, renewal_body
from agent.errors import CloudRefusedError, ConfigError
from agent.keyring import load_keyset
from agent.keystore import FileKeyStore
from agent.protocol import envelope, topics
from agent.protocol.errors import TopicError
from agent.protocol.keys import generate_private_key, kid_for, load_private_key, public_pem
from agent.runner import Agent
from agent.store import Store
from cloud.pki import CertificateAuthority, DevPki, cert_pem
from simulator.broker import Mosquitto
from tests.agent.conftest import WAIT_S, FakeCloud, eventually, running
from tests.agent.fake_api import FakeCloudApi, Served, keyset_envelope, serve_https

from . import faults

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)

# ---- when ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("not_before", "not_after", "now", "due"),
    [
        (T0, T0 + 90 * DAY, T0, False),
        (T0, T0 + 90 * DAY, T0 + 59 * DAY, False),
        (T0, T0 + 90 * DAY, T0 + 60 * DAY, False),  # exactly a third left: not less
        (T0, T0 + 90 * DAY, T0 + 60 * DAY + timedelta(seconds=1), True),
        (T0, T0 + 90 * DAY, T0 + 89 * DAY, True),
        (T0, T0 + 90 * DAY, T0 + 400 * DAY, True),  # expired: still ask
        (T0, T0 + 90 * DAY, T0 - 365 * DAY, False),  # a clock far behind: not yet
        (T0, T0 + 3 * DAY, T0 + 2 * DAY + timedelta(seconds=1), True),
        (T0, T0 + 3 * DAY, T0 + DAY, False),
        (T0, T0, T0, True),  # no life at all
        (T0, T0 + 90 * DAY, (T0 + 61 * DAY).astimezone(ZoneInfo("Asia/Shanghai")), True),
    ],
)
def test_renew_when_less_than_a_third_of_the_life_is_left(
    not_before: datetime, not_after: datetime, now: datetime, due: bool
) -> None:
    assert needs_renewal(not_before, not_after, now) is due


def test_the_renewal_body_and_topic() -> None:
    vid = "vaaaaaaaaaaaaaaa1"
    assert renew_topic(vid) == f"ctpl/v1/{vid}/renew"
    body = json.loads(renewal_body(vid, 42, b"-----CSR-----\n"))
    assert body == {"type": "cert.renewal", "vid": vid, "seq": 42, "csr_pem": "-----CSR-----\n"}
    with pytest.raises(TopicError):
        renew_topic("LSGCAR00000000001")


# ---- the swap -----------------------------------------------------------------------


@dataclass
class Pair:
    """A car's key and certificate files, with the old and new contents."""

    key_file: Path
    cert_file: Path
    old_key: bytes
    old_cert: bytes
    new: FileKeyStore
    new_cert: bytes

    def held(self) -> str:
        """Which pair the files hold: old, new, or torn."""
        key, cert = self.key_file.read_bytes(), self.cert_file.read_bytes()
        if (key, cert) == (self.old_key, self.old_cert):
            return "old"
        new_key = public_pem(FileKeyStore.load(self.key_file).public_key())
        if new_key == public_pem(self.new.public_key()) and cert == self.new_cert:
            return "new"
        return "torn"


CA = FakeCloudApi.make().ca


def make_pair(folder: Path) -> Pair:
    """An old key and certificate in ``folder``, and a new pair ready to install."""
    folder.mkdir(parents=True, exist_ok=True)
    old = FileKeyStore.generate()
    old.save(folder / "car.key")
    (folder / "car.crt").write_bytes(cert_pem(CA.issue("vaaaaaaaaaaaaaaa1", old.public_key())))
    new = FileKeyStore.generate()
    return Pair(
        folder / "car.key",
        folder / "car.crt",
        (folder / "car.key").read_bytes(),
        (folder / "car.crt").read_bytes(),
        new,
        cert_pem(CA.issue("vaaaaaaaaaaaaaaa1", new.public_key())),
    )


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_pair(tmp_path)


def test_swap_installs_the_new_pair_with_private_key_mode(pair: Pair) -> None:
    identity.swap_key_and_cert(pair.key_file, pair.cert_file, pair.new, pair.new_cert)
    assert pair.held() == "new"
    assert stat.S_IMODE(pair.key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in pair.key_file.parent.iterdir()) == ["car.crt", "car.key"]
    assert identity.recover(pair.key_file, pair.cert_file) is None


def _stage(pair: Pair, what: str) -> None:
    new_key, new_cert = identity.pending(pair.key_file), identity.pending(pair.cert_file)
    if what in ("both", "key-only", "cert-torn"):
        pair.new.save(new_key)
    if what == "both":
        new_cert.write_bytes(pair.new_cert)
    if what == "cert-torn":
        new_cert.write_bytes(pair.new_cert[:100])
    if what == "key-torn":
        new_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMIGH")
        new_cert.write_bytes(pair.new_cert)
    if what == "key-renamed":
        os.replace(pair.key_file, pair.key_file.with_suffix(".old"))
        pair.new.save(pair.key_file)
        new_cert.write_bytes(pair.new_cert)
    if what == "stray-cert":
        new_cert.write_bytes(pair.new_cert)


@pytest.mark.parametrize(
    ("staged", "outcome", "held"),
    [
        ("nothing", None, "old"),
        ("both", "finished", "new"),
        ("key-renamed", "finished", "new"),
        ("key-only", "discarded", "old"),
        ("cert-torn", "discarded", "old"),
        ("key-torn", "discarded", "old"),
        ("stray-cert", "discarded", "old"),
    ],
)
def test_recover_finishes_a_matching_pair_and_discards_the_rest(
    pair: Pair, staged: str, outcome: str | None, held: str
) -> None:
    _stage(pair, staged)
    assert identity.recover(pair.key_file, pair.cert_file) == outcome
    assert pair.held() == held
    assert not identity.pending(pair.key_file).exists()
    assert not identity.pending(pair.cert_file).exists()


def fail_at(monkeypatch: pytest.MonkeyPatch, step: int) -> list[str]:
    """Make the ``step``-th os.open/fsync/replace raise; record them all."""
    return faults.fail_at(monkeypatch, step, ("open", "fsync", "replace"))


def test_a_failure_at_any_step_of_the_swap_leaves_a_whole_pair(tmp_path: Path) -> None:
    first = make_pair(tmp_path / "probe")
    with pytest.MonkeyPatch.context() as patch:
        seen = fail_at(patch, -1)
        identity.swap_key_and_cert(first.key_file, first.cert_file, first.new, first.new_cert)
        steps = len(seen)
    assert steps >= 6
    for step in range(1, steps + 1):
        each = make_pair(tmp_path / f"step-{step}")
        with pytest.MonkeyPatch.context() as patch:
            fail_at(patch, step)
            with pytest.raises(faults.Fault):
                identity.swap_key_and_cert(each.key_file, each.cert_file, each.new, each.new_cert)
        identity.recover(each.key_file, each.cert_file)  # what the next start does
        assert each.held() in ("old", "new"), f"step {step}"


# ---- renewal over HTTPS -------------------------------------------------------------


@dataclass
class Car:
    """An enrolled car's files, a config for them, and the fake cloud API it talks to."""

    fake: FakeCloudApi
    served: Served
    config: AgentConfig
    vid: str

    def settings(self, **changes: Any) -> AgentConfig:
        return replace(self.config, **changes)


def enrolled_car(
    fake: FakeCloudApi, served: Served, folder: Path, age_days: float, **changes: Any
) -> Car:
    """Files of a car enrolled ``age_days`` ago (90-day certificate), and its config."""
    folder.mkdir(parents=True, exist_ok=True)
    key = FileKeyStore.generate()
    key.save(folder / "car.key")
    vid, cert = fake.add_vehicle(key.public_key(), days=90, age_days=age_days)
    (folder / "car.crt").write_bytes(cert)
    (folder / "ca.crt").write_bytes(cert_pem(fake.ca.cert))
    (folder / "root.pub").write_bytes(public_pem(fake.root.public_key()))
    (folder / "keyset.json").write_text(
        keyset_envelope(fake.root, [(fake.signing.public_key(), None)], version=1)
    )
    values: dict[str, Any] = {
        "vid": vid,
        "key_file": folder / "car.key",
        "cert_file": folder / "car.crt",
        "ca_file": folder / "ca.crt",
        "root_key": folder / "root.pub",
        "keyset_file": folder / "keyset.json",
        "cloud_url": served.url,
        "api_ca_file": served.ca_file,
        "db_path": folder / "agent.db",
        "operation_timeout_s": WAIT_S,
    }
    return Car(fake, served, AgentConfig(**(values | changes)), vid)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[FakeCloudApi, Served]]:
    fake = FakeCloudApi.make()
    with serve_https(fake.app(), fake.ca, tmp_path / "api") as served:
        yield fake, served


@pytest.fixture
def old_car(api: tuple[FakeCloudApi, Served], tmp_path: Path) -> Car:
    """A car 70 days into a 90-day certificate: due."""
    return enrolled_car(*api, tmp_path / "car", age_days=70)


@pytest.fixture
def young_car(api: tuple[FakeCloudApi, Served], tmp_path: Path) -> Car:
    """A car 10 days into a 90-day certificate: not due."""
    return enrolled_car(*api, tmp_path / "car", age_days=10)


async def renew(car: Car, **kwargs: Any) -> provisioning.Renewed | provisioning.NotDue:
    async with asyncio.timeout(WAIT_S * 2), Store(car.config.db_path) as store:
        return await provisioning.renew(car.config, store, datetime.now(UTC), **kwargs)


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


async def test_a_due_certificate_is_renewed_with_a_new_key(old_car: Car) -> None:
    old_key = old_car.config.key_file.read_bytes()
    outcome = await renew(old_car)
    assert isinstance(outcome, provisioning.Renewed)
    assert outcome.keyset_version is None  # the same key set version: kept as held
    new_key = FileKeyStore.load(old_car.config.key_file)
    assert old_car.config.key_file.read_bytes() != old_key
    assert stat.S_IMODE(old_car.config.key_file.stat().st_mode) == 0o600
    cert = cert_of(old_car.config.cert_file)
    assert public_pem(cert.public_key()) == public_pem(new_key.public_key())  # type: ignore[arg-type]
    assert cert.not_valid_after_utc == outcome.not_after
    # The request was signed by the old key for the renew topic, with a seq from the store.
    sealed = old_car.fake.requests[-1]["envelope"].encode()
    old_public = load_pem_private_key(old_key, password=None).public_key()
    assert isinstance(old_public, ec.EllipticCurvePublicKey)
    body = json.loads(
        envelope.open_with(renew_topic(old_car.vid), sealed, {kid_for(old_public): old_public})
    )
    assert (body["type"], body["vid"], body["seq"]) == ("cert.renewal", old_car.vid, 1)
    async with Store(old_car.config.db_path) as store:
        assert await store.last_seq() == 1


async def test_a_young_certificate_is_not_renewed_unless_forced(young_car: Car) -> None:
    before = young_car.config.cert_file.read_bytes()
    outcome = await renew(young_car)
    assert isinstance(outcome, provisioning.NotDue)
    assert young_car.fake.requests == [] and young_car.config.cert_file.read_bytes() == before
    assert isinstance(await renew(young_car, force=True), provisioning.Renewed)
    assert young_car.config.cert_file.read_bytes() != before


@pytest.mark.parametrize(("offered", "kept"), [(2, 2), (1, 1)])
async def test_a_newer_key_set_comes_with_the_renewal(
    old_car: Car, offered: int, kept: int
) -> None:
    old_car.fake.keyset_version = offered
    outcome = await renew(old_car)
    assert isinstance(outcome, provisioning.Renewed)
    assert outcome.keyset_version == (offered if offered > 1 else None)
    assert old_car.config.keyset_file is not None and old_car.config.root_key is not None
    held = load_keyset(old_car.config.keyset_file, old_car.fake.root.public_key())
    assert held is not None and held.version == kept


async def test_an_older_key_set_is_not_taken(old_car: Car) -> None:
    assert old_car.config.keyset_file is not None
    old_car.config.keyset_file.write_text(
        keyset_envelope(old_car.fake.root, [(old_car.fake.signing.public_key(), None)], version=5)
    )
    outcome = await renew(old_car)
    assert isinstance(outcome, provisioning.Renewed) and outcome.keyset_version is None
    held = load_keyset(old_car.config.keyset_file, old_car.fake.root.public_key())
    assert held is not None and held.version == 5


async def test_a_refused_renewal_changes_nothing(old_car: Car) -> None:
    old_car.fake.refuse = (403, "revoked")
    before = (old_car.config.key_file.read_bytes(), old_car.config.cert_file.read_bytes())
    with pytest.raises(CloudRefusedError, match="403 revoked"):
        await renew(old_car)
    assert (old_car.config.key_file.read_bytes(), old_car.config.cert_file.read_bytes()) == before
    assert not [p for p in old_car.config.key_file.parent.iterdir() if p.suffix == ".new"]


async def test_an_answer_for_another_key_is_refused(old_car: Car) -> None:
    other = generate_private_key().public_key()
    old_car.fake.tamper = lambda a: (
        a | {"certificate_pem": cert_pem(old_car.fake.ca.issue(a["vid"], other)).decode()}
    )
    before = old_car.config.cert_file.read_bytes()
    with pytest.raises(provisioning.EnrollmentError, match="not for this gateway's key"):
        await renew(old_car)
    assert old_car.config.cert_file.read_bytes() == before


async def test_no_cloud_url_no_renewal(old_car: Car) -> None:
    car = Car(old_car.fake, old_car.served, old_car.settings(cloud_url=None), old_car.vid)
    with pytest.raises(ConfigError, match="cloud_url"):
        await renew(car)


def write_config(car: Car, path: Path) -> Path:
    path.write_text(dumps_toml(asdict(car.config)))
    return path


def test_renew_command(old_car: Car, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = write_config(old_car, tmp_path / "agent.toml")
    assert main(["renew", "--config", str(toml)]) == 0
    assert capsys.readouterr().out.startswith("renewed: new key and certificate valid until")
    assert main(["renew", "--config", str(toml)]) == 0
    assert capsys.readouterr().out.startswith("not due: certificate valid until")
    assert main(["renew", "--config", str(toml), "--force"]) == 0
    assert capsys.readouterr().out.startswith("renewed")
    old_car.fake.refuse = (409, "replay")
    assert main(["renew", "--config", str(toml), "--force"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ctpl-agent: renewal failed: cloud refused (409 replay)")
    assert len(err.strip().splitlines()) == 1


# ---- the running agent ----------------------------------------------------------------


@pytest.fixture
def broker_api(pki: DevPki, tmp_path: Path) -> Iterator[tuple[FakeCloudApi, Served]]:
    """The fake API issuing from the dev PKI's CA, so that the broker takes its certificates."""
    ca = CertificateAuthority(
        load_private_key(pki.ca_key), x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    )
    fake = FakeCloudApi(ca, generate_private_key(), load_private_key(pki.signing_key))
    with serve_https(fake.app(), fake.ca, tmp_path / "api") as served:
        yield fake, served


def broker_car(
    broker_api: tuple[FakeCloudApi, Served],
    broker: Mosquitto,
    tmp_path: Path,
    age_days: float,
    **changes: Any,
) -> Car:
    return enrolled_car(
        *broker_api, tmp_path / "car", age_days,
        broker_host=broker.host, broker_port=broker.port,
        reconnect_min_s=0.05, reconnect_max_s=0.2, **changes,
    )  # fmt: skip


async def status_kid(cloud: FakeCloud, vid: str) -> str:
    payload, _ = await cloud.receive(topics.up(vid, "status"))
    return envelope.parse(payload).kid


async def test_the_agent_renews_at_start_and_reconnects_with_the_new_key(
    broker_api: tuple[FakeCloudApi, Served], broker: Mosquitto, cloud: FakeCloud, tmp_path: Path
) -> None:
    car = broker_car(broker_api, broker, tmp_path, age_days=70)
    old_kid = kid_for(FileKeyStore.load(car.config.key_file).public_key())
    agent = Agent(car.config)
    async with running(agent):
        await eventually(lambda: agent.renewals["renewed"] == 1, "a renewal")
        new_kid = kid_for(car.fake.keys[car.vid])
        assert new_kid != old_kid
        async with asyncio.timeout(WAIT_S):
            while await status_kid(cloud, car.vid) != new_kid:
                pass
        await eventually(lambda: agent.connected, "a session with the new certificate")
        assert agent.renewals == {"renewed": 1}
    assert kid_for(FileKeyStore.load(car.config.key_file).public_key()) == new_kid


async def test_a_renewal_by_the_command_is_picked_up_by_the_running_agent(
    broker_api: tuple[FakeCloudApi, Served], broker: Mosquitto, cloud: FakeCloud, tmp_path: Path
) -> None:
    car = broker_car(broker_api, broker, tmp_path, age_days=1, renewal_check_s=0.1)
    agent = Agent(car.config)
    async with running(agent):
        await status_kid(cloud, car.vid)
        assert isinstance(await renew(car, force=True), provisioning.Renewed)
        new_kid = kid_for(car.fake.keys[car.vid])
        async with asyncio.timeout(WAIT_S):
            while await status_kid(cloud, car.vid) != new_kid:
                pass
    assert agent.renewals["renewed"] == 0 and agent.renewals["not_due"] >= 2


async def test_a_failing_renewal_is_retried_and_never_stops_the_agent(
    broker_api: tuple[FakeCloudApi, Served],
    broker: Mosquitto,
    cloud: FakeCloud,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    car = broker_car(
        broker_api, broker, tmp_path, age_days=70, renewal_retry_s=0.05, renewal_check_s=0.2
    )
    car.fake.refuse = (403, "revoked")
    agent = Agent(car.config)
    with caplog.at_level(logging.WARNING, logger="agent.runner"):
        async with running(agent):
            await eventually(lambda: agent.renewals["failed"] >= 3, "three failed renewals")
            await status_kid(cloud, car.vid)
            assert agent.connected
            car.fake.refuse = None
            await eventually(lambda: agent.renewals["renewed"] == 1, "a renewal once allowed")
    assert "certificate renewal failed: cloud refused (403 revoked)" in caplog.text


async def test_a_young_certificate_is_left_alone_and_no_cloud_url_turns_renewal_off(
    broker_api: tuple[FakeCloudApi, Served],
    broker: Mosquitto,
    cloud: FakeCloud,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    car = broker_car(broker_api, broker, tmp_path, age_days=1)
    agent = Agent(car.config)
    async with running(agent):
        await eventually(lambda: agent.renewals["not_due"] == 1, "a renewal check")
        await status_kid(cloud, car.vid)
    assert car.fake.requests == []
    with caplog.at_level(logging.INFO, logger="agent.runner"):
        off = Agent(car.settings(cloud_url=None, db_path=tmp_path / "other.db"))
        async with running(off):
            await status_kid(cloud, car.vid)
    assert off.renewals == {}
    assert caplog.text.count("certificate renewal is off") == 1


async def test_an_interrupted_renewal_is_finished_when_the_agent_starts(
    broker_api: tuple[FakeCloudApi, Served], broker: Mosquitto, cloud: FakeCloud, tmp_path: Path
) -> None:
    car = broker_car(broker_api, broker, tmp_path, age_days=1)
    new = FileKeyStore.generate()
    new.save(identity.pending(car.config.key_file))
    staged = cert_pem(car.fake.ca.issue(car.vid, new.public_key()))
    identity.pending(car.config.cert_file).write_bytes(staged)
    agent = Agent(car.config)
    assert car.config.cert_file.read_bytes() == staged
    async with running(agent):
        assert await status_kid(cloud, car.vid) == kid_for(new.public_key())


def test_the_agent_does_not_import_httpx_until_it_renews() -> None:
    code = "import sys, agent.runner, agent.cli; print('httpx' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
