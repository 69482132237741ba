"""Zero-touch enrollment: key and CSR, the answer's checks, the atomic install, the HTTPS call.

The HTTP tests run against ``fake_api``: a real HTTPS server (uvicorn, TLS) with a small
Starlette fake of the cloud's API that signs its answers with cloud.pki's CA.
"""

import asyncio
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent import enrollment, identity, provisioning
from agent.cli import main
from agent.config import load_config
from agent.enrollment import verify_answer
from agent.errors import (
    CloudRefusedError,
    CloudUnreachableError,
    ConfigError,
    IdentityExistsError,
    MalformedAnswerError,
    VerificationError,
)
from agent.keyring import load_trusted_keys
from agent.keystore import FileKeyStore, KeySigner, KeyStore
from agent.protocol import envelope
from agent.protocol.envelope import Signer
from agent.protocol.keys import generate_private_key, kid_for, public_pem
from agent.runner import Agent
from cloud.pki import CertificateAuthority, cert_pem, new_ca
from tests.agent.fake_api import FakeCloudApi, Served, keyset_envelope, serve_https

from .faults import Fault, fail_at

CLAIM = "cl_test-claim-token"
VIN = "LSGCAR00000000001"

# ---- the key and its CSR -------------------------------------------------------------


def test_the_csr_has_an_empty_subject_and_a_p256_key() -> None:
    keys = FileKeyStore.generate()
    csr = x509.load_pem_x509_csr(keys.csr_pem())
    assert len(csr.subject) == 0
    assert csr.is_signature_valid
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    assert public_pem(public) == public_pem(keys.public_key())


def test_a_saved_key_is_mode_0600_and_never_overwritten(tmp_path: Path) -> None:
    os.umask(0o022)
    keys = FileKeyStore.generate()
    keys.save(tmp_path / "car.key")
    assert stat.S_IMODE((tmp_path / "car.key").stat().st_mode) == 0o600
    loaded = FileKeyStore.load(tmp_path / "car.key")
    assert public_pem(loaded.public_key()) == public_pem(keys.public_key())
    with pytest.raises(FileExistsError):
        FileKeyStore.generate().save(tmp_path / "car.key")


def test_a_key_others_may_read_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    FileKeyStore.generate().save(tmp_path / "car.key")
    (tmp_path / "car.key").chmod(0o644)
    FileKeyStore.load(tmp_path / "car.key")
    assert "readable by others" in caplog.text


def test_loading_a_bad_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "car.key").write_text("junk")
    with pytest.raises(ConfigError, match=r"car\.key"):
        FileKeyStore.load(tmp_path / "car.key")


def test_key_signer_seals_what_the_protocol_signer_seals() -> None:
    private = generate_private_key()
    ours, theirs = KeySigner(FileKeyStore(private)), Signer(private)
    topic = "ctpl/v1/vaaaaaaaaaaaaaaa1/up/status"
    assert ours.kid == theirs.kid
    mine, reference = (
        envelope.parse(ours.seal(topic, b"{}")),
        envelope.parse(theirs.seal(topic, b"{}")),
    )
    assert (mine.kid, mine.body) == (reference.kid, reference.body)
    keys = {kid_for(private.public_key()): private.public_key()}
    assert envelope.open_with(topic, ours.seal(topic, b'{"a":1}'), keys) == b'{"a":1}'
    assert (
        json.loads(ours.seal(topic, b"{}")).keys() == json.loads(theirs.seal(topic, b"{}")).keys()
    )


def test_key_store_protocol_is_met_by_the_file_store() -> None:
    keys: KeyStore = FileKeyStore.generate()
    assert len(keys.sign(b"data")) == 64


# ---- the answer's checks (pure) --------------------------------------------------------


@pytest.fixture(scope="module")
def fake_cloud() -> FakeCloudApi:
    return FakeCloudApi.make()


@pytest.fixture(scope="module")
def car_key() -> FileKeyStore:
    return FileKeyStore.generate()


def answer_bytes(fake: FakeCloudApi, key: FileKeyStore, **changes: Any) -> bytes:
    values = fake.answer("vaaaaaaaaaaaaaaa1", key.public_key())
    return json.dumps(values | changes).encode()


OTHER_CA = CertificateAuthority(*new_ca("another CA"))
OTHER_KEY = generate_private_key()


def _reissued(
    fake: FakeCloudApi, cn: str, ca: CertificateAuthority | None = None
) -> Callable[..., Any]:
    def make(key: FileKeyStore) -> str:
        return cert_pem((ca or fake.ca).issue(cn, key.public_key())).decode()

    return make


TAMPERS: list[
    tuple[str, Callable[[FakeCloudApi, FileKeyStore], dict[str, Any]], type[Exception], str]
] = [
    (
        "certificate-for-another-key",
        lambda f, k: {
            "certificate_pem": cert_pem(
                f.ca.issue("vaaaaaaaaaaaaaaa1", OTHER_KEY.public_key())
            ).decode()
        },
        VerificationError,
        "not for this gateway's key",
    ),
    (
        "cn-not-the-vid",
        lambda f, k: {"certificate_pem": _reissued(f, "vbbbbbbbbbbbbbbb2")(k)},
        VerificationError,
        "CN is not the returned vid",
    ),
    (
        "vid-malformed",
        lambda f, k: {"vid": VIN, "certificate_pem": _reissued(f, VIN)(k)},
        VerificationError,
        "malformed vid",
    ),
    (
        "issued-by-another-ca",
        lambda f, k: {"certificate_pem": _reissued(f, "vaaaaaaaaaaaaaaa1", OTHER_CA)(k)},
        VerificationError,
        "not issued by a CA",
    ),
    (
        "chain-of-another-ca",
        lambda f, k: {"ca_chain_pem": cert_pem(OTHER_CA.cert).decode()},
        VerificationError,
        "not issued by a CA",
    ),
    (
        "same-name-other-key-ca",
        lambda f, k: {
            "ca_chain_pem": cert_pem(new_ca(f.ca.cert.subject.rfc4514_string()[3:])[1]).decode()
        },
        VerificationError,
        "not issued by a CA",
    ),
    (
        "keyset-signed-by-another-root",
        lambda f, k: {"keyset": keyset_envelope(OTHER_KEY, [(f.signing.public_key(), None)])},
        VerificationError,
        "key set does not verify",
    ),
    ("keyset-not-envelope", lambda f, k: {"keyset": "{}"}, VerificationError, "key set"),
    (
        "certificate-garbage",
        lambda f, k: {"certificate_pem": "junk"},
        MalformedAnswerError,
        "certificate",
    ),
    ("chain-garbage", lambda f, k: {"ca_chain_pem": "junk"}, MalformedAnswerError, "CA chain"),
    ("port-out-of-range", lambda f, k: {"broker_port": 70000}, MalformedAnswerError, "broker_port"),
    ("port-as-text", lambda f, k: {"broker_port": "8883"}, MalformedAnswerError, "broker_port"),
    ("no-keyset", lambda f, k: {"keyset": None}, MalformedAnswerError, "keyset"),
    (
        "naive-not-after",
        lambda f, k: {"not_after": "2030-01-01T00:00:00"},
        MalformedAnswerError,
        "not_after",
    ),
]


def test_a_good_answer_verifies(fake_cloud: FakeCloudApi, car_key: FileKeyStore) -> None:
    found = verify_answer(
        answer_bytes(fake_cloud, car_key), car_key.public_key(), fake_cloud.root.public_key()
    )
    assert found.vid == "vaaaaaaaaaaaaaaa1"
    assert (found.broker_host, found.broker_port) == fake_cloud.broker
    assert found.keyset is not None and found.keyset.version == 1
    assert found.not_after - found.not_before == timedelta(days=90)


def test_unknown_answer_fields_are_ignored(fake_cloud: FakeCloudApi, car_key: FileKeyStore) -> None:
    content = answer_bytes(fake_cloud, car_key, fleet_id="f_1", colour="red")
    assert verify_answer(content, car_key.public_key(), fake_cloud.root.public_key()).vid


@pytest.mark.parametrize(
    ("name", "tamper", "error", "message"), TAMPERS, ids=[t[0] for t in TAMPERS]
)
def test_answers_that_do_not_verify_are_refused(
    fake_cloud: FakeCloudApi,
    car_key: FileKeyStore,
    name: str,
    tamper: Callable[[FakeCloudApi, FileKeyStore], dict[str, Any]],
    error: type[Exception],
    message: str,
) -> None:
    content = answer_bytes(fake_cloud, car_key, **tamper(fake_cloud, car_key))
    with pytest.raises(error, match=message):
        verify_answer(content, car_key.public_key(), fake_cloud.root.public_key())


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"vid": "vaaaaaaaaaaaaaaa1"}', b"{" + b" " * 70000 + b"}"],
    ids=["empty", "not-json", "array", "missing-fields", "too-large"],
)
def test_malformed_answers_are_refused(content: bytes, car_key: FileKeyStore) -> None:
    with pytest.raises(MalformedAnswerError):
        verify_answer(content, car_key.public_key(), None)


def test_a_renewal_must_keep_the_vid(fake_cloud: FakeCloudApi, car_key: FileKeyStore) -> None:
    content = answer_bytes(fake_cloud, car_key)
    with pytest.raises(VerificationError, match="not vbbbbbbbbbbbbbbb2"):
        verify_answer(content, car_key.public_key(), None, expected_vid="vbbbbbbbbbbbbbbb2")
    assert verify_answer(content, car_key.public_key(), None).keyset is None


@pytest.mark.parametrize(
    ("status", "content", "code", "message"),
    [
        (
            409,
            b'{"error":{"code":"claim_used","message":"already used"}}',
            "claim_used",
            "already used",
        ),
        (404, b'{"error":{"code":"claim_unknown"}}', "claim_unknown", "no message"),
        (422, b'{"detail":"x"}', "http_422", '{"detail":"x"}'),
        (502, b"<html>Bad Gateway</html>", "http_502", "<html>Bad Gateway</html>"),
        (400, b"", "http_400", "no message"),
        (400, b"line one\nline two", "http_400", "line one line two"),
        (400, b'{"error":{"code":7}}', "http_400", '{"error":{"code":7}}'),
    ],
)
def test_refusals_carry_the_error_code(
    status: int, content: bytes, code: str, message: str
) -> None:
    refused = enrollment.refusal(status, content)
    assert (refused.status, refused.code) == (status, code)
    assert str(refused) == f"cloud refused ({status} {code}): {message}"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.example", True),
        ("https://api.example:8443/", True),
        ("https://127.0.0.1:8443/base", True),
        ("http://api.example", False),
        ("api.example", False),
        ("https://", False),
        ("https://api.example/#x", False),
    ],
)
def test_the_cloud_url_must_be_https(url: str, ok: bool) -> None:
    if ok:
        assert not enrollment.check_cloud_url(url).endswith("/")
    else:
        with pytest.raises(ValueError, match="https"):
            enrollment.check_cloud_url(url)


def test_enroll_request_sends_optional_fields_only_when_given() -> None:
    assert enrollment.enroll_request("c", b"CSR").keys() == {"claim_token", "csr_pem"}
    full = enrollment.enroll_request("c", b"CSR", vin=VIN, fleet_id="f_1")
    assert full == {"claim_token": "c", "csr_pem": "CSR", "vin": VIN, "fleet_id": "f_1"}


# ---- the atomic install ---------------------------------------------------------------

FILES = {"car.crt": b"CERT", "ca.crt": b"CA", "keyset.json": b"KEYSET", "agent.toml": b"vid = 1\n"}
COMPLETE = {"car.key", *FILES}


def _names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def count_steps(action: Callable[[], None]) -> int:
    """How many file-system calls ``action`` makes."""
    with pytest.MonkeyPatch.context() as patch:
        seen = fail_at(patch, step=-1)
        action()
    return len(seen)


def test_install_writes_a_complete_identity_with_private_modes(tmp_path: Path) -> None:
    dest = tmp_path / "id"
    identity.install(dest, FileKeyStore.generate(), FILES, force=False)
    assert _names(dest) == COMPLETE
    assert stat.S_IMODE((dest / "car.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert _names(tmp_path) == {"id"}, "no staging left behind"


def test_install_refuses_an_existing_identity_but_fills_an_empty_directory(tmp_path: Path) -> None:
    dest = tmp_path / "id"
    dest.mkdir()
    identity.install(dest, FileKeyStore.generate(), FILES, force=False)
    with pytest.raises(FileExistsError):
        identity.install(dest, FileKeyStore.generate(), FILES, force=False)


def test_a_failure_at_any_step_leaves_no_identity_or_a_complete_one(tmp_path: Path) -> None:
    steps = count_steps(
        lambda: identity.install(tmp_path / "probe", FileKeyStore.generate(), FILES, force=False),
    )
    assert steps >= 8
    for step in range(1, steps + 1):
        dest = tmp_path / f"id-{step}"
        with pytest.MonkeyPatch.context() as patch:
            fail_at(patch, step)
            with pytest.raises(Fault):
                identity.install(dest, FileKeyStore.generate(), FILES, force=False)
        assert not dest.exists() or _names(dest) == COMPLETE, f"step {step}"
        for name in FILES:
            if dest.exists():
                assert (dest / name).read_bytes() == FILES[name]


def test_a_forced_replace_that_fails_keeps_the_old_identity_or_installs_the_new(
    tmp_path: Path,
) -> None:
    new_files = {name: data + b"-new" for name, data in FILES.items()}
    probe = tmp_path / "probe"
    identity.install(probe, FileKeyStore.generate(), FILES, force=False)
    steps = count_steps(
        lambda: identity.install(probe, FileKeyStore.generate(), new_files, force=True)
    )
    for step in range(1, steps + 1):
        dest = tmp_path / f"id-{step}"
        identity.install(dest, FileKeyStore.generate(), FILES, force=False)
        with pytest.MonkeyPatch.context() as patch:
            fail_at(patch, step)
            try:
                identity.install(dest, FileKeyStore.generate(), new_files, force=True)
            except Fault:
                pass
            else:  # the failure hit the clean-up of the old identity, after the switch
                assert (dest / "car.crt").read_bytes() == new_files["car.crt"]
        assert _names(dest) == COMPLETE, f"step {step}"
        held = {(dest / name).read_bytes() for name in FILES}
        assert held in ({*FILES.values()}, {*new_files.values()}), f"step {step}: a mix"


# ---- enrollment over HTTPS -------------------------------------------------------------


@pytest.fixture
def cloud_api(tmp_path: Path) -> Iterator[tuple[FakeCloudApi, Served]]:
    fake = FakeCloudApi.make()
    fake.claims.add(CLAIM)
    with serve_https(fake.app(), fake.ca, tmp_path / "api") as served:
        yield fake, served


@pytest.fixture
def root_pub(tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served]) -> Path:
    path = tmp_path / "root.pub"
    path.write_bytes(public_pem(cloud_api[0].root.public_key()))
    return path


def enroll(
    served: Served, dest: Path, root_pub: Path, claim: str = CLAIM, **kwargs: Any
) -> enrollment.Identity:
    kwargs.setdefault("api_ca_file", served.ca_file)
    kwargs.setdefault("timeout_s", 5.0)
    return asyncio.run(provisioning.enroll(served.url, claim, dest, root_pub, **kwargs))


def test_enroll_installs_an_identity_that_runs(
    tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served], root_pub: Path
) -> None:
    fake, served = cloud_api
    dest = tmp_path / "ctpl"
    found = enroll(served, dest, root_pub, vin=VIN, fleet_id="f_1")
    sent = fake.requests[0]
    assert (sent["claim_token"], sent["vin"], sent["fleet_id"]) == (CLAIM, VIN, "f_1")
    assert len(x509.load_pem_x509_csr(sent["csr_pem"].encode()).subject) == 0
    assert _names(dest) == COMPLETE
    config = load_config(dest / "agent.toml")
    assert config.vid == found.vid
    assert (config.broker_host, config.broker_port) == fake.broker
    assert config.key_file == dest / "car.key" and config.keyset_file == dest / "keyset.json"
    assert config.root_key == root_pub and config.api_ca_file == served.ca_file
    assert config.cloud_url == served.url and config.db_path == dest / "agent.db"
    assert config.cloud_keys == ()
    keys = load_trusted_keys((), config.keyset_file, config.root_key, datetime.now(UTC))
    assert set(keys) == {kid_for(fake.signing.public_key())}
    assert public_pem(FileKeyStore.load(config.key_file).public_key()) == public_pem(
        fake.keys[found.vid]
    )
    assert stat.S_IMODE(config.key_file.stat().st_mode) == 0o600
    Agent(config)  # loads key, certificate, CA and key set: everything `run` needs


def test_enroll_refuses_an_existing_identity_before_spending_the_claim(
    tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served], root_pub: Path
) -> None:
    fake, served = cloud_api
    dest = tmp_path / "ctpl"
    first = enroll(served, dest, root_pub)
    with pytest.raises(IdentityExistsError, match="--force"):
        enroll(served, dest, root_pub)
    assert len(fake.requests) == 1
    fake.claims.add("cl_second")
    second = enroll(served, dest, root_pub, claim="cl_second", force=True)
    assert second.vid != first.vid
    assert load_config(dest / "agent.toml").vid == second.vid
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ctpl")], "no leftovers"


def test_a_refused_claim_shows_the_error_code(
    tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served], root_pub: Path
) -> None:
    with pytest.raises(CloudRefusedError, match="claim_unknown") as caught:
        enroll(cloud_api[1], tmp_path / "ctpl", root_pub, claim="cl_wrong")
    assert (caught.value.status, caught.value.code) == (404, "claim_unknown")
    assert not (tmp_path / "ctpl").exists()


def test_an_answer_that_does_not_verify_installs_nothing(
    tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served], root_pub: Path
) -> None:
    fake, served = cloud_api
    fake.tamper = lambda a: (
        a | {"keyset": keyset_envelope(OTHER_KEY, [(fake.signing.public_key(), None)])}
    )
    with pytest.raises(VerificationError, match="key set"):
        enroll(served, tmp_path / "ctpl", root_pub)
    assert not (tmp_path / "ctpl").exists()


def test_an_untrusted_server_is_unreachable(
    tmp_path: Path, cloud_api: tuple[FakeCloudApi, Served], root_pub: Path
) -> None:
    with pytest.raises(CloudUnreachableError, match="TLS: CERTIFICATE_VERIFY_FAILED"):
        enroll(cloud_api[1], tmp_path / "ctpl", root_pub, api_ca_file=None)
    assert cloud_api[0].requests == []


def test_a_closed_port_is_unreachable(tmp_path: Path, root_pub: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    served = Served(f"https://127.0.0.1:{port}", root_pub, port)
    with pytest.raises(CloudUnreachableError):
        enroll(served, tmp_path / "ctpl", root_pub, api_ca_file=None)


def test_a_silent_server_times_out(tmp_path: Path, root_pub: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()  # the TCP handshake completes; TLS never answers
        port = sock.getsockname()[1]
        served = Served(f"https://127.0.0.1:{port}", root_pub, port)
        with pytest.raises(CloudUnreachableError):
            enroll(served, tmp_path / "ctpl", root_pub, api_ca_file=None, timeout_s=0.3)


# ---- the command ------------------------------------------------------------------------


def cli(served: Served, dest: Path, root_pub: Path, *extra: str) -> int:
    return main(
        ["enroll", "--cloud", served.url, "--claim", CLAIM, "--dir", str(dest),
         "--root-key", str(root_pub), "--ca", str(served.ca_file), "--timeout", "5", *extra]
    )  # fmt: skip


def test_enroll_command(
    tmp_path: Path,
    cloud_api: tuple[FakeCloudApi, Served],
    root_pub: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(cloud_api[1], tmp_path / "ctpl", root_pub, "--vin", VIN) == 0
    out = capsys.readouterr().out
    assert out.startswith("enrolled as v") and "run --config" in out
    assert cli(cloud_api[1], tmp_path / "ctpl", root_pub) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctpl-agent: enrollment failed:") and "--force" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda f: setattr(f, "refuse", (409, "claim_used")), "cloud refused (409 claim_used)"),
        (lambda f: setattr(f, "tamper", lambda a: {"vid": a["vid"]}), "malformed answer"),
        (lambda f: setattr(f, "tamper", lambda a: a | {"vid": "vzzzzzzzzzzzzzzz9"}), "CN is not"),
    ],
    ids=["refused", "malformed", "unverified"],
)
def test_enroll_command_failures_are_one_line_and_exit_1(
    tmp_path: Path,
    cloud_api: tuple[FakeCloudApi, Served],
    root_pub: Path,
    capsys: pytest.CaptureFixture[str],
    setup: Callable[[FakeCloudApi], None],
    expected: str,
) -> None:
    setup(cloud_api[0])
    assert cli(cloud_api[1], tmp_path / "ctpl", root_pub) == 1
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ctpl").exists()


def test_enroll_command_unreachable_and_bad_arguments(
    tmp_path: Path, root_pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(cert_pem(OTHER_CA.cert))
    closed = Served(f"https://127.0.0.1:{port}", ca_file, port)
    assert cli(closed, tmp_path / "ctpl", root_pub) == 1
    assert "enrollment failed" in capsys.readouterr().err
    insecure = Served(f"http://127.0.0.1:{port}", ca_file, port)
    assert cli(insecure, tmp_path / "ctpl", root_pub) == 2
    assert "https" in capsys.readouterr().err
    assert cli(closed, tmp_path / "ctpl", tmp_path / "missing.pub") == 2
    assert "root key" in capsys.readouterr().err
