"""The cloud's store: SQLite (embedded, the default) or PostgreSQL (at scale), one SQL text.

Vehicles and their registered keys, policies, and per-vehicle counters. The worker
keeps the hot path in memory and writes counters through in one transaction per
batch, before it publishes that batch's replies. Enrollment adds fleets (operator
token digests), one-time claims (digests), and every certificate issued (serial,
key, expiry), so that a revoked vehicle's serials can go into the CRL.

VINs, plates and fleet webhook secrets are stored sealed (``cloud.sealing``: AES-GCM
under a data key kept outside the store); a VIN is found by its keyed hash
(``vin_hash``), and one VIN is held by at most one active (not revoked) vehicle: a second
enrollment of it is refused (``VinHeld``) until the holder is revoked. Values stored in
clear by an older version are sealed when the store is opened.

``Store.open`` takes a SQLite file path or a ``postgresql://`` URL; ``cloud.db`` holds the
drivers. Each process (the worker, the HTTP API) opens its own Store; on SQLite one
connection with a lock per Store, whose busy timeout (5 s) bounds waits between processes;
on PostgreSQL a small pool. The schema is written once, in SQLite's terms, and translated.
"""

import asyncio
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from agent.protocol.keys import PublicKey, kid_for, load_public_key, public_pem
from agent.protocol.vin import VinError, vin_digest

from .db import Db, Tx, add_missing_columns, connect, create_schema, is_postgres_url, where_of
from .enrollment import ClaimRow, FleetRow, VehicleRow
from .errors import StoreError
from .handler import CounterRow, IntentRow, VehicleState
from .policy import PolicyRecord
from .renewal_flow import Flow, from_json, to_json
from .sealing import Sealer, is_sealed

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles (
    vid TEXT PRIMARY KEY,
    kid TEXT NOT NULL,
    public_key_pem BLOB NOT NULL,
    vin TEXT,
    registered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    fleet_id TEXT REFERENCES fleets(fleet_id),
    revoked_at TEXT,
    renew_seq INTEGER NOT NULL DEFAULT 0,
    vin_hash TEXT
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
    next_end TEXT,
    starts_at TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS policy_seeds (
    vin TEXT PRIMARY KEY,  -- the VIN's keyed hash (cloud.sealing), never the VIN
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
CREATE TABLE IF NOT EXISTS fleet_webhooks (
    fleet_id TEXT PRIMARY KEY REFERENCES fleets(fleet_id),
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;
"""
# Serials are decimal TEXT: they run to 159 bits, past SQLite's 64-bit INTEGER.

_ADDED_VEHICLE_COLUMNS: Final = {
    "plate": "TEXT",
    "fleet_id": "TEXT REFERENCES fleets(fleet_id)",
    "revoked_at": "TEXT",
    "renew_seq": "INTEGER NOT NULL DEFAULT 0",
    "vin_hash": "TEXT",
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
        "starts_at": "TEXT",
    },
    "policy_seeds": {"plate_masked": "TEXT", "plate": "TEXT"},
    "intents": {"processed_at": "TEXT", "claimed_by": "TEXT", "claimed_at": "TEXT"},
    "counters": {"last_seen": "TEXT", "writer": "TEXT"},
}
"""Per table: columns an older store lacks (appended, so column order stays stable)."""
_AFTER_COLUMNS: Final = """
CREATE UNIQUE INDEX IF NOT EXISTS vehicles_held_vin ON vehicles(vin_hash)
    WHERE revoked_at IS NULL;
"""
"""Made once the added columns exist: one VIN, one active vehicle."""


_CAS_COUNTERS: Final = (
    "INSERT INTO counters (vid, last_seq, down_seq, version, content_key, last_seen, writer)"
    " SELECT ?, ?, ?, ?, ?, ?, ? WHERE (? = 0 AND ? = 0)"
    " OR EXISTS (SELECT 1 FROM counters WHERE vid = ?) ON CONFLICT (vid) DO UPDATE SET"
    " last_seq = excluded.last_seq, down_seq = excluded.down_seq, version = excluded.version,"
    " content_key = excluded.content_key, last_seen = excluded.last_seen,"
    " writer = excluded.writer"
    " WHERE counters.last_seq = ? AND counters.down_seq = ?"
)
"""A compare-and-set of one vehicle's counters: lands only on the base the row names (a
first row only on the base (0, 0): a write that builds on one not stored yet must not
become the first)."""
_PG_CAS_COUNTERS: Final = (
    "WITH u AS (SELECT * FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::bigint[],"
    " ?::text[], ?::text[], ?::bigint[], ?::bigint[]) AS u(vid, last_seq, down_seq, version,"
    " content_key, last_seen, base_last, base_down)),"
    " updated AS (UPDATE counters c SET last_seq = u.last_seq, down_seq = u.down_seq,"
    " version = u.version, content_key = u.content_key, last_seen = u.last_seen, writer = ?"
    " FROM u WHERE c.vid = u.vid AND c.last_seq = u.base_last AND c.down_seq = u.base_down"
    " RETURNING c.vid),"
    " inserted AS (INSERT INTO counters"
    " (vid, last_seq, down_seq, version, content_key, last_seen, writer)"
    " SELECT u.vid, u.last_seq, u.down_seq, u.version, u.content_key, u.last_seen, ? FROM u"
    " WHERE u.base_last = 0 AND u.base_down = 0"
    " AND NOT EXISTS (SELECT 1 FROM counters c WHERE c.vid = u.vid)"
    " ON CONFLICT (vid) DO NOTHING RETURNING vid)"
    " SELECT vid FROM updated UNION ALL SELECT vid FROM inserted"
)
"""``_CAS_COUNTERS`` for a whole batch in one PostgreSQL statement (columns as arrays);
returns the vids whose write landed (asyncpg's executemany tells no counts)."""
_NEW_INTENT: Final = (
    "INSERT INTO intents (vid, intent_id, type, body, seq, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (vid, intent_id) DO NOTHING"
)
_PG_NEW_INTENTS: Final = (
    "INSERT INTO intents (vid, intent_id, type, body, seq, received_at)"
    " SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::bytea[], ?::bigint[], ?::text[])"
    " ON CONFLICT (vid, intent_id) DO NOTHING"
)
_POLICY_COLUMNS: Final = (
    "vid, insurer_code, insurer_name, policy_no_masked, coverage_start, coverage_end, source, "
    "verified_at, override, plate_masked, next_insurer_code, next_insurer_name, "
    "next_policy_no_masked, next_end, starts_at"
)
_SELECT_POLICIES: Final = f"SELECT {_POLICY_COLUMNS} FROM policies"  # noqa: S608 - fixed text
_REPLACE_POLICY: Final = "ON CONFLICT (vid) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _POLICY_COLUMNS.split(", ")[1:]
)
"""Every column but the key from the new row: what SQLite's INSERT OR REPLACE did."""
_PUT_POLICY: Final = (
    f"INSERT INTO policies ({_POLICY_COLUMNS}) "  # noqa: S608 - fixed text
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) {_REPLACE_POLICY}"
)
_SEED_COLUMNS: Final = (
    "vin, insurer_code, insurer_name, policy_no_masked, coverage_start, coverage_end, source,"
    " verified_at, plate_masked, plate"
)
_PUT_SEED: Final = (
    f"INSERT INTO policy_seeds ({_SEED_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed text
    " ON CONFLICT (vin) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _SEED_COLUMNS.split(", ")[1:])
)


def _policy_record(row: Sequence[Any]) -> PolicyRecord:
    vid, code, name, no, start, end, source, verified, override, plate = row[:10]
    next_code, next_name, next_no, next_end, starts_at = row[10:]
    return PolicyRecord(
        vid=vid,
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
        starts_at=_dt(starts_at),
    )


def _policy_row(r: PolicyRecord) -> tuple[object, ...]:
    return (
        r.vid, r.insurer_code, r.insurer_name, r.policy_no_masked, r.coverage_start.isoformat(),
        r.coverage_end.isoformat(), r.source, r.verified_at.isoformat(), r.override,
        r.plate_masked, r.next_insurer_code, r.next_insurer_name, r.next_policy_no_masked,
        None if r.next_end is None else r.next_end.isoformat(),
        None if r.starts_at is None else r.starts_at.isoformat(),
    )  # fmt: skip


def vin_digest_of(vid: str, vin: str | None) -> str | None:
    """The digest a policy.state carries for a registered VIN (None without a valid one)."""
    try:
        return None if vin is None else vin_digest(vid, vin)
    except VinError:
        return None


_INTENT_COLUMNS: Final = "vid, intent_id, type, body, seq, received_at"
_RELOAD: Final = (
    "SELECT v.vid, v.kid, v.public_key_pem, v.vin, v.revoked_at, c.last_seq,"
    " c.down_seq, c.version, c.content_key FROM vehicles v"
    " LEFT JOIN counters c ON c.vid = v.vid"
)


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


class VinHeld(StoreError):
    """The VIN is held by an active vehicle already (of this fleet or another)."""


class Store:
    """An open cloud store; use ``async with await Store.open(target)``."""

    def __init__(self, db: Db, sealer: Sealer) -> None:
        self._db = db
        self._seal = sealer
        self._writer = secrets.token_hex(8)
        """Stamped on the counters this store writes: tells its own writes from others'."""
        self._save_order = asyncio.Lock()
        """PostgreSQL: counter saves one after another, in call order. On pooled
        connections a later batch (built on the one before) could otherwise land first."""

    @classmethod
    async def open(cls, target: Path | str, data_key_file: Path | None = None) -> "Store":
        """Open (creating tables and columns if needed) the store at a SQLite path or URL.

        ``target``: a SQLite file path, or a ``postgresql://`` URL (its query may set server
        options such as ``search_path``). The data key comes from ``CTPL_DATA_KEY``, else
        ``data_key_file``, else (SQLite only) ``<target>.key`` (``cloud.sealing``). Values an
        older version stored in clear are sealed. StoreError if it cannot be opened.
        """
        postgres = isinstance(target, str) and is_postgres_url(target)
        where = where_of(str(target)) if postgres else target
        if data_key_file is None and not postgres:
            data_key_file = Path(f"{target}.key")
        sealer = Sealer.load(data_key_file)
        db = await connect(target)
        try:
            await create_schema(db, _SCHEMA)
            for table, added in _ADDED_COLUMNS.items():
                await add_missing_columns(db, table, added)
            store = cls(db, sealer)
            await store._seal_clear_rows()
            await create_schema(db, _AFTER_COLUMNS)
        except StoreError as exc:
            await db.close()
            raise StoreError(f"cannot open store {where}: {exc}") from exc
        return store

    async def _seal_clear_rows(self) -> None:
        """Seal what an older version stored in clear (VINs, plates, webhook secrets) and
        give every VIN its keyed hash; policy seeds move to their VIN's hash as key."""
        seal, lookup = self._seal.seal, self._seal.lookup
        async with self._db.transaction() as db:
            for vid, vin, plate, vin_hash in await db.fetch(
                "SELECT vid, vin, plate, vin_hash FROM vehicles", ()
            ):
                clear_vin = self._seal.open(vin, "vin")
                stale = vin_hash != lookup(clear_vin)
                clear = (vin is not None and not is_sealed(vin)) or bool(
                    plate and not is_sealed(plate)
                )
                if stale or clear:
                    await db.execute(
                        "UPDATE vehicles SET vin = ?, vin_hash = ?, plate = ? WHERE vid = ?",
                        (vin if is_sealed(vin) else seal(vin, "vin"), lookup(clear_vin),
                         plate if is_sealed(plate) else seal(plate, "plate"), vid),
                    )  # fmt: skip
            for key, plate in await db.fetch("SELECT vin, plate FROM policy_seeds", ()):
                if len(key) != 64:  # a VIN in clear: re-key the row by its hash
                    await db.execute(
                        "UPDATE policy_seeds SET vin = ?, plate = ? WHERE vin = ?",
                        (lookup(key), plate if is_sealed(plate) else seal(plate, "plate"), key),
                    )
                elif plate and not is_sealed(plate):
                    await db.execute(
                        "UPDATE policy_seeds SET plate = ? WHERE vin = ?",
                        (seal(plate, "plate"), key),
                    )
            for fleet_id, secret in await db.fetch(
                "SELECT fleet_id, secret FROM fleet_webhooks", ()
            ):
                if not is_sealed(secret):
                    await db.execute(
                        "UPDATE fleet_webhooks SET secret = ? WHERE fleet_id = ?",
                        (seal(secret, "webhook_secret"), fleet_id),
                    )

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
        """Register (or re-key) vehicle ``vid`` with its message-signing public key; VinHeld
        if another active vehicle holds ``vin``."""
        try:
            await self._db.execute(
                "INSERT INTO vehicles(vid, kid, public_key_pem, vin, vin_hash) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(vid) DO UPDATE SET kid=excluded.kid, "
                "public_key_pem=excluded.public_key_pem, vin=excluded.vin, "
                "vin_hash=excluded.vin_hash",
                (vid, kid_for(key), public_pem(key), self._seal.seal(vin, "vin"),
                 self._seal.lookup(vin)),
            )  # fmt: skip
        except StoreError as exc:
            if await self._vin_holder(vin, other_than=vid) is not None:
                raise VinHeld("another active vehicle holds this VIN") from exc
            raise

    async def _vin_holder(self, vin: str | None, other_than: str | None = None) -> str | None:
        """The fleet (``""`` for none) of the active vehicle holding ``vin``, if any."""
        if vin is None:
            return None
        rows = await self._rows(
            "SELECT vid, fleet_id FROM vehicles WHERE vin_hash = ? AND revoked_at IS NULL",
            (self._seal.lookup(vin),),
        )
        held = [fleet or "" for vid, fleet in rows if vid != other_than]
        return held[0] if held else None

    async def put_policy(self, r: PolicyRecord) -> None:
        """Insert or replace the policy of ``r.vid``."""
        await self._db.execute(_PUT_POLICY, _policy_row(r))

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

        At most one row per vid in a call. The worker's hot path: on SQLite, concurrent
        calls are not serialized (``Db.group_commit``), so a commit that is still on disk
        lets the next call's rows queue behind it and often ride in the same fsync; on
        PostgreSQL one statement writes the batch's counters (and one its intents).
        Every call returns only once its rows are committed.
        """
        rows = list(rows)
        intents = list(intents)
        if self._db.dialect == "postgres":
            async with self._save_order:
                return await self._save_counters_pg(rows, intents)
        async with self._db.group_commit() as tx:
            conflicts: frozenset[str] = frozenset()
            if rows:
                changed = await tx.executemany(
                    _CAS_COUNTERS,
                    [(*r[:6], self._writer, *r[6:], r[0], *r[6:]) for r in rows],
                )
                if changed != len(rows):
                    conflicts = await self._lost_writes(tx, rows)
            new = 0
            for i in intents:
                if i.vid in conflicts:
                    continue
                new += max(
                    await tx.execute(
                        _NEW_INTENT,
                        (i.vid, i.intent_id, i.type, i.body, i.seq, _ts(i.received_at)),
                    ),
                    0,
                )
        return Saved(new, conflicts)

    async def _save_counters_pg(self, rows: list[CounterRow], intents: list[IntentRow]) -> Saved:
        if not intents:  # one statement, its own transaction: one round trip
            return Saved(0, await self._pg_cas(self._db, rows))
        async with self._db.transaction() as tx:
            conflicts = await self._pg_cas(tx, rows)
            new = await self._pg_new_intents(tx, [i for i in intents if i.vid not in conflicts])
        return Saved(new, conflicts)

    async def _pg_cas(self, tx: Tx, rows: list[CounterRow]) -> frozenset[str]:
        """Write ``rows`` by compare-and-set; the vids whose write did not land."""
        if not rows:
            return frozenset()
        columns = [list(c) for c in zip(*rows, strict=True)]
        landed = await tx.fetch(_PG_CAS_COUNTERS, [*columns, self._writer, self._writer])
        return frozenset(r[0] for r in rows) - {r[0] for r in landed}

    @staticmethod
    async def _pg_new_intents(tx: Tx, intents: list[IntentRow]) -> int:
        if not intents:
            return 0
        columns = [
            [i.vid for i in intents], [i.intent_id for i in intents], [i.type for i in intents],
            [i.body for i in intents], [i.seq for i in intents],
            [_ts(i.received_at) for i in intents],
        ]  # fmt: skip
        return max(await tx.execute(_PG_NEW_INTENTS, columns), 0)

    async def _lost_writes(self, tx: Tx, rows: list[CounterRow]) -> frozenset[str]:
        """The vids of ``rows`` whose stored counters are not this store's write of them."""
        mine = {r[0]: (r[1], r[2]) for r in rows}
        marks = ", ".join("?" * len(mine))
        found = await tx.fetch(
            f"SELECT vid, last_seq, down_seq, writer FROM counters WHERE vid IN ({marks})",  # noqa: S608 - placeholders only
            list(mine),
        )
        landed = {
            vid for vid, last, down, writer in found
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
        if self._db.dialect == "postgres":
            # One fixed text whatever the count (each distinct text is a prepared statement).
            found = await self._db.fetch(f"{_RELOAD} WHERE v.vid = ANY(?::text[])", (wanted,))
        else:
            marks = ", ".join("?" * len(wanted))
            found = await self._db.fetch(f"{_RELOAD} WHERE v.vid IN ({marks})", wanted)
        return {
            r[0]: StoredVehicle(
                r[1], bytes(r[2]), self._seal.open(r[3], "vin"), r[4] is not None, r[5] or 0,
                r[6] or 0, r[7] or 0, r[8] or "",
            )
            for r in found
        }  # fmt: skip

    async def load_vehicles(self) -> dict[str, VehicleState]:
        """Every registered vehicle that is not revoked, with its key and counters."""
        out: dict[str, VehicleState] = {}
        sql = (
            "SELECT v.vid, v.kid, v.public_key_pem, c.last_seq, c.down_seq, c.version, "
            "c.content_key, v.vin, c.last_seen "
            "FROM vehicles v LEFT JOIN counters c ON c.vid = v.vid "
            "WHERE v.revoked_at IS NULL"
        )
        for vid, kid, pem, last, down, version, ckey, vin, seen in await self._db.fetch(sql):
            out[vid] = VehicleState(
                kid=kid,
                key=load_public_key(pem),
                last_seq=last or 0,
                down_seq=down or 0,
                version=version or 0,
                content_key=ckey or "",
                vin_digest=vin_digest_of(vid, self._seal.open(vin, "vin")),
                last_seen=_dt(seen),
                stored=(last or 0, down or 0),
            )
        return out

    async def load_policies(self, vid: str | None = None) -> dict[str, PolicyRecord]:
        """Every stored policy by vid (or only ``vid``'s)."""
        # Two fixed statements: the vid is always a bound parameter.
        sql = _SELECT_POLICIES if vid is None else f"{_SELECT_POLICIES} WHERE vid = ?"
        args = () if vid is None else (vid,)
        return {row[0]: _policy_record(row) for row in await self._db.fetch(sql, args)}

    async def fleet_policies(self, fleet_id: str) -> dict[str, PolicyRecord]:
        """The stored policies of ``fleet_id``'s vehicles, by vid."""
        columns = ", ".join(f"p.{c}" for c in _POLICY_COLUMNS.split(", "))
        rows = await self._db.fetch(
            f"SELECT {columns} FROM policies p JOIN vehicles v ON v.vid = p.vid"  # noqa: S608 - fixed text
            " WHERE v.fleet_id = ?",
            (fleet_id,),
        )
        return {row[0]: _policy_record(row) for row in rows}

    async def put_policy_seed(self, vin: str, r: PolicyRecord, plate: str | None = None) -> None:
        """Hold ``r`` (its vid ignored) for the vehicle that enrolls with ``vin``.

        A stand-in for looking the policy up by VIN at the authoritative sources.
        """
        await self._db.execute(
            _PUT_SEED,
            (
                self._seal.lookup(vin), r.insurer_code, r.insurer_name, r.policy_no_masked,
                r.coverage_start.isoformat(), r.coverage_end.isoformat(), r.source,
                r.verified_at.isoformat(), r.plate_masked, self._seal.seal(plate, "plate"),
            ),
        )  # fmt: skip

    async def adopt_policy_seed(self, vid: str) -> PolicyRecord | None:
        """Give ``vid`` the policy seeded for its VIN, if any; return its policy record."""
        async with self._db.transaction() as db:
            # The columns not inserted (the next policy's) become NULL, as a replace did.
            await db.execute(
                "INSERT INTO policies (vid, insurer_code, insurer_name, "  # noqa: S608 - fixed text
                "policy_no_masked, coverage_start, coverage_end, source, verified_at, override, "
                "plate_masked) SELECT v.vid, s.insurer_code, s.insurer_name, "
                "s.policy_no_masked, s.coverage_start, s.coverage_end, s.source, s.verified_at, "
                "NULL, s.plate_masked "
                "FROM vehicles v JOIN policy_seeds s ON s.vin = v.vin_hash WHERE v.vid = ? "
                f"{_REPLACE_POLICY}",
                (vid,),
            )
            await db.execute(
                "UPDATE vehicles SET plate = (SELECT s.plate FROM policy_seeds s"
                " WHERE s.vin = vehicles.vin_hash) WHERE vid = ? AND plate IS NULL",
                (vid,),
            )
        return (await self.load_policies(vid)).get(vid)

    async def _rows(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        return await self._db.fetch(sql, params)

    # ---- enrollment ------------------------------------------------------------

    async def create_fleet(
        self, fleet_id: str, name: str, operator_digest: bytes, now: datetime
    ) -> None:
        """Add a fleet whose operator token has SHA-256 ``operator_digest``."""
        await self._db.execute(
            "INSERT INTO fleets VALUES (?, ?, ?, ?)", (fleet_id, name, operator_digest, _ts(now))
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
        await self._db.executemany(
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

        False (and nothing stored) if the claim was used or expired since it was read;
        VinHeld (and nothing stored, the claim still unused) if an active vehicle holds
        ``vin`` already, in any fleet: the holder must be revoked first.
        """
        pem = public_pem(key)
        try:
            async with self._db.transaction() as db:
                used = await db.execute(
                    "UPDATE claims SET used_at = ?, vid = ? "
                    "WHERE digest = ? AND used_at IS NULL AND expires_at > ?",
                    (_ts(now), vid, claim_digest, _ts(now)),
                )
                if used != 1:
                    raise _Conflict
                vin_hash = self._seal.lookup(vin)
                if vin_hash is not None and await db.fetchone(
                    "SELECT 1 FROM vehicles WHERE vin_hash = ? AND revoked_at IS NULL", (vin_hash,)
                ):
                    raise VinHeld("an active vehicle holds this VIN")
                await db.execute(
                    "INSERT INTO vehicles(vid, kid, public_key_pem, vin, vin_hash, registered_at,"
                    " fleet_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (vid, kid_for(key), pem, self._seal.seal(vin, "vin"), vin_hash, _ts(now),
                     fleet_id),
                )  # fmt: skip
                await self._insert_certificate(db, vid, serial, key, not_after, now)
        except _Conflict:
            return False
        except VinHeld:
            raise
        except StoreError as exc:  # the unique index: another enrollment of it won the race
            if await self._vin_holder(vin, other_than=vid) is not None:
                raise VinHeld("an active vehicle holds this VIN") from exc
            raise
        return True

    async def renew(
        self, *, vid: str, seq: int, key: PublicKey, serial: int, not_after: datetime, now: datetime
    ) -> bool:
        """Record renewal ``seq``, make ``key`` the vehicle's, and add its certificate.

        False (and nothing stored) if the vehicle was revoked or renewed with this seq meanwhile.
        """
        try:
            async with self._db.transaction() as db:
                renewed = await db.execute(
                    "UPDATE vehicles SET kid = ?, public_key_pem = ?, renew_seq = ? "
                    "WHERE vid = ? AND renew_seq < ? AND revoked_at IS NULL",
                    (kid_for(key), public_pem(key), seq, vid, seq),
                )
                if renewed != 1:
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
        async with self._db.transaction() as db:
            # Insert-if-absent first: two importers at once cannot both find it missing.
            if await self._insert_certificate(db, vid, serial, key, not_after, now, once=True):
                return
            known = await db.fetchone(
                "SELECT vid FROM certificates WHERE serial = ?", (str(serial),)
            )
            if known is not None and known[0] != vid:
                raise StoreError(f"certificate serial {serial} belongs to another vehicle")

    @staticmethod
    async def _insert_certificate(
        db: Tx,
        vid: str,
        serial: int,
        key: PublicKey,
        not_after: datetime,
        now: datetime,
        *,
        once: bool = False,
    ) -> bool:
        """Record the certificate; with ``once``, False (and nothing written) if it is known."""
        row = (str(serial), vid, kid_for(key), public_pem(key), _ts(not_after), _ts(now))
        if once:
            return (
                await db.execute(
                    "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (serial) DO NOTHING",
                    row,
                )
                == 1
            )
        await db.execute("INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?)", row)
        return True

    async def vehicle(self, vid: str) -> VehicleRow | None:
        """The enrollment state of ``vid``, if registered."""
        rows = await self._rows(
            "SELECT fleet_id, revoked_at, renew_seq, vin FROM vehicles WHERE vid = ?", (vid,)
        )
        if not rows:
            return None
        fleet_id, revoked_at, renew_seq, vin = rows[0]
        return VehicleRow(vid, fleet_id, _dt(revoked_at), renew_seq, self._seal.open(vin, "vin"))

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
        async with self._db.transaction() as db:
            await db.execute(
                "UPDATE vehicles SET revoked_at = ? WHERE vid = ? AND revoked_at IS NULL",
                (_ts(now), vid),
            )
            row = await db.fetchone("SELECT revoked_at FROM vehicles WHERE vid = ?", (vid,))
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
            f"SELECT {_INTENT_COLUMNS} FROM intents {where} "  # noqa: S608 - fixed texts
            "ORDER BY received_at, seq",
            params,
        )
        return [_intent(r) for r in rows]

    async def recent_intents(self, vid: str, type_: str, since: datetime) -> list[IntentRow]:
        """``vid``'s intents of ``type_`` received after ``since``, oldest first."""
        rows = await self._rows(
            f"SELECT {_INTENT_COLUMNS} FROM intents"  # noqa: S608 - fixed text
            " WHERE vid = ? AND type = ? AND received_at > ? ORDER BY received_at, seq",
            (vid, type_, _ts(since)),
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
        # One conditional UPDATE: on PostgreSQL a concurrent claimer waits for the row and
        # then finds it claimed (the condition is checked again), so each goes to one.
        rows = await self._db.fetch(
            f"UPDATE intents SET claimed_by = ?, claimed_at = ?"  # noqa: S608 - fixed text
            " WHERE type = ? AND processed_at IS NULL"
            " AND (claimed_at IS NULL OR claimed_at < ? OR claimed_by = ?)"
            f" RETURNING {_INTENT_COLUMNS}",
            (owner, _ts(now), type_, _ts(now - lease), owner),
        )
        return sorted((_intent(r) for r in rows), key=lambda i: (i.received_at, i.seq))

    async def mark_processed(self, vid: str, intent_id: str, now: datetime) -> None:
        """Note that intent (vid, intent_id) was acted on."""
        await self._db.execute(
            "UPDATE intents SET processed_at = ? WHERE vid = ? AND intent_id = ?",
            (_ts(now), vid, intent_id),
        )

    async def save_flow(
        self, flow: Flow, now: datetime, policy: PolicyRecord | None = None
    ) -> None:
        """Store the renewal flow (and the policy it issued, in the same transaction)."""
        async with self._db.transaction() as db:
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
        if not rows:
            return None, None
        return self._seal.open(rows[0][0], "vin"), self._seal.open(rows[0][1], "plate")

    async def set_plate(self, vid: str, plate: str) -> None:
        """Record the vehicle's plate (sealed; the sources look policies up by it)."""
        await self._db.execute(
            "UPDATE vehicles SET plate = ? WHERE vid = ?", (self._seal.seal(plate, "plate"), vid)
        )

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

    async def set_fleet_webhook(self, fleet_id: str, url: str, secret: str, now: datetime) -> None:
        """Post ``fleet_id``'s alerts to ``url``, signed with ``secret`` (replaces any)."""
        await self._db.execute(
            "INSERT INTO fleet_webhooks (fleet_id, url, secret, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (fleet_id) DO UPDATE SET url = excluded.url,"
            " secret = excluded.secret, updated_at = excluded.updated_at",
            (fleet_id, url, self._seal.seal(secret, "webhook_secret"), _ts(now)),
        )

    async def delete_fleet_webhook(self, fleet_id: str) -> bool:
        """Stop posting ``fleet_id``'s alerts; False if it had no webhook."""
        n = await self._db.execute("DELETE FROM fleet_webhooks WHERE fleet_id = ?", (fleet_id,))
        return n > 0

    async def fleet_webhooks(self) -> dict[str, tuple[str, str]]:
        """Every fleet's webhook set through the API: fleet id → (url, secret)."""
        rows = await self._db.fetch("SELECT fleet_id, url, secret FROM fleet_webhooks", ())
        return {r[0]: (r[1], self._seal.open(r[2], "webhook_secret") or "") for r in rows}

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
        async with self._db.transaction() as db:
            for a in rows:
                stored = await db.execute(
                    f"INSERT INTO alerts ({_ALERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608 - fixed text
                    " ON CONFLICT (alert_id) DO NOTHING",
                    _alert_row(a),
                )
                if stored == 1:
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
            f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE {_DUE}"  # noqa: S608 - fixed text
            " ORDER BY raised_at, alert_id LIMIT ?",
            (_ts(now), limit),
        )
        return [_alert(r) for r in rows]

    async def claim_due_alerts(
        self, now: datetime, lease: timedelta, limit: int = 50
    ) -> list[AlertRow]:
        """Take the alerts due at ``now`` (as ``due_alerts``) for one delivery attempt.

        Each is given to one claimer: it is not due again until ``now + lease`` (by then
        its attempt is recorded, or its claimer died and another may try). Several workers
        share the store; each due alert is posted by one of them at a time.
        """
        rows = await self._db.fetch(
            f"UPDATE alerts SET next_attempt_at = ? WHERE alert_id IN"  # noqa: S608 - fixed text
            f" (SELECT alert_id FROM alerts WHERE {_DUE} ORDER BY raised_at, alert_id LIMIT ?)"
            f" AND {_DUE} RETURNING {_ALERT_COLUMNS}",
            (_ts(now + lease), _ts(now), limit, _ts(now)),
        )
        return sorted((_alert(r) for r in rows), key=lambda a: (a.raised_at, a.alert_id))

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
        await self._db.execute(
            "UPDATE alerts SET attempts = ?, delivered_at = ?, next_attempt_at = ?,"
            " gave_up = ? WHERE alert_id = ? AND delivered_at IS NULL",
            (
                attempts, None if delivered_at is None else _ts(delivered_at),
                None if next_attempt_at is None else _ts(next_attempt_at), int(gave_up),
                alert_id,
            ),
        )  # fmt: skip


_DUE: Final = (
    "delivered_at IS NULL AND gave_up = 0 AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
)
"""An alert whose webhook delivery is due at the instant bound to ``?``."""
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
