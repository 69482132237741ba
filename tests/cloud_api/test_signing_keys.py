"""Rolling the cloud's message-signing key: the ring file, the roll command, the key set."""

import json
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import keyset
from agent.protocol.keys import generate_private_key, kid_for, load_public_key, private_pem
from cloud import signing_keys as sk
from cloud.cli import _parser, _serve_config, main
from cloud.config import CloudConfig
from cloud.errors import ConfigError
from cloud.pki import DevPki, write_private

from .conftest import serving, within

NOW = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def entry(kid: str, not_after: datetime | None = None) -> sk.RingEntry:
    return sk.RingEntry(kid=kid, key_file=f"{kid}.key", not_after=not_after)


def ring(version: int, *entries: sk.RingEntry) -> sk.SigningRing:
    return sk.SigningRing(version=version, keys=entries)


@pytest.fixture
def own_pki(shared_pki: DevPki, tmp_path: Path) -> DevPki:
    """A copy of the shared dev PKI that a test may roll."""
    return DevPki(Path(shutil.copytree(shared_pki.root, tmp_path / "pki")))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # The key in service gets the cut-off; the new key is appended, in service.
        (ring(1, entry("a")), ring(2, entry("a", NOW + WEEK), entry("new"))),
        # A key past its cut-off is dropped; one still ahead keeps its own cut-off.
        (
            ring(4, entry("a", NOW - timedelta(seconds=1)), entry("b", NOW + WEEK), entry("c")),
            ring(5, entry("b", NOW + WEEK), entry("c", NOW + WEEK), entry("new")),
        ),
        # A cut-off exactly now has passed.
        (ring(2, entry("a", NOW), entry("b")), ring(3, entry("b", NOW + WEEK), entry("new"))),
    ],
)
def test_roll_rule(before: sk.SigningRing, after: sk.SigningRing) -> None:
    assert sk.roll(before, entry("new"), NOW, WEEK) == after


def test_roll_refuses_a_ring_over_the_key_set_limit() -> None:
    full = ring(1, *(entry(f"k{i}", NOW + WEEK) for i in range(sk.MAX_KEYS - 1)), entry("last"))
    with pytest.raises(ValueError, match="more than 16"):
        sk.roll(full, entry("new"), NOW, WEEK)
    with pytest.raises(ValueError, match="negative"):
        sk.roll(ring(1, entry("a")), entry("new"), NOW, -WEEK)


def test_a_ring_whose_newest_key_has_a_cut_off_is_malformed() -> None:
    with pytest.raises(ValidationError, match="newest"):
        ring(1, entry("a"), entry("b", NOW))
    with pytest.raises(ValidationError, match="twice"):
        ring(1, entry("a", NOW), entry("a"))


def test_roll_signing_key_writes_the_ring_with_a_0600_key_and_the_old_keys_cut_off(
    own_pki: DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    old_kid = kid_for(load_public_key(own_pki.signing_pub.read_bytes()))
    assert main(["roll-signing-key", "--pki", str(own_pki.root)], now=NOW) == 0
    assert "restart ctpl-cloud serve" in capsys.readouterr().out

    written = json.loads(own_pki.signing_keys.read_text())
    assert written["version"] == 2
    assert written["keys"][0]["kid"] == old_kid
    assert written["keys"][0]["key_file"] == "cloud-signing.key"
    assert datetime.fromisoformat(written["keys"][0]["not_after"]) == NOW + WEEK
    assert written["keys"][1]["not_after"] is None
    new_file = own_pki.root / written["keys"][1]["key_file"]
    assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
    loaded = sk.load_ring(own_pki.signing_keys)
    assert kid_for(loaded.newest.public_key()) == written["keys"][1]["kid"] != old_kid
    assert not [p for p in own_pki.root.iterdir() if p.name.endswith(".tmp")]

    # Eight days on, with a one-day overlap: the first key is past its cut-off and goes.
    later = NOW + timedelta(days=8)
    argv = ["roll-signing-key", "--pki", str(own_pki.root), "--overlap-days", "1"]
    assert main(argv, now=later) == 0
    again = sk.read_ring(own_pki.signing_keys)
    assert again.version == 3
    assert [k.kid for k in again.keys] == [written["keys"][1]["kid"], again.keys[1].kid]
    assert again.keys[0].not_after == later + timedelta(days=1)


def test_roll_signing_key_on_a_ring_file(tmp_path: Path) -> None:
    ring_file = tmp_path / "keys" / "ring.json"
    ring_file.parent.mkdir()
    first = tmp_path / "first.key"
    write_private(first, private_pem(generate_private_key()))
    # No ring and no key in service: nothing to roll from.
    assert main(["roll-signing-key", "--keys", str(ring_file)], now=NOW) == 1
    assert not ring_file.exists()
    argv = ["roll-signing-key", "--keys", str(ring_file), "--signing-key", str(first)]
    assert main(argv, now=NOW) == 0
    loaded = sk.load_ring(ring_file)
    assert loaded.version == 2 and len(loaded.keys) == 2
    assert sk.read_ring(ring_file).keys[0].key_file == "../first.key"


def test_a_ring_that_names_the_wrong_key_is_refused(own_pki: DevPki) -> None:
    assert main(["roll-signing-key", "--pki", str(own_pki.root)], now=NOW) == 0
    written = json.loads(own_pki.signing_keys.read_text())
    written["keys"][0]["key_file"] = "root.key"
    own_pki.signing_keys.write_text(json.dumps(written))
    with pytest.raises(ConfigError, match="kid"):
        sk.load_ring(own_pki.signing_keys)
    assert main(["roll-signing-key", "--pki", str(own_pki.root)], now=NOW) == 1
    assert json.loads(own_pki.signing_keys.read_text()) == written  # not rewritten


def test_a_single_signing_key_is_a_ring_of_one_until_a_ring_exists(own_pki: DevPki) -> None:
    config = CloudConfig.from_pki(own_pki, db_path=own_pki.root / "db", broker_port=8883)
    single = sk.load_signing_keys(config)
    assert single.version == 1 and len(single.keys) == 1 and single.keys[0].not_after is None
    assert main(["roll-signing-key", "--pki", str(own_pki.root)], now=NOW) == 0
    rolled = sk.load_signing_keys(config)
    assert rolled.version == 2 and rolled.keys[0].kid == single.keys[0].kid
    served = _serve_config(_parser().parse_args(["serve", "--db", "x", "--pki", str(own_pki.root)]))
    assert served.signing_keys_file == own_pki.signing_keys
    with pytest.raises(ValidationError, match="signing_key"):
        CloudConfig.from_pki(
            own_pki,
            db_path=own_pki.root / "db",
            broker_port=8883,
            signing_key_file=None,
            signing_keys_file=None,
        )


async def test_the_key_set_after_a_roll_verifies_and_lists_both_keys(
    own_pki: DevPki, tmp_path: Path
) -> None:
    old = load_public_key(own_pki.signing_pub.read_bytes())
    assert main(["roll-signing-key", "--pki", str(own_pki.root)], now=NOW) == 0
    new = sk.load_ring(own_pki.signing_keys).newest.public_key()
    root = load_public_key(own_pki.root_pub.read_bytes())
    async with serving(own_pki, tmp_path) as api:
        r = await within(api.client.get("/v1/keyset"))
        assert r.status_code == 200, r.text
        held = keyset.verify(r.json()["keyset"].encode(), root, held_version=1)
        assert held.version == 2
        assert held.keys == {kid_for(old): (old, NOW + WEEK), kid_for(new): (new, None)}
        assert set(held.usable(NOW)) == {kid_for(old), kid_for(new)}
        assert set(held.usable(NOW + WEEK)) == {kid_for(new)}
        # Enrollment hands out the same key set.
        _, key = await api.enrolled()
        fleet_id, token = await api.fleet()
        r2 = await api.enroll((await api.claims(fleet_id, token))[0], key)
        assert r2.json()["keyset"] == r.json()["keyset"]
