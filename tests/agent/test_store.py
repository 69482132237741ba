"""The agent's store against real SQLite files in a temp dir."""

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.errors import StoreError
from agent.protocol import topics
from agent.protocol.messages import ErrorReply
from agent.store import Store

VID = "vaaaaaaaaaaaaaaa1"
TOPIC = topics.down(VID, "policy")
AT = datetime(2025, 6, 1, 4, 0, tzinfo=UTC)


async def test_seq_grows_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        assert await store.last_seq() == 0
        assert [await store.next_seq() for _ in range(3)] == [1, 2, 3]
    async with Store(db) as store:
        assert await store.next_seq() == 4
        assert await store.last_seq() == 4


async def test_seq_is_committed_before_it_is_returned(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        seq = await store.next_seq()
        # Another connection sees it at once: nothing waits for a later commit.
        with closing(sqlite3.connect(db)) as other:
            assert other.execute("SELECT last_seq FROM seq_counter").fetchone() == (seq,)


async def test_policy_state_survives_reopen(tmp_path: Path, make_state: Any) -> None:
    db = tmp_path / "agent.db"
    state = make_state(VID, version=2, seq=7)
    async with Store(db) as store:
        assert await store.policy() is None
        assert await store.save_policy(TOPIC, b"envelope-bytes", state, AT)
    async with Store(db) as store:
        record = await store.policy()
    assert record is not None
    assert (record.topic, record.envelope, record.version, record.seq) == (
        TOPIC,
        b"envelope-bytes",
        2,
        7,
    )
    assert (record.status, record.issued_at, record.fresh_until, record.stored_at) == (
        "active",
        state.issued_at,
        state.fresh_until,
        AT,
    )


@pytest.mark.parametrize(
    ("version", "seq", "stored"),
    [(3, 1, True), (2, 8, True), (2, 7, False), (2, 6, False), (1, 99, False)],
)
async def test_store_never_goes_back(
    tmp_path: Path, make_state: Any, version: int, seq: int, stored: bool
) -> None:
    async with Store(tmp_path / "agent.db") as store:
        await store.save_policy(TOPIC, b"first", make_state(VID, version=2, seq=7), AT)
        assert await store.save_policy(TOPIC, b"next", make_state(VID, version, seq), AT) is stored
        record = await store.policy()
    assert record is not None and record.envelope == (b"next" if stored else b"first")


async def test_last_error_is_replaced(tmp_path: Path) -> None:
    topic = topics.down(VID, "error")
    async with Store(tmp_path / "agent.db") as store:
        assert await store.last_error() is None
        for seq, code in ((1, "replay"), (2, "no_policy")):
            reply = ErrorReply(vid=VID, seq=seq, reply_to=seq, code=code, message="m")
            await store.save_error(topic, b"env", reply, AT)
        last = await store.last_error()
    assert last is not None
    assert (last.seq, last.reply_to, last.code, last.received_at) == (2, 2, "no_policy", AT)


async def test_file_is_wal_and_sound(tmp_path: Path, make_state: Any) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        for v in range(1, 20):
            await store.next_seq()
            await store.save_policy(TOPIC, b"e" * 500, make_state(VID, version=v, seq=v), AT)
        assert await store.integrity_check() == "ok"
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    with pytest.raises(StoreError, match="not open"):
        await store.next_seq()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer"):
        await Store(db).open()


async def test_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError):
        await Store(tmp_path / "file" / "agent.db").open()


async def test_trusted_floor_only_rises_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    later = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    async with Store(db) as store:
        assert await store.trusted_floor() is None
        assert await store.raise_trusted_floor(AT)
        assert await store.raise_trusted_floor(later)
        assert not await store.raise_trusted_floor(later)
        assert not await store.raise_trusted_floor(datetime(1970, 1, 1, tzinfo=UTC))
    async with Store(db) as store:
        assert await store.trusted_floor() == later


@pytest.mark.parametrize(
    "sql",
    ["UPDATE trusted_time SET floor_us = floor_us - 1", "DELETE FROM trusted_time"],
    ids=["lower", "delete"],
)
async def test_sql_itself_refuses_to_lower_the_floor(tmp_path: Path, sql: str) -> None:
    db = tmp_path / "agent.db"
    async with Store(db) as store:
        await store.raise_trusted_floor(AT)
    with closing(sqlite3.connect(db)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(sql)
    async with Store(db) as store:
        assert await store.trusted_floor() == AT


async def test_naive_floor_is_refused(tmp_path: Path) -> None:
    async with Store(tmp_path / "agent.db") as store:
        with pytest.raises(ValueError):
            await store.raise_trusted_floor(datetime(2025, 6, 1))
