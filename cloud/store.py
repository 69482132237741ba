"""The cloud's embedded store: SQLite through aiosqlite (the only module that imports it).

Vehicles and their registered keys, policies, and per-vehicle counters. The worker
keeps the hot path in memory and writes counters through in one transaction per
batch, before it publishes that batch's replies.
"""

from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

from agent.protocol.keys import PublicKey, kid_for, load_public_key, public_pem

from .errors import StoreError
from .handler import CounterRow, VehicleState
from .policy import PolicyRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles (
    vid TEXT PRIMARY KEY,
    kid TEXT NOT NULL,
    public_key_pem BLOB NOT NULL,
    vin TEXT,
    registered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
) STRICT;
CREATE TABLE IF NOT EXISTS policies (
    vid TEXT PRIMARY KEY REFERENCES vehicles(vid),
    insurer_code TEXT NOT NULL,
    insurer_name TEXT NOT NULL,
    policy_no_masked TEXT NOT NULL,
    coverage_start TEXT NOT NULL,
    coverage_end TEXT NOT NULL,
    source TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    override TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS counters (
    vid TEXT PRIMARY KEY REFERENCES vehicles(vid),
    last_seq INTEGER NOT NULL,
    down_seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    content_key TEXT NOT NULL
) STRICT;
"""


class Store:
    """An open cloud store; use ``async with Store.open(path)``."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> "Store":
        """Open (creating if needed) the store at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a counter that was written survives power loss, so a replay stays refused.
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.executescript(_SCHEMA)
            await db.commit()
        except (aiosqlite.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return cls(db)

    async def close(self) -> None:
        """Close the store."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def add_vehicle(self, vid: str, key: PublicKey, vin: str | None) -> None:
        """Register (or re-key) vehicle ``vid`` with its message-signing public key."""
        await self._write(
            "INSERT INTO vehicles(vid, kid, public_key_pem, vin) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(vid) DO UPDATE SET kid=excluded.kid, "
            "public_key_pem=excluded.public_key_pem, vin=excluded.vin",
            [(vid, kid_for(key), public_pem(key), vin)],
        )

    async def put_policy(self, r: PolicyRecord) -> None:
        """Insert or replace the policy of ``r.vid``."""
        await self._write(
            "INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    r.vid,
                    r.insurer_code,
                    r.insurer_name,
                    r.policy_no_masked,
                    r.coverage_start.isoformat(),
                    r.coverage_end.isoformat(),
                    r.source,
                    r.verified_at.isoformat(),
                    r.override,
                )
            ],
        )

    async def save_counters(self, rows: Iterable[CounterRow]) -> None:
        """Write counter snapshots (``VehicleState.row``) in one transaction."""
        await self._write("INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?, ?)", list(rows))

    async def load_vehicles(self) -> dict[str, VehicleState]:
        """Every registered vehicle with its key and counters."""
        out: dict[str, VehicleState] = {}
        sql = (
            "SELECT v.vid, v.kid, v.public_key_pem, c.last_seq, c.down_seq, c.version, "
            "c.content_key FROM vehicles v LEFT JOIN counters c ON c.vid = v.vid"
        )
        try:
            async with self._db.execute(sql) as cur:
                async for vid, kid, pem, last, down, version, ckey in cur:
                    out[vid] = VehicleState(
                        kid=kid,
                        key=load_public_key(pem),
                        last_seq=last or 0,
                        down_seq=down or 0,
                        version=version or 0,
                        content_key=ckey or "",
                    )
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot load vehicles: {exc}") from exc
        return out

    async def load_policies(self) -> dict[str, PolicyRecord]:
        """Every stored policy by vid."""
        out: dict[str, PolicyRecord] = {}
        try:
            async with self._db.execute("SELECT * FROM policies") as cur:
                async for row in cur:
                    vid, code, name, no, start, end, source, verified, override = row
                    out[vid] = PolicyRecord(
                        vid=vid,
                        insurer_code=code,
                        insurer_name=name,
                        policy_no_masked=no,
                        coverage_start=date.fromisoformat(start),
                        coverage_end=date.fromisoformat(end),
                        source=source,
                        verified_at=datetime.fromisoformat(verified),
                        override=override,
                    )
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot load policies: {exc}") from exc
        return out

    async def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        try:
            await self._db.executemany(sql, rows)
            await self._db.commit()
        except aiosqlite.Error as exc:
            await self._db.rollback()
            raise StoreError(f"write failed: {exc}") from exc
