"""``ctpl-agent status``: re-verify the stored record before showing anything."""

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.boot import current_boot_id
from agent.cli import main
from agent.protocol import messages, topics
from agent.protocol.clock import SystemClock
from agent.protocol.envelope import Signer
from agent.protocol.keys import PrivateKey, b64url, generate_private_key, public_pem
from agent.protocol.messages import PolicyState
from agent.store import Store
from agent.trusted_time import Anchor

VID = "vaaaaaaaaaaaaaaa1"
TOPIC = topics.down(VID, "policy")
NOW = "2025-06-01T12:00:00+08:00"


@pytest.fixture
def cloud_key() -> PrivateKey:
    """The cloud's message-signing key, made for the test."""
    return generate_private_key()


@pytest.fixture
def signer(cloud_key: PrivateKey) -> Signer:
    return Signer(cloud_key)


@pytest.fixture
def cloud_pub(tmp_path: Path, cloud_key: PrivateKey) -> Path:
    """The pinned copy of the cloud's public key."""
    path = tmp_path / "cloud-signing.pub"
    path.write_bytes(public_pem(cloud_key.public_key()))
    return path


def seed(db: Path, envelope: bytes, state: PolicyState) -> None:
    async def write() -> None:
        async with asyncio.timeout(5), Store(db) as store:
            await store.save_policy(TOPIC, envelope, state, state.issued_at)

    asyncio.run(write())


@pytest.fixture
def db(tmp_path: Path, signer: Signer, make_state: Any) -> Path:
    """A store holding a cloud-signed state for VID (version 2, active)."""
    path = tmp_path / "agent.db"
    state = make_state(VID, version=2, seq=7)
    seed(path, signer.seal(TOPIC, messages.encode(state)), state)
    return path


def status(db: Path, key: Path, *extra: str) -> int:
    return main(["status", "--db", str(db), "--cloud-key", str(key), "--now", NOW, *extra])


def test_verified_state_is_shown(db: Path, cloud_pub: Path, capsys: Any) -> None:
    assert status(db, cloud_pub) == 0
    lines = capsys.readouterr().out.splitlines()
    # The head unit's status is judged from the dates in trusted time; the cloud's beside it.
    assert lines[0] == "status: covered"
    assert "record status: active" in lines
    assert "insurer: PICC P&C" in lines
    assert "policy no: PDZA****1234" in lines
    assert "coverage: 2024-12-01 to 2025-11-30 24:00 China time" in lines
    assert "days left: 182" in lines
    assert "version: 2" in lines
    assert "fresh until: 2025-06-08T04:00:00+00:00" in lines
    assert "trusted time: given, 2025-06-01T12:00:00+08:00 (±0.0 s)" in lines


def test_json(db: Path, cloud_pub: Path, capsys: Any) -> None:
    assert status(db, cloud_pub, "--json", "--vid", VID) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["verified"] is True
    assert (shown["status"], shown["days_left"], shown["coverage_end"]) == (
        "covered",
        182,
        "2025-11-30",
    )
    assert shown["record_status"] == "active"
    assert shown["trusted_time"] == {
        "confidence": "given",
        "earliest": "2025-06-01T12:00:00+08:00",
        "latest": "2025-06-01T12:00:00+08:00",
    }


def tamper(db: Path) -> None:
    """Turn the stored 'active' into 'lapsed' and keep the cloud's signature."""
    with closing(sqlite3.connect(db)) as conn:
        (raw,) = conn.execute("SELECT envelope FROM policy_state").fetchone()
        env = json.loads(raw)
        body = base64.urlsafe_b64decode(env["body"] + "=" * (-len(env["body"]) % 4))
        env["body"] = b64url(body.replace(b'"active"', b'"lapsed"'))
        conn.execute("UPDATE policy_state SET envelope = ?", (json.dumps(env).encode(),))
        conn.commit()


def test_tampered_record_is_unverified(db: Path, cloud_pub: Path, capsys: Any) -> None:
    tamper(db)
    assert status(db, cloud_pub) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "status unverified"
    assert "lapsed" not in out and "active" not in out


def test_record_signed_by_another_key_is_unverified(db: Path, tmp_path: Path, capsys: Any) -> None:
    other = tmp_path / "other.pub"
    other.write_bytes(public_pem(generate_private_key().public_key()))
    assert status(db, other, "--json") == 1
    with closing(sqlite3.connect(db)) as conn:
        (raw,) = conn.execute("SELECT envelope FROM policy_state").fetchone()
    kid = json.loads(raw)["kid"]
    assert json.loads(capsys.readouterr().out) == {
        "verified": False,
        "reason": f"stored record does not verify: unknown_key: unknown kid {kid!r}",
        "trusted_time": {
            "confidence": "given",
            "earliest": "2025-06-01T12:00:00+08:00",
            "latest": "2025-06-01T12:00:00+08:00",
        },
        "intents_pending": 0,
    }


def test_intents_waiting_for_a_receipt_are_shown(db: Path, cloud_pub: Path, capsys: Any) -> None:
    async def record() -> None:
        async with Store(db) as store:
            for intent_id in ("a" * 32, "b" * 32):
                await store.add_intent(
                    intent_id, "vehicle.event", "{}", datetime.now().astimezone()
                )

    asyncio.run(record())
    assert status(db, cloud_pub) == 0
    assert "outbox: 2 intent(s) waiting for the cloud's receipt" in capsys.readouterr().out
    assert status(db, cloud_pub, "--json") == 0
    assert json.loads(capsys.readouterr().out)["intents_pending"] == 2


def test_record_past_fresh_until_is_unverified(db: Path, cloud_pub: Path, capsys: Any) -> None:
    assert (
        main(
            [
                "status",
                "--db",
                str(db),
                "--cloud-key",
                str(cloud_pub),
                "--now",
                "2025-06-08T04:00:01+00:00",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert out.startswith("status unverified\nreason: record is past fresh_until")


def test_record_for_another_vid_is_unverified(db: Path, cloud_pub: Path, capsys: Any) -> None:
    assert status(db, cloud_pub, "--vid", "vbbbbbbbbbbbbbbb2") == 1
    assert capsys.readouterr().out.startswith("status unverified")


def test_missing_store_is_unverified_and_not_created(
    tmp_path: Path, cloud_pub: Path, capsys: Any
) -> None:
    missing = tmp_path / "none.db"
    assert status(missing, cloud_pub) == 1
    assert capsys.readouterr().out.startswith("status unverified")
    assert not missing.exists()


def test_empty_store_is_unverified(tmp_path: Path, cloud_pub: Path, capsys: Any) -> None:
    empty = tmp_path / "empty.db"

    async def create() -> None:
        async with asyncio.timeout(5), Store(empty):
            pass

    asyncio.run(create())
    assert status(empty, cloud_pub) == 1
    assert "no policy state is stored" in capsys.readouterr().out


def raise_floor(db: Path, at: str) -> None:
    async def write() -> None:
        async with asyncio.timeout(5), Store(db) as store:
            await store.raise_trusted_floor(datetime.fromisoformat(at))

    asyncio.run(write())


def test_without_now_only_the_carried_floor_is_known(
    db: Path, cloud_pub: Path, capsys: Any
) -> None:
    # No --now: this process has no anchor, only the floor (here the record's issued_at).
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "status unverified"
    assert "carried from an earlier boot" in lines[1]
    assert lines[2] == "trusted time: carried, at least 2025-06-01T04:00:00+00:00"


def test_carried_floor_past_fresh_until_says_so(db: Path, cloud_pub: Path, capsys: Any) -> None:
    raise_floor(db, "2025-06-09T00:00:00+00:00")
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub), "--json"]) == 1
    shown = json.loads(capsys.readouterr().out)
    assert shown["reason"].startswith("record is past fresh_until")
    assert shown["trusted_time"] == {
        "confidence": "carried",
        "earliest": "2025-06-09T00:00:00+00:00",
        "latest": None,
    }


def test_no_store_no_time(tmp_path: Path, cloud_pub: Path, capsys: Any) -> None:
    missing = tmp_path / "none.db"
    assert main(["status", "--db", str(missing), "--cloud-key", str(cloud_pub)]) == 1
    assert capsys.readouterr().out.splitlines()[2] == (
        "trusted time: none (no cloud-signed time yet)"
    )


ISSUED = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)
"""The stored record's issued_at (``make_state``'s default); fresh until a week later."""
Setup = Callable[[Path, str], None]
"""Writes time rows into the store at the path, given this boot's id."""


@pytest.fixture
def this_boot(monkeypatch: pytest.MonkeyPatch) -> str:
    """This boot's id, as ``status`` reads it (the machine's own, or a fixed one where the
    system does not tell it: the anchor tests never depend on the host)."""
    boot = current_boot_id() or "test-boot-0000000000000000"
    monkeypatch.setattr("agent.cli.current_boot_id", lambda: boot)
    return boot


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the monotonic reading ``status`` takes: a fault injection, the real one never
    moves back."""

    def set_reading(value: float) -> None:
        monkeypatch.setattr(SystemClock, "monotonic", lambda self: value)

    return set_reading


def anchored(sent: float, received: float, issued_at: datetime = ISSUED) -> Setup:
    """Save an anchor under this boot's id, through the store."""

    def setup(db: Path, boot: str) -> None:
        async def write() -> None:
            async with asyncio.timeout(5), Store(db) as store:
                await store.save_anchor(boot, Anchor(issued_at, sent, received))

        asyncio.run(write())

    return setup


def floored(at: str) -> Setup:
    """Raise the persisted floor, through the store."""
    return lambda db, _boot: raise_floor(db, at)


def corrupted(sql: str) -> Setup:
    """Write a time row the store's API would never write (by hand: the fault itself)."""

    def setup(db: Path, _boot: str) -> None:
        with closing(sqlite3.connect(db)) as conn:
            conn.execute(sql)
            conn.commit()

    return setup


def test_anchor_of_this_boot_gives_fresh_time(
    db: Path, cloud_pub: Path, this_boot: str, monotonic: Callable[[float], None], capsys: Any
) -> None:
    anchored(100.0, 100.5)(db, this_boot)
    monotonic(160.0)
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "status: covered"
    assert lines[-1] == "trusted time: fresh, 2025-06-01T04:00:59.750025+00:00 (±0.3 s)"


def test_anchor_of_another_boot_leaves_the_floor(
    db: Path, cloud_pub: Path, monotonic: Callable[[float], None], capsys: Any
) -> None:
    anchored(100.0, 100.5)(db, "another-boot")
    monotonic(160.0)
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "status unverified"
    assert "carried from an earlier boot" in lines[1]


ANCHOR_IGNORED = "trusted time: carried, at least 2025-06-01T04:00:00+00:00"


@pytest.mark.parametrize(
    ("setups", "mono", "extra", "reason", "time"),
    [
        pytest.param(
            [anchored(100.0, 100.5)],
            100.2,
            [],
            "trusted time unavailable: the monotonic clock reads before the saved anchor "
            "(100.2 < 100.5); anchor ignored",
            ANCHOR_IGNORED,
            id="monotonic-before-anchor",
        ),
        pytest.param(
            [anchored(5000.0, 5000.5)],
            3.0,
            [],
            "trusted time unavailable: the monotonic clock reads before the saved anchor "
            "(3.0 < 5000.5); anchor ignored",
            ANCHOR_IGNORED,
            id="monotonic-restarted-same-boot-id",
        ),
        pytest.param(
            [anchored(200.0, 100.0)],
            300.0,
            [],
            "trusted time unavailable: the saved anchor cannot be used "
            "(received 100.0 before sent 200.0); anchor ignored",
            ANCHOR_IGNORED,
            id="anchor-sent-after-received",
        ),
        pytest.param(
            [anchored(float("-inf"), 100.0)],
            300.0,
            [],
            "trusted time unavailable: the saved anchor or the monotonic clock is not a "
            "finite reading (sent -inf, received 100.0, monotonic 300.0); anchor ignored",
            ANCHOR_IGNORED,
            id="anchor-infinite-reading",
        ),
        pytest.param(
            [anchored(-1e300, -1e300)],
            300.0,
            [],
            "trusted time unavailable: the saved anchor cannot be used (",
            ANCHOR_IGNORED,
            id="anchor-readings-overflow",
        ),
        pytest.param(
            [anchored(100.0, 100.5, datetime(9999, 12, 31, tzinfo=UTC))],
            160.0,
            [],
            "trusted time unavailable: the saved anchor gives 9999-12-31T00:00:59.494050+00:00, "
            "outside the range time can be judged in",
            ANCHOR_IGNORED,
            id="anchor-at-the-end-of-time",
        ),
        pytest.param(
            [floored("2025-06-01T05:00:00+00:00"), anchored(100.0, 100.5)],
            160.0,
            [],
            "trusted time unavailable: the trusted floor is past the saved anchor's upper "
            "bound (the monotonic clock missed time); anchor ignored",
            "trusted time: carried, at least 2025-06-01T05:00:00+00:00",
            id="floor-past-anchor",
        ),
        pytest.param(
            [floored("3000-01-01T00:00:00+00:00")],
            160.0,
            [],
            "record is past fresh_until 2025-06-08T04:00:00+00:00",
            "trusted time: carried, at least 3000-01-01T00:00:00+00:00",
            id="floor-far-future",
        ),
        pytest.param(
            [floored("9999-12-31T00:00:00+00:00")],
            160.0,
            [],
            "trusted time unavailable: the trusted floor gives 9999-12-31T00:00:00+00:00, "
            "outside the range time can be judged in",
            "trusted time: carried, at least 9999-12-31T00:00:00+00:00",
            id="floor-at-the-end-of-time",
        ),
        pytest.param(
            [corrupted("INSERT INTO trusted_time VALUES (1, 'garbage')"), anchored(100.0, 100.5)],
            160.0,
            [],
            "trusted time unavailable: the stored floor is unreadable (invalid literal",
            ANCHOR_IGNORED,
            id="floor-unparsable",
        ),
        pytest.param(
            [corrupted("INSERT INTO trusted_time VALUES (1, 1e30)")],
            160.0,
            [],
            "trusted time unavailable: the stored floor is unreadable (",
            ANCHOR_IGNORED,
            id="floor-beyond-datetime",
        ),
        pytest.param(
            [anchored(100.0, 100.5), corrupted("UPDATE trusted_anchor SET sent = 'x'")],
            160.0,
            [],
            "trusted time unavailable: the saved anchor is unreadable (could not convert",
            ANCHOR_IGNORED,
            id="anchor-unparsable",
        ),
        pytest.param(
            [anchored(100.0, 100.5), corrupted("UPDATE trusted_anchor SET issued_at_us = 1e30")],
            160.0,
            [],
            "trusted time unavailable: the saved anchor is unreadable (",
            ANCHOR_IGNORED,
            id="anchor-issued-at-beyond-datetime",
        ),
        pytest.param(
            [corrupted("UPDATE policy_state SET stored_at = 'garbage'")],
            160.0,
            [],
            "stored record is unreadable (Invalid isoformat string: 'garbage')",
            "trusted time: none (no cloud-signed time yet)",
            id="record-dates-unparsable",
        ),
        pytest.param(
            [],
            160.0,
            ["--now", "0001-01-01T00:00:00+08:00"],
            "trusted time unavailable: --now gives 0001-01-01T00:00:00+08:00, outside the "
            "range time can be judged in",
            "trusted time: given, 0001-01-01T00:00:00+08:00 (±0.0 s)",
            id="now-year-1",
        ),
        pytest.param(
            [],
            160.0,
            ["--now", "9999-12-31T23:59:59-08:00"],
            "trusted time unavailable: --now gives 9999-12-31T23:59:59-08:00, outside the "
            "range time can be judged in",
            "trusted time: given, 9999-12-31T23:59:59-08:00 (±0.0 s)",
            id="now-year-9999",
        ),
    ],
)
def test_faulty_clock_is_unverified_never_a_traceback(
    db: Path,
    cloud_pub: Path,
    this_boot: str,
    monotonic: Callable[[float], None],
    capsys: Any,
    setups: list[Setup],
    mono: float,
    extra: list[str],
    reason: str,
    time: str,
) -> None:
    for setup in setups:
        setup(db, this_boot)
    monotonic(mono)
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub), *extra]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "status unverified"
    assert lines[1].startswith(f"reason: {reason}")
    assert lines[2].startswith(time)
    assert "Traceback" not in captured.err


def test_corrupt_time_rows_do_not_matter_with_now(
    db: Path, cloud_pub: Path, this_boot: str, capsys: Any
) -> None:
    # --now replaces trusted time outright, so the time rows are never consulted.
    corrupted("INSERT INTO trusted_time VALUES (1, 'garbage')")(db, this_boot)
    assert status(db, cloud_pub) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "status: covered"
    assert "Traceback" not in captured.err


def test_naive_now_is_a_usage_error(db: Path, cloud_pub: Path, capsys: Any) -> None:
    argv = ["status", "--db", str(db), "--cloud-key", str(cloud_pub)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--now", "2025-06-01T12:00:00"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs a UTC offset" in err and "Traceback" not in err


def test_json_under_a_faulty_clock(
    db: Path, cloud_pub: Path, this_boot: str, monotonic: Callable[[float], None], capsys: Any
) -> None:
    anchored(5000.0, 5000.5)(db, this_boot)
    monotonic(3.0)
    assert main(["status", "--db", str(db), "--cloud-key", str(cloud_pub), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "verified": False,
        "reason": "trusted time unavailable: the monotonic clock reads before the saved "
        "anchor (3.0 < 5000.5); anchor ignored",
        "trusted_time": {
            "confidence": "carried",
            "earliest": "2025-06-01T04:00:00+00:00",
            "latest": None,
        },
        "intents_pending": 0,
    }
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["status", "--db", "x.db"],
        ["status", "--db", "x.db", "--cloud-key", "k.pem", "--now", "2025-06-01T12:00:00"],
        ["fly"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_unreadable_cloud_key_exits_2(db: Path, tmp_path: Path, capsys: Any) -> None:
    assert status(db, tmp_path / "no-such.pub") == 2
    assert "cannot load a pinned cloud key" in capsys.readouterr().err


def test_run_with_bad_config_exits_2(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('vid = "NOT-A-VID"\n')
    assert main(["run", "--config", str(config)]) == 2
    assert "invalid config" in capsys.readouterr().err


def test_help_mentions_both_commands(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "status" in out
