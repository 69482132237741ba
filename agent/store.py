"""The agent's local SQLite store (WAL): outgoing seq, latest accepted policy state, last
error, the trusted-time floor (which SQL itself keeps from ever decreasing), the
outbox of intents (kept until the cloud's signed receipt is stored beside them), and
the head unit's prompt history, fleet alerts raised and the ignition-on (trip) count.

The only module that imports aiosqlite. Every write commits before its call returns,
with ``synchronous=FULL``, so a seq handed out is never handed out again after a
crash or a power cut.
"""

import asyncio
import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite

from .errors import StoreError
from .protocol.messages import ErrorReply, PolicyState
from .reminders import Alerted, Shown
from .trusted_time import Anchor

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS seq_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
);
INSERT OR IGNORE INTO seq_counter (id, last_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS policy_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    topic TEXT NOT NULL,
    envelope BLOB NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    fresh_until TEXT NOT NULL,
    stored_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS last_error (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    topic TEXT NOT NULL,
    envelope BLOB NOT NULL,
    seq INTEGER NOT NULL,
    reply_to INTEGER,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trusted_time (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    floor_us INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS trusted_time_never_back BEFORE UPDATE ON trusted_time
WHEN NEW.floor_us < OLD.floor_us
BEGIN SELECT RAISE(ABORT, 'the trusted-time floor never decreases'); END;
CREATE TRIGGER IF NOT EXISTS trusted_time_kept BEFORE DELETE ON trusted_time
BEGIN SELECT RAISE(ABORT, 'the trusted-time floor is never removed'); END;
CREATE TABLE IF NOT EXISTS trusted_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    boot_id TEXT NOT NULL,
    issued_at_us INTEGER NOT NULL,
    sent REAL NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    intent_id TEXT NOT NULL UNIQUE CHECK (length(intent_id) = 32),
    type TEXT NOT NULL,
    fields TEXT NOT NULL,
    created_at TEXT NOT NULL,
    receipt_topic TEXT,
    receipt BLOB,
    receipted_at TEXT
);
CREATE TABLE IF NOT EXISTS prompts (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    coverage_end TEXT NOT NULL,
    stage TEXT NOT NULL,
    trip INTEGER NOT NULL,
    day TEXT NOT NULL,
    shown_at TEXT NOT NULL,
    answer TEXT,
    answered_day TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    coverage_end TEXT NOT NULL,
    trip INTEGER NOT NULL,
    PRIMARY KEY (coverage_end, trip)
);
CREATE TABLE IF NOT EXISTS renewal_update (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    topic TEXT NOT NULL,
    envelope BLOB NOT NULL,
    seq INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trips (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    trip INTEGER NOT NULL
);
INSERT OR IGNORE INTO trips (id, trip) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS outbox_receipt_kept BEFORE UPDATE OF receipt ON outbox
WHEN OLD.receipt IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a stored receipt is never replaced'); END;
"""
# The table is additive (an older agent ignores it), so the schema version stays 1.
_RAISE_FLOOR: Final = """
INSERT INTO trusted_time (id, floor_us) VALUES (1, ?)
ON CONFLICT (id) DO UPDATE SET floor_us = excluded.floor_us
WHERE excluded.floor_us > trusted_time.floor_us
"""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)
# The store holds its own floor too: an older state never overwrites a newer one.
_SAVE_POLICY: Final = """
INSERT INTO policy_state
    (id, topic, envelope, version, seq, status, issued_at, fresh_until, stored_at)
VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    topic = excluded.topic, envelope = excluded.envelope, version = excluded.version,
    seq = excluded.seq, status = excluded.status, issued_at = excluded.issued_at,
    fresh_until = excluded.fresh_until, stored_at = excluded.stored_at
WHERE excluded.version > policy_state.version
   OR (excluded.version = policy_state.version AND excluded.seq > policy_state.seq)
"""


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """The stored policy state: the exact envelope received plus the fields indexed from it."""

    topic: str
    envelope: bytes
    version: int
    seq: int
    status: str
    issued_at: datetime
    fresh_until: datetime
    stored_at: datetime


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """The last error reply received from the cloud."""

    topic: str
    envelope: bytes
    seq: int
    reply_to: int | None
    code: str
    message: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One intent as recorded: its body fields besides type, vid and seq, as JSON text."""

    intent_id: str
    type: str
    fields: str
    created_at: datetime
    receipted_at: datetime | None


class Store:
    """One SQLite file; ``open()``/``close()`` or ``async with``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # One statement-and-commit at a time: the receive loop, the outbox and the
        # timers share the connection, and a commit while another statement is open fails.
        self._lock = asyncio.Lock()

    async def open(self) -> Self:
        """Open (creating if needed) the file in WAL mode and apply the schema."""
        if self._db is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from exc
        self._db = db
        try:
            mode = await self._one("PRAGMA journal_mode=WAL")
            if str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.path}: WAL mode refused (got {mode[0]})")
            await db.execute("PRAGMA synchronous=FULL")
            version = int((await self._one("PRAGMA user_version"))[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema {version} is newer than {SCHEMA_VERSION}")
            await db.executescript(_SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.commit()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot set up: {exc}") from exc
            raise
        return self

    async def close(self) -> None:
        """Close the file; a no-op when closed."""
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: store is not open")
        return self._db

    async def _optional(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of ``sql``, or None."""
        try:
            async with self._lock, self._conn().execute(sql, params) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return None if row is None else tuple(row)

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        row = await self._optional(sql, params)
        if row is None:
            raise StoreError(f"{self.path}: no row for {sql.split()[0]}")
        return row

    async def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            async with self._lock, self._conn().execute(sql, params) as cur:
                return [tuple(r) for r in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    async def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        db = self._conn()
        try:
            async with self._lock:
                async with db.execute(sql, params) as cur:
                    changed = cur.rowcount
                await db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        return changed

    async def _one_write(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        """Run a write with RETURNING and commit; its one row."""
        db = self._conn()
        try:
            async with self._lock:
                async with db.execute(sql, params) as cur:
                    row = await cur.fetchone()
                await db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if row is None:
            raise StoreError(f"{self.path}: no row for {sql.split()[0]}")
        return tuple(row)

    async def next_seq(self) -> int:
        """The next outgoing seq, committed before it is returned."""
        row = await self._one_write(
            "UPDATE seq_counter SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq"
        )
        return int(row[0])

    async def last_seq(self) -> int:
        """The last seq handed out (0 when none)."""
        return int((await self._one("SELECT last_seq FROM seq_counter WHERE id = 1"))[0])

    async def save_policy(
        self, topic: str, envelope: bytes, state: PolicyState, stored_at: datetime
    ) -> bool:
        """Store an accepted state; False (and nothing written) unless it is newer than held."""
        params = (
            topic,
            envelope,
            state.version,
            state.seq,
            state.status,
            state.issued_at.isoformat(),
            state.fresh_until.isoformat(),
            stored_at.isoformat(),
        )
        return await self._write(_SAVE_POLICY, params) == 1

    async def policy(self) -> PolicyRecord | None:
        """The stored policy state, or None."""
        row = await self._optional(
            "SELECT topic, envelope, version, seq, status, issued_at, fresh_until, stored_at"
            " FROM policy_state WHERE id = 1"
        )
        if row is None:
            return None
        topic, env, version, seq, status, issued, fresh, stored = row
        return PolicyRecord(
            topic,
            bytes(env),
            int(version),
            int(seq),
            str(status),
            datetime.fromisoformat(issued),
            datetime.fromisoformat(fresh),
            datetime.fromisoformat(stored),
        )

    async def save_error(
        self, topic: str, envelope: bytes, reply: ErrorReply, received_at: datetime
    ) -> None:
        """Store ``reply`` as the last error received."""
        await self._write(
            "INSERT OR REPLACE INTO last_error"
            " (id, topic, envelope, seq, reply_to, code, message, received_at)"
            " VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (
                topic,
                envelope,
                reply.seq,
                reply.reply_to,
                reply.code,
                reply.message,
                received_at.isoformat(),
            ),
        )

    async def save_renewal(
        self, topic: str, envelope: bytes, seq: int, received_at: datetime
    ) -> bool:
        """Keep the newest renewal update (by the cloud's seq); False if ``seq`` is not newer."""
        changed = await self._write(
            "INSERT INTO renewal_update (id, topic, envelope, seq, received_at)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET topic = excluded.topic,"
            " envelope = excluded.envelope, seq = excluded.seq, received_at = excluded.received_at"
            " WHERE excluded.seq > renewal_update.seq",
            (topic, envelope, seq, received_at.isoformat()),
        )
        return changed == 1

    async def renewal(self) -> tuple[str, bytes] | None:
        """The stored renewal update's topic and envelope (verify before use), or None."""
        row = await self._optional("SELECT topic, envelope FROM renewal_update WHERE id = 1")
        return None if row is None else (str(row[0]), bytes(row[1]))

    async def last_error(self) -> ErrorRecord | None:
        """The last error reply received, or None."""
        row = await self._optional(
            "SELECT topic, envelope, seq, reply_to, code, message, received_at"
            " FROM last_error WHERE id = 1"
        )
        if row is None:
            return None
        topic, env, seq, reply_to, code, message, received = row
        return ErrorRecord(
            str(topic),
            bytes(env),
            int(seq),
            None if reply_to is None else int(reply_to),
            str(code),
            str(message),
            datetime.fromisoformat(received),
        )

    async def raise_trusted_floor(self, at: datetime) -> bool:
        """Persist ``at`` as the trusted-time floor; False (unchanged) unless it is higher."""
        if at.tzinfo is None:
            raise ValueError("a naive datetime has no meaning here; pass an aware one")
        return await self._write(_RAISE_FLOOR, ((at - _EPOCH) // _US,)) == 1

    async def trusted_floor(self) -> datetime | None:
        """The persisted trusted-time floor (UTC), or None when none was ever stored."""
        row = await self._optional("SELECT floor_us FROM trusted_time WHERE id = 1")
        return None if row is None else _EPOCH + int(row[0]) * _US

    async def save_anchor(self, boot_id: str, anchor: Anchor) -> None:
        """Keep this boot's trusted-time anchor, so another process of the same boot can use it."""
        await self._write(
            "INSERT OR REPLACE INTO trusted_anchor VALUES (1, ?, ?, ?, ?)",
            (boot_id, (anchor.issued_at - _EPOCH) // _US, anchor.sent, anchor.received),
        )

    async def anchor(self) -> tuple[str, Anchor] | None:
        """The last saved anchor and the boot it belongs to, or None."""
        row = await self._optional(
            "SELECT boot_id, issued_at_us, sent, received FROM trusted_anchor WHERE id = 1"
        )
        if row is None:
            return None
        boot, issued, sent, received = row
        return str(boot), Anchor(_EPOCH + int(issued) * _US, float(sent), float(received))

    async def add_intent(self, intent_id: str, type_: str, fields: str, at: datetime) -> None:
        """Record an intent in the outbox; committed (fsynced) before it returns.

        Raise StoreError if ``intent_id`` is already there: an id is never reused.
        """
        await self._write(
            "INSERT INTO outbox (intent_id, type, fields, created_at) VALUES (?, ?, ?, ?)",
            (intent_id, type_, fields, at.isoformat()),
        )

    async def intent(self, intent_id: str) -> OutboxRow | None:
        """The outbox row of ``intent_id``, or None."""
        row = await self._optional(
            "SELECT intent_id, type, fields, created_at, receipted_at FROM outbox"
            " WHERE intent_id = ?",
            (intent_id,),
        )
        return None if row is None else _outbox_row(row)

    async def pending_intents(self) -> list[OutboxRow]:
        """Intents without a receipt, in the order they were recorded."""
        rows = await self._all(
            "SELECT intent_id, type, fields, created_at, receipted_at FROM outbox"
            " WHERE receipt IS NULL ORDER BY n"
        )
        return [_outbox_row(r) for r in rows]

    async def save_receipt(self, intent_id: str, topic: str, envelope: bytes, at: datetime) -> bool:
        """Store the cloud's receipt beside a pending intent; False if none is pending."""
        changed = await self._write(
            "UPDATE outbox SET receipt_topic = ?, receipt = ?, receipted_at = ?"
            " WHERE intent_id = ? AND receipt IS NULL",
            (topic, envelope, at.isoformat(), intent_id),
        )
        return changed == 1

    async def outbox_counts(self) -> tuple[int, int]:
        """(pending, receipted) intent counts."""
        row = await self._one("SELECT count(*) - count(receipt), count(receipt) FROM outbox")
        return int(row[0]), int(row[1])

    async def add_prompt(self, shown: Shown, shown_at: datetime) -> int:
        """Record a prompt as shown (before it is shown); return its number."""
        row = await self._one_write(
            "INSERT INTO prompts (coverage_end, stage, trip, day, shown_at) VALUES (?, ?, ?, ?, ?)"
            " RETURNING n",
            (shown.coverage_end.isoformat(), shown.stage, shown.trip, shown.day.isoformat(),
             shown_at.isoformat()),
        )  # fmt: skip
        return int(row[0])

    async def answer_prompt(self, n: int, answer: str, day: date) -> bool:
        """Record the driver's answer to prompt ``n``; False if it has one already."""
        changed = await self._write(
            "UPDATE prompts SET answer = ?, answered_day = ? WHERE n = ? AND answer IS NULL",
            (answer, day.isoformat(), n),
        )
        return changed == 1

    async def prompt_history(self) -> list[Shown | Alerted]:
        """Every prompt shown and alert raised, oldest first (prompts, then alerts)."""
        rows = await self._all(
            "SELECT coverage_end, stage, trip, day, answer, answered_day FROM prompts ORDER BY n"
        )
        history: list[Shown | Alerted] = [
            Shown(date.fromisoformat(r[0]), r[1], r[2], date.fromisoformat(r[3]), r[4],
                  None if r[5] is None else date.fromisoformat(r[5]))
            for r in rows
        ]  # fmt: skip
        alerts = await self._all("SELECT coverage_end, trip FROM alerts ORDER BY rowid")
        history.extend(Alerted(date.fromisoformat(r[0]), r[1]) for r in alerts)
        return history

    async def add_alert(self, alert: Alerted) -> bool:
        """Record a fleet alert raised; False if this one was raised already."""
        changed = await self._write(
            "INSERT OR IGNORE INTO alerts (coverage_end, trip) VALUES (?, ?)",
            (alert.coverage_end.isoformat(), alert.trip),
        )
        return changed == 1

    async def next_trip(self) -> int:
        """Count one more ignition-on; committed before it is returned."""
        row = await self._one_write("UPDATE trips SET trip = trip + 1 WHERE id = 1 RETURNING trip")
        return int(row[0])

    async def trip(self) -> int:
        """The ignition-on count so far."""
        return int((await self._one("SELECT trip FROM trips WHERE id = 1"))[0])

    async def integrity_check(self) -> str:
        """SQLite's verdict on the file: ``"ok"`` when sound."""
        return str((await self._one("PRAGMA integrity_check"))[0])


def _outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    receipted = None if row[4] is None else datetime.fromisoformat(row[4])
    return OutboxRow(row[0], row[1], row[2], datetime.fromisoformat(row[3]), receipted)
