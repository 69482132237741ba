"""Key sets: verified against the pinned root, newer than held, keys usable until their cut-off."""

import json
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent import keyset
from agent.config import AgentConfig, dumps_toml, load_config
from agent.errors import ConfigError, KeySetError
from agent.keyring import load_trusted_keys
from agent.protocol.envelope import Signer
from agent.protocol.keys import PrivateKey, generate_private_key, kid_for, public_pem
from tests.agent.fake_api import keyset_envelope

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ROOT = generate_private_key()
SIGNING = generate_private_key()
ROLLED = generate_private_key()


def entry(key: PrivateKey, not_after: datetime | None = None, **changes: Any) -> dict[str, Any]:
    values = {
        "kid": kid_for(key.public_key()),
        "public_key_pem": public_pem(key.public_key()).decode(),
        "not_after": None if not_after is None else not_after.isoformat(),
    }
    return values | changes


def body(**changes: Any) -> dict[str, Any]:
    values = {
        "type": "keyset",
        "version": 3,
        "issued_at": NOW.isoformat(),
        "keys": [entry(SIGNING)],
    }
    return values | changes


def seal(obj: Any, *, signer: PrivateKey = ROOT, topic: str = keyset.TOPIC) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return Signer(signer).seal(topic, data)


def test_a_good_key_set_verifies() -> None:
    held = keyset.verify(seal(body()), ROOT.public_key())
    assert held.version == 3
    assert set(held.keys) == {kid_for(SIGNING.public_key())}
    assert held.body.issued_at == NOW


def test_the_exact_envelope_is_kept() -> None:
    sealed = seal(body())
    assert keyset.verify(sealed, ROOT.public_key()).envelope == sealed


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: seal(body(), signer=SIGNING), "unknown_key"),
        (lambda: seal(body(), topic="ctpl/v1/vaaaaaaaaaaaaaaa1/down/policy"), "bad_signature"),
        (lambda: seal(body()).replace(b'"sig":"', b'"sig":"AA'), "bad_signature"),
        (lambda: b"not json", "bad_envelope"),
        (lambda: seal(b"not json"), "bad_body"),
        (lambda: seal(body(type="policy.state")), "bad_body"),
        (lambda: seal(body(version=0)), "bad_body"),
        (lambda: seal(body(version="3")), "bad_body"),
        (lambda: seal(body(issued_at="2025-06-01T12:00:00")), "bad_body"),
        (lambda: seal(body(keys=[])), "bad_body"),
        (lambda: seal(body(colour="red")), "bad_body"),
        (lambda: seal(body(keys=[entry(SIGNING, extra=1)])), "bad_body"),
        (lambda: seal({k: v for k, v in body().items() if k != "version"}), "bad_body"),
        (lambda: seal(body(keys=[entry(SIGNING, kid=kid_for(ROLLED.public_key()))])), "bad_key"),
        (lambda: seal(body(keys=[entry(SIGNING), entry(SIGNING)])), "bad_key"),
        (lambda: seal(body(keys=[entry(SIGNING, public_key_pem="junk")])), "bad_key"),
    ],
    ids=[
        "signed-by-another-key",
        "signed-for-another-topic",
        "tampered-signature",
        "not-an-envelope",
        "body-not-json",
        "wrong-type",
        "version-zero",
        "version-as-text",
        "naive-issued-at",
        "no-keys",
        "unknown-field",
        "unknown-key-field",
        "no-version",
        "kid-not-of-the-key",
        "kid-twice",
        "key-not-pem",
    ],
)
def test_bad_key_sets_are_refused(make: Callable[[], bytes], reason: str) -> None:
    with pytest.raises(KeySetError) as caught:
        keyset.verify(make(), ROOT.public_key())
    assert caught.value.reason == reason


def test_a_key_that_is_not_p256_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = public_pem(p384.public_key()).decode()  # type: ignore[arg-type]
    with pytest.raises(KeySetError, match="P-256") as caught:
        keyset.verify(seal(body(keys=[entry(SIGNING, public_key_pem=pem)])), ROOT.public_key())
    assert caught.value.reason == "bad_key"


@pytest.mark.parametrize(
    ("held", "offered", "accepted"),
    [(None, 1, True), (1, 2, True), (2, 2, False), (3, 2, False), (2**40, 2**40 + 1, True)],
)
def test_version_must_grow(held: int | None, offered: int, accepted: bool) -> None:
    sealed = seal(body(version=offered))
    if accepted:
        assert keyset.verify(sealed, ROOT.public_key(), held_version=held).version == offered
    else:
        with pytest.raises(KeySetError, match="not newer") as caught:
            keyset.verify(sealed, ROOT.public_key(), held_version=held)
        assert caught.value.reason == "rollback"


@pytest.mark.parametrize(
    ("not_after", "usable"),
    [
        (None, True),
        (NOW + timedelta(days=30), True),
        (NOW + timedelta(seconds=1), True),
        (NOW, False),
        (NOW - timedelta(seconds=1), False),
        (NOW - timedelta(days=400), False),
    ],
)
def test_a_key_is_usable_until_its_cut_off(not_after: datetime | None, usable: bool) -> None:
    sealed = seal(body(keys=[entry(SIGNING), entry(ROLLED, not_after)]))
    keys = keyset.verify(sealed, ROOT.public_key()).usable(NOW)
    assert kid_for(SIGNING.public_key()) in keys
    assert (kid_for(ROLLED.public_key()) in keys) is usable


def test_cut_off_in_another_zone_is_the_same_instant() -> None:
    china = NOW.astimezone(ZoneInfo("Asia/Shanghai"))
    sealed = seal(body(keys=[entry(ROLLED, china + timedelta(seconds=1))]))
    assert keyset.verify(sealed, ROOT.public_key()).usable(NOW) != {}
    assert keyset.verify(sealed, ROOT.public_key()).usable(NOW + timedelta(seconds=1)) == {}


def test_not_after_may_be_absent() -> None:
    plain = entry(SIGNING)
    del plain["not_after"]
    assert keyset.verify(seal(body(keys=[plain])), ROOT.public_key()).usable(NOW) != {}


def test_the_cloud_sides_key_set_verifies_here() -> None:
    """The contract from both ends: cloud.keyset builds what agent.keyset accepts."""
    cloud_keyset = pytest.importorskip("cloud.keyset")
    sealed = cloud_keyset.build_keyset(
        Signer(ROOT), [(SIGNING.public_key(), None), (ROLLED.public_key(), NOW)],
        version=7, issued_at=NOW,
    )  # fmt: skip
    held = keyset.verify(sealed.encode(), ROOT.public_key())
    assert held.version == 7
    assert set(held.usable(NOW)) == {kid_for(SIGNING.public_key())}


# ---- pinned keys: cloud_keys ∪ the held key set's usable keys ------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "root": tmp_path / "root.pub",
        "keyset": tmp_path / "keyset.json",
        "pinned": tmp_path / "pinned.pub",
    }
    paths["root"].write_bytes(public_pem(ROOT.public_key()))
    paths["pinned"].write_bytes(public_pem(generate_private_key().public_key()))
    paths["keyset"].write_text(
        keyset_envelope(ROOT, [(SIGNING.public_key(), None), (ROLLED.public_key(), NOW)])
    )
    return paths


def test_trusted_keys_are_the_pinned_ones_and_the_usable_key_set_ones(
    files: dict[str, Path],
) -> None:
    keys = load_trusted_keys([files["pinned"]], files["keyset"], files["root"], NOW)
    pinned = next(iter(load_trusted_keys([files["pinned"]], None, None, NOW)))
    assert set(keys) == {pinned, kid_for(SIGNING.public_key())}
    earlier = load_trusted_keys([], files["keyset"], files["root"], NOW - timedelta(days=1))
    assert kid_for(ROLLED.public_key()) in earlier


def test_a_missing_key_set_file_leaves_the_pinned_keys(files: dict[str, Path]) -> None:
    files["keyset"].unlink()
    assert len(load_trusted_keys([files["pinned"]], files["keyset"], files["root"], NOW)) == 1
    with pytest.raises(ConfigError, match="trust nothing"):
        load_trusted_keys([], files["keyset"], files["root"], NOW)


def test_a_key_set_file_that_does_not_verify_is_a_config_error(files: dict[str, Path]) -> None:
    files["keyset"].write_text(keyset_envelope(SIGNING, [(SIGNING.public_key(), None)]))
    with pytest.raises(ConfigError, match=r"keyset\.json: key set does not verify"):
        load_trusted_keys([files["pinned"]], files["keyset"], files["root"], NOW)


def test_no_usable_key_is_a_config_error(files: dict[str, Path]) -> None:
    files["keyset"].write_text(keyset_envelope(ROOT, [(ROLLED.public_key(), NOW)]))
    with pytest.raises(ConfigError, match="trust nothing"):
        load_trusted_keys([], files["keyset"], files["root"], NOW)


# ---- config ------------------------------------------------------------------------

VID = "vaaaaaaaaaaaaaaa1"
BASE = {"vid": VID, "key_file": "k", "cert_file": "c", "ca_file": "a", "db_path": "d"}


@pytest.mark.parametrize(
    ("settings", "valid"),
    [
        ({"cloud_keys": ["p"]}, True),
        ({"keyset_file": "ks", "root_key": "r"}, True),
        ({"cloud_keys": ["p"], "keyset_file": "ks", "root_key": "r"}, True),
        ({}, False),
        ({"cloud_keys": []}, False),
        ({"keyset_file": "ks"}, False),
        ({"root_key": "r"}, False),
        ({"cloud_keys": ["p"], "cloud_url": "https://api.example:8443/"}, True),
        ({"cloud_keys": ["p"], "cloud_url": "http://api.example"}, False),
        ({"cloud_keys": ["p"], "cloud_url": "https://"}, False),
        ({"cloud_keys": ["p"], "cloud_url": "https://api.example/?q=1"}, False),
        ({"cloud_keys": ["p"], "renewal_check_s": 0}, False),
    ],
)
def test_config_must_trust_something(tmp_path: Path, settings: dict[str, Any], valid: bool) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(dumps_toml(BASE | settings))
    if valid:
        assert isinstance(load_config(path), AgentConfig)
    else:
        with pytest.raises(ConfigError):
            load_config(path)


def test_new_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    settings = {"keyset_file": "keyset.json", "root_key": "/etc/ctpl/root.pub"}
    path.write_text(dumps_toml(BASE | settings | {"api_ca_file": "api-ca.pem"}))
    config = load_config(path)
    assert config.keyset_file == tmp_path / "keyset.json"
    assert config.root_key == Path("/etc/ctpl/root.pub")
    assert config.api_ca_file == tmp_path / "api-ca.pem"
    assert config.cloud_url is None
    assert config.renewal_check_s == 12 * 3600


def test_cloud_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(dumps_toml(BASE | {"cloud_keys": ["p"], "cloud_url": "https://a.example/"}))
    assert load_config(path).cloud_url == "https://a.example"


def test_dumps_toml_round_trips_and_leaves_out_none(tmp_path: Path) -> None:
    settings = {"vid": VID, "port": 8883, "ratio": 0.5, "name": 'a "quoted" 名', "none": None}
    text = dumps_toml(settings | {"paths": (Path("x"), Path("y"))})
    assert tomllib.loads(text) == {k: v for k, v in settings.items() if v is not None} | {
        "paths": ["x", "y"]
    }
