"""The cloud's embedded store: SQLite through aiosqlite (the only module that imports it).

Vehicles and their registered keys, policies, and per-vehicle counters. The worker
keeps the hot path in memory and writes counters through in one transaction per
batch, before it publishes that batch's replies. Enrollment adds fleets (operator
token digests), one-time claims (digests), and every certificate issued (serial,
key, expiry), so that a revoked vehicle's serials can go into the CRL.

One connection per Store; a lock keeps one coroutine's transaction from interleaving
with another's on it. Each process (the worker, the HTTP API) opens its own Store;
SQLite's busy timeout (5 s) bounds waits between them.
"""

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite

from agent.protocol.keys import PublicKey, kid_for, load_public_key, public_pem
from agent.protocol.vin import VinError, vin_digest

from .enrollment import ClaimRow, FleetRow, VehicleRow
from .errors import StoreError
from .handler import CounterRow, IntentRow, VehicleState
from .policy import PolicyRecord
from .renewal_flow import Flow, from_json, to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles (
    vid TEXT PRIMARY KEY,
    kid TEXT NOT NULL,
    public_key_pem BLOB NOT NULL,
    vin TEXT,
    registered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    fleet_id TEXT REFERENCES fleets(fleet_id),
    revoked_at TEXT,
    renew_seq INTEGER NOT NULL DEFAULT 0
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
    override TEXT,
    plate_masked TEXT,
    next_insurer_code TEXT,
    next_insurer_name TEXT,
    next_policy_no_masked TEXT,
    next_end TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS policy_seeds (
    vin TEXT PRIMARY KEY,
    insurer_code TEXT NOT NULL,
    insurer_name TEXT NOT NULL,
    policy_no_masked TEXT NOT NULL,
    coverage_start TEXT NOT NULL,
    coverage_end TEXT NOT NULL,
    source TEXT NOT NULL,
    verified_at TEXT NOT NULL,
    plate_masked TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS counters (
    vid TEXT PRIMARY KEY REFERENCES vehicles(vid),
    last_seq INTEGER NOT NULL,
    down_seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    content_key TEXT NOT NULL,
    last_seen TEXT,
    writer TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS fleets (
    fleet_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    operator_digest BLOB NOT NULL UNIQUE,
    created_at TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS claims (
    digest BLOB PRIMARY KEY,
    fleet_id TEXT NOT NULL REFERENCES fleets(fleet_id),
    expires_at TEXT NOT NULL,
    used_at TEXT,
    vid TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY,
    vid TEXT NOT NULL REFERENCES vehicles(vid),
    kid TEXT NOT NULL,
    public_key_pem BLOB NOT NULL,
    not_after TEXT NOT NULL,
    issued_at TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS certificates_by_vid ON certificates(vid);
CREATE TABLE IF NOT EXISTS renewals (
    renewal_id TEXT PRIMARY KEY,
    vid TEXT NOT NULL REFERENCES vehicles(vid),
    stage TEXT NOT NULL,
    flow TEXT NOT NULL,
    order_id TEXT UNIQUE,
    updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS renewals_by_vid ON renewals(vid, updated_at);
CREATE TABLE IF NOT EXISTS intents (
    vid TEXT NOT NULL REFERENCES vehicles(vid),
    intent_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    seq INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    processed_at TEXT,
    claimed_by TEXT,
    claimed_at TEXT,
    PRIMARY KEY (vid, intent_id)
) STRICT;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    fleet_id TEXT NOT NULL REFERENCES fleets(fleet_id),
    vid TEXT NOT NULL REFERENCES vehicles(vid),
    kind TEXT NOT NULL,
    raised_at TEXT NOT NULL,
    detail TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at TEXT,
    next_attempt_at TEXT,
    gave_up INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS alerts_by_fleet ON alerts(fleet_id, raised_at);
"""
# Serials are decimal TEXT: they run to 159 bits, past SQLite's 64-bit INTEGER.

_ADDED_VEHICLE_COLUMNS: Final = {
    "plate": "TEXT",
    "fleet_id": "TEXT REFERENCES fleets(fleet_id)",
    "revoked_at": "TEXT",
    "renew_seq": "INTEGER NOT NULL DEFAULT 0",
}
"""Columns a store made before enrollment lacks; added when it is opened."""
_ADDED_COLUMNS: Final = {
    "vehicles": _ADDED_VEHICLE_COLUMNS,
    "policies": {
        "plate_masked": "TEXT",
        "next_insurer_code": "TEXT",
        "next_insurer_name": "TEXT",
        "next_policy_no_masked": "TEXT",
        "next_end": "TEXT",
    },
    "policy_seeds": {"plate_masked": "TEXT", "plate": "TEXT"},
    "intents": {"processed_at": "TEXT", "claimed_by": "TEXT", "claimed_at": "TEXT"},
    "counters": {"last_seen": "TEXT", "writer": "TEXT"},
}
"""Per table: columns an older store lacks (appended, so column order stays stable)."""


_CAS_COUNTERS: Final = (
    "INSERT INTO counters (vid, last_seq, down_seq, version, content_key, last_seen, writer)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (vid) DO UPDATE SET"
    " last_seq = excluded.last_seq, down_seq = excluded.down_seq, version = excluded.version,"
    " content_key = excluded.content_key, last_seen = excluded.last_seen,"
    " writer = excluded.writer"
    " WHERE counters.last_seq = ? AND counters.down_seq = ?"
)
"""A compare-and-set of one vehicle's counters: lands only on the base the row names."""
_POLICY_COLUMNS: Final = (
    "vid, insurer_code, insurer_name, policy_no_masked, coverage_start, coverage_end, source, "
    "verified_at, override, plate_masked, next_insurer_code, next_insurer_name, "
    "next_policy_no_masked, next_end"
)
_SELECT_POLICIES: Final = f"SELECT {_POLICY_COLUMNS} FROM policies"  # noqa: S608 - fixed text
_PUT_POLICY: Final = (
    f"INSERT OR REPLACE INTO policies ({_POLICY_COLUMNS}) "  # noqa: S608 - fixed text
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _policy_row(r: PolicyRecord) -> tuple[object, ...]:
    return (
        r.vid, r.insurer_code, r.insurer_name, r.policy_no_masked, r.coverage_start.isoformat(),
        r.coverage_end.isoformat(), r.source, r.verified_at.isoformat(), r.override,
        r.plate_masked, r.next_insurer_code, r.next_insurer_name, r.next_policy_no_masked,
        None if r.next_end is None else r.next_end.isoformat(),
    )  # fmt: skip


def vin_digest_of(vid: str, vin: str | None) -> str | None:
    """The digest a policy.state carries for a registered VIN (None without a valid one)."""
    try:
        return None if vin is None else vin_digest(vid, vin)
    except VinError:
        return None


_INTENT_COLUMNS: Final = "vid, intent_id, type, body, seq, received_at"


def _intent(r: Sequence[Any]) -> IntentRow:
    return IntentRow(r[0], r[1], r[2], bytes(r[3]), r[4], datetime.fromisoformat(r[5]))


def _ts(t: datetime) -> str:
    # One fixed width, so that stored instants compare as text in SQL.
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True, slots=True)
class Saved:
    """What one ``save_counters`` did."""

    new_intents: int
    """Intents stored for the first time."""
    conflicts: frozenset[str]
    """Vids whose counter write did not land: another worker wrote them first."""


@dataclass(frozen=True, slots=True)
class StoredVehicle:
    """A vehicle as the store holds it (``reload_vehicles``)."""

    kid: str
    public_key_pem: bytes
    vin: str | None
    revoked: bool
    last_seq: int
    down_seq: int
    version: int
    content_key: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    """A fleet alert, stored once by its deterministic id, and its webhook delivery."""

    alert_id: str
    fleet_id: str
    vid: str
    kind: str
    raised_at: datetime
    detail: str
    """JSON text; never a VIN, plate or policy number in clear."""
    attempts: int = 0
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None
    gave_up: bool = False


class _Conflict(Exception):
    """A guarded write found its row changed since it was read; the transaction rolls back."""


class Store:
    """An open cloud store; use ``async with Store.open(path)``."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._writer = secrets.token_hex(8)
        """Stamped on the counters this store writes: tells its own writes from others'."""

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
            for table, added in _ADDED_COLUMNS.items():
                async with db.execute(f"PRAGMA table_info({table})") as cur:
                    have = {row[1] async for row in cur}
                for column, decl in added.items():
                    if column not in have:
                        await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
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
            _PUT_POLICY,
            [_policy_row(r)],
        )

    async def save_counters(
        self, rows: Iterable[CounterRow], intents: Iterable[IntentRow] = ()
    ) -> Saved:
        """Write counter snapshots (``VehicleState.row``) and new intents; commit.

        Each counter write is a compare-and-set: it lands only if the stored
        (last_seq, down_seq) is still the base the row names. A vehicle whose write did
        not land (another worker wrote first) is in ``Saved.conflicts``; its intents are
        not recorded either, and the caller must drop its replies and reload it.

        An intent whose (vid, intent_id) is already stored is ignored (the first copy
        stays): that is what makes a re-sent intent take effect once.

        The worker's hot path, on a connection used for nothing else: calls are not
        serialized, so a commit that is still on disk lets the next call's rows queue
        behind it and often ride in the same fsync. Every call returns only once its
        rows are committed.
        """
        rows = list(rows)
        try:
            cur = await self._db.executemany(
                _CAS_COUNTERS, [(*r[:6], self._writer, *r[6:]) for r in rows]
            )
            conflicts: frozenset[str] = frozenset()
            if cur.rowcount != len(rows):
                conflicts = await self._lost_writes(rows)
            new = 0
            for i in intents:
                if i.vid in conflicts:
                    continue
                cursor = await self._db.execute(
                    "INSERT INTO intents (vid, intent_id, type, body, seq, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (vid, intent_id) DO NOTHING",
                    (i.vid, i.intent_id, i.type, i.body, i.seq, _ts(i.received_at)),
                )
                new += max(cursor.rowcount, 0)
            await self._db.commit()
        except aiosqlite.Error as exc:
            raise StoreError(f"save counters failed: {exc}") from exc
        return Saved(new, conflicts)

    async def _lost_writes(self, rows: list[CounterRow]) -> frozenset[str]:
        """The vids of ``rows`` whose stored counters are not this store's write of them."""
        mine = {r[0]: (r[1], r[2]) for r in rows}
        marks = ", ".join("?" * len(mine))
        async with self._db.execute(
            f"SELECT vid, last_seq, down_seq, writer FROM counters WHERE vid IN ({marks})",  # noqa: S608 - placeholders only
            list(mine),
        ) as cur:
            landed = {
                vid for vid, last, down, writer in await cur.fetchall()
                if writer == self._writer and (last, down) == mine[vid]
            }  # fmt: skip
        return frozenset(mine) - landed

    async def reload_vehicles(self, vids: Iterable[str]) -> dict[str, StoredVehicle]:
        """What the store holds now for each of ``vids`` that is registered (revoked too).

        Several workers share one store: a worker reads the vehicles of each batch before
        handling it, to learn of other workers' writes, enrollments, re-keys, revocations.
        """
        wanted = list(dict.fromkeys(vids))
        if not wanted:
            return {}
        marks = ", ".join("?" * len(wanted))
        sql = (
            "SELECT v.vid, v.kid, v.public_key_pem, v.vin, v.revoked_at, c.last_seq,"  # noqa: S608 - placeholders only
            " c.down_seq, c.version, c.content_key FROM vehicles v"
            f" LEFT JOIN counters c ON c.vid = v.vid WHERE v.vid IN ({marks})"
        )
        try:
            async with self._db.execute(sql, wanted) as cur:
                return {
                    r[0]: StoredVehicle(
                        r[1], bytes(r[2]), r[3], r[4] is not None, r[5] or 0, r[6] or 0,
                        r[7] or 0, r[8] or "",
                    )
                    for r in await cur.fetchall()
                }  # fmt: skip
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot reload vehicles: {exc}") from exc

    async def load_vehicles(self) -> dict[str, VehicleState]:
        """Every registered vehicle that is not revoked, with its key and counters."""
        out: dict[str, VehicleState] = {}
        sql = (
            "SELECT v.vid, v.kid, v.public_key_pem, c.last_seq, c.down_seq, c.version, "
            "c.content_key, v.vin, c.last_seen "
            "FROM vehicles v LEFT JOIN counters c ON c.vid = v.vid "
            "WHERE v.revoked_at IS NULL"
        )
        try:
            # Under the lock: a read left open on this connection while another coroutine
            # begins a write would pin an old snapshot and make that write fail at once.
            async with self._lock, self._db.execute(sql) as cur:
                async for vid, kid, pem, last, down, version, ckey, vin, seen in cur:
                    out[vid] = VehicleState(
                        kid=kid,
                        key=load_public_key(pem),
                        last_seq=last or 0,
                        down_seq=down or 0,
                        version=version or 0,
                        content_key=ckey or "",
                        vin_digest=vin_digest_of(vid, vin),
                        last_seen=_dt(seen),
                        stored=(last or 0, down or 0),
                    )
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot load vehicles: {exc}") from exc
        return out

    async def load_policies(self, vid: str | None = None) -> dict[str, PolicyRecord]:
        """Every stored policy by vid (or only ``vid``'s)."""
        # Two fixed statements: the vid is always a bound parameter.
        sql = _SELECT_POLICIES if vid is None else f"{_SELECT_POLICIES} WHERE vid = ?"
        args = () if vid is None else (vid,)
        out: dict[str, PolicyRecord] = {}
        try:
            async with self._lock, self._db.execute(sql, args) as cur:
                async for row in cur:
                    vid_, code, name, no, start, end, source, verified, override, plate = row[:10]
                    next_code, next_name, next_no, next_end = row[10:]
                    out[vid_] = PolicyRecord(
                        vid=vid_,
                        insurer_code=code,
                        insurer_name=name,
                        policy_no_masked=no,
                        coverage_start=date.fromisoformat(start),
                        coverage_end=date.fromisoformat(end),
                        source=source,
                        verified_at=datetime.fromisoformat(verified),
                        override=override,
                        plate_masked=plate,
                        next_insurer_code=next_code,
                        next_insurer_name=next_name,
                        next_policy_no_masked=next_no,
                        next_end=None if next_end is None else date.fromisoformat(next_end),
                    )
        except aiosqlite.Error as exc:
            raise StoreError(f"cannot load policies: {exc}") from exc
        return out

    async def put_policy_seed(self, vin: str, r: PolicyRecord, plate: str | None = None) -> None:
        """Hold ``r`` (its vid ignored) for the vehicle that enrolls with ``vin``.

        A stand-in for looking the policy up by VIN at the authoritative sources.
        """
        await self._write(
            "INSERT OR REPLACE INTO policy_seeds (vin, insurer_code, insurer_name,"
            " policy_no_masked, coverage_start, coverage_end, source, verified_at, plate_masked,"
            " plate) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    vin, r.insurer_code, r.insurer_name, r.policy_no_masked,
                    r.coverage_start.isoformat(), r.coverage_end.isoformat(), r.source,
                    r.verified_at.isoformat(), r.plate_masked, plate,
                )
            ],
        )  # fmt: skip

    async def adopt_policy_seed(self, vid: str) -> PolicyRecord | None:
        """Give ``vid`` the policy seeded for its VIN, if any; return its policy record."""
        async with self._transaction("adopt policy seed") as db:
            await db.execute(
                "INSERT OR REPLACE INTO policies (vid, insurer_code, insurer_name, "
                "policy_no_masked, coverage_start, coverage_end, source, verified_at, override, "
                "plate_masked) SELECT v.vid, s.insurer_code, s.insurer_name, "
                "s.policy_no_masked, s.coverage_start, s.coverage_end, s.source, s.verified_at, "
                "NULL, s.plate_masked "
                "FROM vehicles v JOIN policy_seeds s ON s.vin = v.vin WHERE v.vid = ?",
                (vid,),
            )
            await db.execute(
                "UPDATE vehicles SET plate = (SELECT s.plate FROM policy_seeds s"
                " WHERE s.vin = vehicles.vin) WHERE vid = ? AND plate IS NULL",
                (vid,),
            )
        return (await self.load_policies(vid)).get(vid)

    async def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        async with self._transaction("write") as db:
            await db.executemany(sql, rows)

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction under the lock: committed if the block ends normally, else undone."""
        async with self._lock:
            try:
                # IMMEDIATE: take the write lock first. The worker and the API write
                # through separate connections; a deferred transaction that read first
                # would fail at once ("database is locked") instead of waiting its turn.
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await self._db.commit()
            except BaseException as exc:
                # Cancellation too: an open transaction left behind would be committed
                # by whichever write comes next on this connection.
                await self._db.rollback()
                if isinstance(exc, aiosqlite.Error):
                    raise StoreError(f"{what} failed: {exc}") from exc
                raise

    async def _rows(self, sql: str, params: tuple[object, ...]) -> list[aiosqlite.Row]:
        async with self._lock:
            try:
                async with self._db.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            except aiosqlite.Error as exc:
                raise StoreError(f"read failed: {exc}") from exc

    # ---- enrollment ------------------------------------------------------------

    async def create_fleet(
        self, fleet_id: str, name: str, operator_digest: bytes, now: datetime
    ) -> None:
        """Add a fleet whose operator token has SHA-256 ``operator_digest``."""
        await self._write(
            "INSERT INTO fleets VALUES (?, ?, ?, ?)", [(fleet_id, name, operator_digest, _ts(now))]
        )

    async def fleet(self, fleet_id: str) -> FleetRow | None:
        """The fleet ``fleet_id``, if it exists."""
        rows = await self._rows("SELECT * FROM fleets WHERE fleet_id = ?", (fleet_id,))
        return FleetRow(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def fleet_of_operator(self, operator_digest: bytes) -> FleetRow | None:
        """The fleet whose operator token has this digest, if any."""
        rows = await self._rows(
            "SELECT * FROM fleets WHERE operator_digest = ?", (operator_digest,)
        )
        return FleetRow(rows[0][0], rows[0][1], rows[0][2]) if rows else None

    async def add_claims(self, fleet_id: str, digests: list[bytes], expires_at: datetime) -> None:
        """Add one-time claims (by token digest) for ``fleet_id``, all in one transaction."""
        await self._write(
            "INSERT INTO claims(digest, fleet_id, expires_at) VALUES (?, ?, ?)",
            [(d, fleet_id, _ts(expires_at)) for d in digests],
        )

    async def claim(self, digest: bytes) -> ClaimRow | None:
        """The claim whose token has this digest, if any."""
        rows = await self._rows(
            "SELECT fleet_id, expires_at, used_at FROM claims WHERE digest = ?", (digest,)
        )
        if not rows:
            return None
        fleet_id, expires_at, used_at = rows[0]
        return ClaimRow(fleet_id, datetime.fromisoformat(expires_at), _dt(used_at))

    async def enroll(
        self,
        *,
        claim_digest: bytes,
        vid: str,
        fleet_id: str,
        key: PublicKey,
        vin: str | None,
        serial: int,
        not_after: datetime,
        now: datetime,
    ) -> bool:
        """Use the claim, register the vehicle and its certificate, in one transaction.

        False (and nothing stored) if the claim was used or expired since it was read.
        """
        pem = public_pem(key)
        try:
            async with self._transaction("enroll") as db:
                cur = await db.execute(
                    "UPDATE claims SET used_at = ?, vid = ? "
                    "WHERE digest = ? AND used_at IS NULL AND expires_at > ?",
                    (_ts(now), vid, claim_digest, _ts(now)),
                )
                if cur.rowcount != 1:
                    raise _Conflict
                await db.execute(
                    "INSERT INTO vehicles(vid, kid, public_key_pem, vin, registered_at, fleet_id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (vid, kid_for(key), pem, vin, _ts(now), fleet_id),
                )
                await self._insert_certificate(db, vid, serial, key, not_after, now)
        except _Conflict:
            return False
        return True

    async def renew(
        self, *, vid: str, seq: int, key: PublicKey, serial: int, not_after: datetime, now: datetime
    ) -> bool:
        """Record renewal ``seq``, make ``key`` the vehicle's, and add its certificate.

        False (and nothing stored) if the vehicle was revoked or renewed with this seq meanwhile.
        """
        try:
            async with self._transaction("renew") as db:
                cur = await db.execute(
                    "UPDATE vehicles SET kid = ?, public_key_pem = ?, renew_seq = ? "
                    "WHERE vid = ? AND renew_seq < ? AND revoked_at IS NULL",
                    (kid_for(key), public_pem(key), seq, vid, seq),
                )
                if cur.rowcount != 1:
                    raise _Conflict
                await self._insert_certificate(db, vid, serial, key, not_after, now)
        except _Conflict:
            return False
        return True

    async def add_certificate(
        self, vid: str, serial: int, key: PublicKey, not_after: datetime, now: datetime
    ) -> None:
        """Record a certificate issued to ``vid`` outside enrollment (e.g. by the dev PKI).

        Recording the same certificate again changes nothing (imports can be rerun).
        """
        async with self._transaction("add certificate") as db:
            async with db.execute(
                "SELECT vid FROM certificates WHERE serial = ?", (str(serial),)
            ) as cur:
                known = await cur.fetchone()
            if known is None:
                await self._insert_certificate(db, vid, serial, key, not_after, now)
            elif known[0] != vid:
                raise StoreError(f"certificate serial {serial} belongs to another vehicle")

    @staticmethod
    async def _insert_certificate(
        db: aiosqlite.Connection,
        vid: str,
        serial: int,
        key: PublicKey,
        not_after: datetime,
        now: datetime,
    ) -> None:
        await db.execute(
            "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?)",
            (str(serial), vid, kid_for(key), public_pem(key), _ts(not_after), _ts(now)),
        )

    async def vehicle(self, vid: str) -> VehicleRow | None:
        """The enrollment state of ``vid``, if registered."""
        rows = await self._rows(
            "SELECT fleet_id, revoked_at, renew_seq, vin FROM vehicles WHERE vid = ?", (vid,)
        )
        if not rows:
            return None
        fleet_id, revoked_at, renew_seq, vin = rows[0]
        return VehicleRow(vid, fleet_id, _dt(revoked_at), renew_seq, vin)

    async def vehicle_keys(self, vid: str, now: datetime) -> dict[str, PublicKey]:
        """By kid: ``vid``'s registered key and the keys of its certificates still valid."""
        rows = await self._rows(
            "SELECT kid, public_key_pem FROM vehicles WHERE vid = ? UNION "
            "SELECT kid, public_key_pem FROM certificates WHERE vid = ? AND not_after > ?",
            (vid, vid, _ts(now)),
        )
        return {kid: load_public_key(pem) for kid, pem in rows}

    async def revoke(self, vid: str, now: datetime) -> datetime | None:
        """Mark ``vid`` revoked (once; later calls keep the first time); None if unknown."""
        async with self._transaction("revoke") as db:
            await db.execute(
                "UPDATE vehicles SET revoked_at = ? WHERE vid = ? AND revoked_at IS NULL",
                (_ts(now), vid),
            )
            async with db.execute("SELECT revoked_at FROM vehicles WHERE vid = ?", (vid,)) as cur:
                row = await cur.fetchone()
        return None if row is None else _dt(row[0])

    async def revoked_serials(self) -> list[int]:
        """Serials of every certificate of every revoked vehicle, ascending: the CRL's content."""
        rows = await self._rows(
            "SELECT c.serial FROM certificates c JOIN vehicles v ON v.vid = c.vid "
            "WHERE v.revoked_at IS NOT NULL",
            (),
        )
        return sorted(int(r[0]) for r in rows)

    async def intents(self, vid: str | None = None) -> list[IntentRow]:
        """Recorded intents, oldest first; of one vehicle when ``vid`` is given."""
        where, params = ("WHERE vid = ?", (vid,)) if vid is not None else ("", ())
        rows = await self._rows(
            f"SELECT {_INTENT_COLUMNS} FROM intents {where} "  # noqa: S608
            "ORDER BY received_at, seq",
            params,
        )
        return [_intent(r) for r in rows]

    async def unprocessed_intents(self, type_: str) -> list[IntentRow]:
        """Recorded intents of ``type_`` not yet acted on, oldest first."""
        rows = await self._rows(
            f"SELECT {_INTENT_COLUMNS} FROM intents"  # noqa: S608 - fixed text
            " WHERE type = ? AND processed_at IS NULL ORDER BY received_at, seq",
            (type_,),
        )
        return [_intent(r) for r in rows]

    async def claim_intents(
        self, type_: str, owner: str, now: datetime, lease: timedelta
    ) -> list[IntentRow]:
        """Take the unprocessed intents of ``type_`` for ``owner``, oldest first.

        An intent is given to one claimer at a time: one not claimed, or whose claim is
        older than ``lease`` (its claimer died), is claimed afresh. Several workers share
        the store; each intent is acted on by the one that claimed it.
        """
        async with (
            self._transaction("claim intents") as db,
            db.execute(
                f"UPDATE intents SET claimed_by = ?, claimed_at = ?"  # noqa: S608 - fixed text
                " WHERE type = ? AND processed_at IS NULL"
                " AND (claimed_at IS NULL OR claimed_at < ? OR claimed_by = ?)"
                f" RETURNING {_INTENT_COLUMNS}",
                (owner, _ts(now), type_, _ts(now - lease), owner),
            ) as cur,
        ):
            rows = await cur.fetchall()
        return sorted((_intent(r) for r in rows), key=lambda i: (i.received_at, i.seq))

    async def mark_processed(self, vid: str, intent_id: str, now: datetime) -> None:
        """Note that intent (vid, intent_id) was acted on."""
        async with self._transaction("mark intent processed") as db:
            await db.execute(
                "UPDATE intents SET processed_at = ? WHERE vid = ? AND intent_id = ?",
                (_ts(now), vid, intent_id),
            )

    async def save_flow(
        self, flow: Flow, now: datetime, policy: PolicyRecord | None = None
    ) -> None:
        """Store the renewal flow (and the policy it issued, in the same transaction)."""
        async with self._transaction("save renewal") as db:
            await db.execute(
                "INSERT INTO renewals (renewal_id, vid, stage, flow, order_id, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (renewal_id) DO UPDATE SET"
                " stage = excluded.stage, flow = excluded.flow, order_id = excluded.order_id,"
                " updated_at = excluded.updated_at",
                (flow.renewal_id, flow.vid, flow.stage.value, to_json(flow), flow.order_id,
                 _ts(now)),
            )  # fmt: skip
            if policy is not None:
                await db.execute(_PUT_POLICY, _policy_row(policy))

    async def flows(self, where: str, params: tuple[object, ...]) -> list[Flow]:
        """Renewal flows matching one of the fixed conditions below, newest first."""
        sql = {
            "id": "SELECT flow FROM renewals WHERE renewal_id = ?",
            "order": "SELECT flow FROM renewals WHERE order_id = ?",
            "vid": "SELECT flow FROM renewals WHERE vid = ? ORDER BY updated_at DESC",
            "stage": "SELECT flow FROM renewals WHERE stage = ? ORDER BY updated_at",
        }[where]
        return [from_json(r[0]) for r in await self._rows(sql, params)]

    async def vehicle_identity(self, vid: str) -> tuple[str | None, str | None]:
        """The VIN and the clear plate of ``vid`` (for source look-ups only; never logged)."""
        rows = await self._rows("SELECT vin, plate FROM vehicles WHERE vid = ?", (vid,))
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def set_plate(self, vid: str, plate: str) -> None:
        """Record the vehicle's plate in clear (the sources look policies up by it)."""
        async with self._transaction("set plate") as db:
            await db.execute("UPDATE vehicles SET plate = ? WHERE vid = ?", (plate, vid))

    async def fleet_vehicles(
        self, fleet_id: str
    ) -> list[tuple[str, datetime | None, datetime | None]]:
        """The vehicles enrolled in ``fleet_id``: (vid, revoked_at, last_seen), by vid."""
        rows = await self._rows(
            "SELECT v.vid, v.revoked_at, c.last_seen FROM vehicles v"
            " LEFT JOIN counters c ON c.vid = v.vid WHERE v.fleet_id = ? ORDER BY v.vid",
            (fleet_id,),
        )
        return [(r[0], _dt(r[1]), _dt(r[2])) for r in rows]

    async def count_vehicles(self) -> int:
        """How many vehicles are registered, revoked ones included."""
        rows = await self._rows("SELECT count(*) FROM vehicles", ())
        return int(rows[0][0])

    async def fleet_ids(self) -> list[str]:
        """Every fleet's id, sorted."""
        return [r[0] for r in await self._rows("SELECT fleet_id FROM fleets ORDER BY 1", ())]

    async def fleet_vehicle_events(
        self, fleet_id: str, since: datetime | None = None
    ) -> list[IntentRow]:
        """The ``vehicle.event`` intents of ``fleet_id``'s vehicles received after ``since``."""
        rows = await self._rows(
            f"SELECT {', '.join('i.' + c for c in _INTENT_COLUMNS.split(', '))}"  # noqa: S608 - fixed text
            " FROM intents i JOIN vehicles v ON v.vid = i.vid"
            " WHERE v.fleet_id = ? AND i.type = 'vehicle.event' AND i.received_at > ?"
            " ORDER BY i.received_at, i.seq",
            (fleet_id, "" if since is None else _ts(since)),
        )
        return [_intent(r) for r in rows]

    # ---- alerts ----------------------------------------------------------------

    async def add_alerts(self, rows: list[AlertRow]) -> list[str]:
        """Store each alert unless its id is stored already; the ids newly stored."""
        added: list[str] = []
        async with self._transaction("add alerts") as db:
            for a in rows:
                cur = await db.execute(
                    f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed text
                    " ON CONFLICT (alert_id) DO NOTHING",
                    _alert_row(a),
                )
                if cur.rowcount == 1:
                    added.append(a.alert_id)
        return added

    async def fleet_alerts(self, fleet_id: str, limit: int = 100) -> list[AlertRow]:
        """The newest ``limit`` alerts of ``fleet_id``, newest first."""
        rows = await self._rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE fleet_id = ?"  # noqa: S608 - fixed text
            " ORDER BY raised_at DESC, alert_id LIMIT ?",
            (fleet_id, limit),
        )
        return [_alert(r) for r in rows]

    async def due_alerts(self, now: datetime, limit: int = 50) -> list[AlertRow]:
        """Alerts whose webhook delivery is due: not delivered, not given up; oldest first."""
        rows = await self._rows(
            f"SELECT {_ALERT_COLUMNS} FROM alerts"  # noqa: S608 - fixed text
            " WHERE delivered_at IS NULL AND gave_up = 0"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            " ORDER BY raised_at, alert_id LIMIT ?",
            (_ts(now), limit),
        )
        return [_alert(r) for r in rows]

    async def alert_attempted(
        self,
        alert_id: str,
        *,
        attempts: int,
        delivered_at: datetime | None,
        next_attempt_at: datetime | None,
        gave_up: bool = False,
    ) -> None:
        """Record a delivery attempt of ``alert_id`` (a delivered alert stays delivered)."""
        async with self._transaction("record alert attempt") as db:
            await db.execute(
                "UPDATE alerts SET attempts = ?, delivered_at = ?, next_attempt_at = ?,"
                " gave_up = ? WHERE alert_id = ? AND delivered_at IS NULL",
                (
                    attempts, None if delivered_at is None else _ts(delivered_at),
                    None if next_attempt_at is None else _ts(next_attempt_at), int(gave_up),
                    alert_id,
                ),
            )  # fmt: skip


_ALERT_COLUMNS: Final = (
    "alert_id, fleet_id, vid, kind, raised_at, detail, attempts, delivered_at, next_attempt_at,"
    " gave_up"
)


def _alert_row(a: AlertRow) -> tuple[object, ...]:
    return (
        a.alert_id, a.fleet_id, a.vid, a.kind, _ts(a.raised_at), a.detail, a.attempts,
        None if a.delivered_at is None else _ts(a.delivered_at),
        None if a.next_attempt_at is None else _ts(a.next_attempt_at), int(a.gave_up),
    )  # fmt: skip


def _alert(r: Sequence[Any]) -> AlertRow:
    return AlertRow(
        r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4]), r[5], r[6], _dt(r[7]), _dt(r[8]),
        bool(r[9]),
    )  # fmt: skip
