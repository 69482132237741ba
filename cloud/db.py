"""The cloud store's database drivers, one interface: SQLite (aiosqlite) and PostgreSQL (asyncpg).

The only module that imports aiosqlite or asyncpg. SQL is written once, with ``?``
placeholders, in the subset both speak (``INSERT … ON CONFLICT (…) DO NOTHING`` or
``DO UPDATE SET … = excluded.…``, ``RETURNING``; never ``INSERT OR REPLACE/IGNORE``);
PostgreSQL receives it with ``$1 … $n``. Instants stay ISO TEXT in both (compared as
text: PostgreSQL's TEXT columns get the byte-order "C" collation, as SQLite's have),
bytes stay bytes, integers 64-bit. Every driver error surfaces as ``StoreError``.

    Db            connect(target): a postgresql:// URL, else a SQLite file path
    ├── SqliteDb  one connection; a lock keeps one coroutine's transaction whole
    └── PostgresDb  a small asyncpg pool; each transaction on a connection of its own
"""

import asyncio
import logging
import os
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import aiosqlite
import asyncpg

from .errors import StoreError

log = logging.getLogger(__name__)

Row: TypeAlias = tuple[Any, ...]
Params: TypeAlias = Sequence[object]
Dialect: TypeAlias = Literal["sqlite", "postgres"]
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S: Final = 5.0
PG_CONNECT_TIMEOUT_S: Final = 10.0
PG_POOL_SIZE: Final = 4
_PG_SCHEMES: Final = ("postgresql://", "postgres://")
_SQLITE_ERRORS: Final = (aiosqlite.Error, ValueError)  # ValueError: the connection is closed
_PG_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_PG_SCHEMA_LOCK: Final = 0x6374706C  # "ctpl": pg_advisory_xact_lock key for schema scripts
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*")


class Tx(Protocol):
    """Statements inside one transaction (or, on ``Db`` itself, each in its own)."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed (-1 when it does not say)."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        """Run one statement once per row; the rows changed in all (None: the driver cannot tell).

        SQLite tells; asyncpg does not (PostgreSQL then returns None).
        """
        ...

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement; every row it returns, as plain tuples."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Run one statement; its first row, if any."""
        ...


class Db(ABC):
    """An open database. Statements called on it directly are each their own transaction."""

    dialect: Dialect

    @abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement and commit; the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        """Run one statement per row, all in one transaction; as ``Tx.executemany``."""

    @abstractmethod
    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement (committed if it writes); every row it returns."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Run one statement (committed if it writes); its first row, if any."""
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """One transaction: committed if the block ends normally, else undone (cancellation too).

        SQLite: ``BEGIN IMMEDIATE`` under this Db's lock, so that it waits its turn for
        the write lock instead of failing when another connection wrote since it read.
        PostgreSQL: a transaction (READ COMMITTED) on a pooled connection of its own.
        """

    @abstractmethod
    def group_commit(self) -> AbstractAsyncContextManager[Tx]:
        """A write for the hot path that commits before the block returns, perhaps with others'.

        SQLite: concurrent blocks share one implicit transaction on the one connection,
        so that one commit (one fsync) can carry several blocks' rows; a block whose
        statement fails leaves what it wrote to a concurrent block's commit, if any, else
        it is undone. Blocks wait for an open ``transaction()`` and it for them. Inside
        the block use only the yielded statements. PostgreSQL: ``transaction()``.
        """

    @abstractmethod
    async def executescript(self, script: str) -> None:
        """Run a script of statements (the schema) in one go, committed."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection."""


async def connect(target: Path | str) -> Db:
    """Open a ``postgresql://`` or ``postgres://`` URL with asyncpg, else a SQLite file path."""
    if is_postgres_url(target):
        return await PostgresDb.connect(str(target))
    return await SqliteDb.connect(Path(target))


def is_postgres_url(target: Path | str) -> bool:
    """Whether ``connect`` would open ``target`` with PostgreSQL."""
    return isinstance(target, str) and target.startswith(_PG_SCHEMES)


# ---- schema ---------------------------------------------------------------------

_STRFTIME_NOW_UTC: Final = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
_PG_NOW_UTC: Final = "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
_PG_TYPES: Final = (
    (re.compile(r"\bINTEGER PRIMARY KEY(?: AUTOINCREMENT)?\b"),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r'\bTEXT\b(?! COLLATE)'), 'TEXT COLLATE "C"'),
)  # fmt: skip
_STRICT: Final = re.compile(r"\)\s*STRICT\s*$")
_CREATE_TABLE: Final = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)
_REFERENCES: Final = re.compile(r"\bREFERENCES\s+(\w+)", re.IGNORECASE)


def schema_for(dialect: Dialect, ddl: str) -> str:
    """The store's SQLite DDL as ``dialect`` takes it (unchanged for SQLite).

    For PostgreSQL: ``STRICT`` dropped; INTEGER -> BIGINT (an INTEGER PRIMARY KEY
    becomes an identity column), BLOB -> BYTEA, TEXT -> TEXT COLLATE "C" (byte order,
    as SQLite compares); the UTC ``strftime`` default -> the same text from ``now()``;
    and tables ordered so that each comes after the tables it references. Any other
    ``strftime`` is refused (ValueError).
    """
    if dialect == "sqlite":
        return ddl
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    out = []
    for s in statements:
        s = s.replace(_STRFTIME_NOW_UTC, _PG_NOW_UTC)
        if "strftime(" in s:
            raise ValueError(f"no PostgreSQL form for this strftime: {s[:80]}")
        out.append(_STRICT.sub(")", pg_decl(s)))
    return ";\n".join(_by_references(out)) + ";\n"


def pg_decl(decl: str) -> str:
    """A SQLite column declaration (or CREATE statement) with PostgreSQL's types."""
    for pattern, replacement in _PG_TYPES:
        decl = pattern.sub(replacement, decl)
    return decl


def _by_references(statements: list[str]) -> list[str]:
    """Statements reordered so a CREATE TABLE follows the tables it references (else kept)."""
    names = {i: m.group(1) for i, s in enumerate(statements) if (m := _CREATE_TABLE.match(s))}
    created = set(names.values())
    done: set[str] = set()
    out: list[str] = []
    pending = list(range(len(statements)))
    while pending:
        for i in pending:
            s = statements[i]
            refs = {r for r in _REFERENCES.findall(s) if r in created and r != names.get(i)}
            on = _ON_TABLE.search(s)
            if on is not None and on.group(1) in created:
                refs.add(on.group(1))
            if refs <= done:
                break
        else:
            i = pending[0]  # a cycle: keep the written order
        pending.remove(i)
        out.append(statements[i])
        if i in names:
            done.add(names[i])
    return out


_ON_TABLE: Final = re.compile(r"^CREATE (?:UNIQUE )?INDEX .*? ON (\w+)", re.IGNORECASE)


async def create_schema(db: Db, ddl: str) -> None:
    """Create (if missing) the tables and indexes of the SQLite ``ddl`` in ``db``."""
    await db.executescript(schema_for(db.dialect, ddl))


async def add_missing_columns(db: Db, table: str, columns: Mapping[str, str]) -> list[str]:
    """Append each of ``columns`` (name: SQLite declaration) that ``table`` lacks; the added.

    Names are fixed texts of the store, checked to be plain identifiers (ValueError).
    """
    for name in (table, *columns):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain identifier: {name!r}")
    if db.dialect == "sqlite":
        have = {r[1] for r in await db.fetch(f"PRAGMA table_info({table})")}
    else:
        have = {
            r[0]
            for r in await db.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
        }
    added = [c for c in columns if c not in have]
    if added:
        async with db.transaction() as tx:
            for column in added:
                decl = columns[column]
                if db.dialect == "sqlite":
                    await tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                else:
                    await tx.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {pg_decl(decl)}"
                    )
    return added


# ---- SQLite -----------------------------------------------------------------------


def _sqlite_error(exc: BaseException, sql: str) -> StoreError:
    return StoreError(f"SQLite: {exc} (in: {_head(sql)})")


def _head(sql: str) -> str:
    return " ".join(sql.split())[:72]


def _execute(c: sqlite3.Connection, sql: str, params: Params) -> int:
    cursor = c.execute(sql, params)
    try:
        return cursor.rowcount
    finally:
        cursor.close()


def _executemany(c: sqlite3.Connection, sql: str, rows: list[Params]) -> int:
    cursor = c.executemany(sql, rows)
    try:
        return cursor.rowcount  # summed over the rows
    finally:
        cursor.close()


def _fetch(c: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    cursor = c.execute(sql, params)
    try:
        return cursor.fetchall()  # plain tuples: the connection has no row factory
    finally:
        cursor.close()


def _executescript(c: sqlite3.Connection, script: str) -> None:
    c.executescript(script).close()


async def _on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: object) -> T:
    """``fn(sqlite3 connection, *args)`` on the connection's thread, queued after its calls.

    Every cursor is made and closed there. aiosqlite's own ``execute`` hands the cursor
    back, to be freed on the event loop's thread, and freeing it resets its statement:
    one the statement cache may meanwhile have given to another cursor running on the
    connection's thread (SQLITE_MISUSE under concurrent group commits). One hop, as
    ``execute``; aiosqlite has no public call for it.
    """
    result = await conn._execute(fn, conn._conn, *args)  # type: ignore[no-untyped-call]
    return cast(T, result)


class _SqliteTx:
    """Statements on the SQLite connection, inside whatever transaction is open."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            return await _on_thread(self._conn, _execute, sql, params)
        except _SQLITE_ERRORS as exc:
            raise _sqlite_error(exc, sql) from exc

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        try:
            return await _on_thread(self._conn, _executemany, sql, list(rows))
        except _SQLITE_ERRORS as exc:
            raise _sqlite_error(exc, sql) from exc

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            return await _on_thread(self._conn, _fetch, sql, params)
        except _SQLITE_ERRORS as exc:
            raise _sqlite_error(exc, sql) from exc

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None


def _private_file(path: Path) -> None:
    """Make ``path`` (if missing) readable by its owner only, in a 0700 directory if one is
    made; tighten an existing file and its -wal and -shm files to 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with suppress(FileNotFoundError):
            if name.stat().st_mode & 0o077:
                name.chmod(0o600)
    if path.parent.stat().st_mode & 0o077 and path.parent not in _WARNED:
        _WARNED.add(path.parent)
        log.warning("the store's directory %s is open to other users: keep it 0700", path.parent)


_WARNED: set[Path] = set()
"""Directories already warned about (once per process)."""


class SqliteDb(Db):
    """A SQLite file: one connection, WAL, synchronous=FULL, foreign keys on, 5 s busy wait."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        """Held by a transaction (and the script): one at a time on the connection."""
        self._no_tx = asyncio.Event()
        """Set while no transaction is open or about to begin: reads and group commits go."""
        self._no_tx.set()
        self._tx = _SqliteTx(conn)
        self._groups = 0
        """Group commits in flight; a transaction begins only when there are none."""
        self._no_groups = asyncio.Event()
        self._no_groups.set()
        self._group_failed = False

    @classmethod
    async def connect(cls, path: Path) -> "SqliteDb":
        """Open (creating if needed) the database file at ``path``: the file (and the WAL
        and shared-memory files SQLite makes beside it, which take its mode) 0600, a
        directory it creates 0700."""
        try:
            _private_file(path)
            conn = await aiosqlite.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        except (aiosqlite.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            for pragma in (
                "PRAGMA journal_mode=WAL",
                # FULL: a counter written survives power loss, so a replay stays refused.
                "PRAGMA synchronous=FULL",
                "PRAGMA foreign_keys=ON",
            ):
                await _on_thread(conn, _fetch, pragma, ())
        except _SQLITE_ERRORS as exc:
            await conn.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return cls(conn)

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        async with self.transaction() as tx:
            return await tx.executemany(sql, rows)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        if sql.lstrip()[:6].upper() not in ("SELECT", "PRAGMA"):  # it writes (RETURNING)
            async with self.transaction() as tx:
                return await tx.fetch(sql, params)
        # After any open transaction (a read on this connection would see its rows before
        # they are committed), but not under the lock: reads queue on the connection's
        # thread without waiting for each other or for group commits. Each read runs in
        # one call there, so none is left open to pin an old snapshot.
        await self._after_transaction()
        return await self._tx.fetch(sql, params)

    async def _after_transaction(self) -> None:
        while not self._no_tx.is_set():
            await self._no_tx.wait()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            self._no_tx.clear()  # new group commits wait; those in flight finish first
            try:
                await self._no_groups.wait()
                try:
                    # IMMEDIATE: take the write lock first. Each process writes through its
                    # own connection; a deferred transaction that read first would fail at
                    # once ("database is locked") instead of waiting its turn.
                    await _on_thread(self._conn, _execute, "BEGIN IMMEDIATE", ())
                    yield self._tx
                    await self._conn.commit()
                except BaseException as exc:
                    # Cancellation too: an open transaction left behind would be committed
                    # by whichever write comes next on this connection. Awaited directly,
                    # the rollback is queued on the connection's thread at once, ahead of
                    # anything queued later, even if this wait is cancelled.
                    await self._rollback()
                    if isinstance(exc, _SQLITE_ERRORS):
                        raise _sqlite_error(exc, "BEGIN IMMEDIATE … COMMIT") from exc
                    raise
            finally:
                self._no_tx.set()

    async def _rollback(self) -> None:
        # An error here means there is nothing to undo: the connection is idle or gone.
        with suppress(*_SQLITE_ERRORS):
            await self._conn.rollback()

    @asynccontextmanager
    async def group_commit(self) -> AsyncIterator[Tx]:
        await self._after_transaction()
        self._groups += 1
        self._no_groups.clear()
        try:
            yield self._tx
            await self._conn.commit()
        except BaseException as exc:
            self._group_failed = True
            if isinstance(exc, _SQLITE_ERRORS):
                raise _sqlite_error(exc, "COMMIT") from exc
            raise
        finally:
            self._groups -= 1
            if self._groups == 0:
                if self._group_failed:
                    # Only failed blocks' statements can be pending now: the others committed.
                    # Queued at once (see transaction), so before any later block's rows.
                    self._group_failed = False
                    await self._rollback()
                if self._groups == 0:
                    self._no_groups.set()

    async def executescript(self, script: str) -> None:
        async with self._lock:
            try:
                await _on_thread(self._conn, _executescript, script)
                await self._conn.commit()
            except _SQLITE_ERRORS as exc:
                await self._rollback()
                raise _sqlite_error(exc, script) from exc

    async def close(self) -> None:
        try:
            await self._conn.close()
        except _SQLITE_ERRORS as exc:
            raise _sqlite_error(exc, "close") from exc


# ---- PostgreSQL -------------------------------------------------------------------


@lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """``sql`` with each ``?`` placeholder numbered ``$1 … $n`` (not inside quotes or comments)."""
    out: list[str] = []
    n = 0
    i = 0
    while i < len(sql):
        c = sql[i]
        if c in "'\"":
            end = sql.find(c, i + 1)
            end = len(sql) if end < 0 else end + 1  # a doubled quote reads as two literals
            out.append(sql[i:end])
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = len(sql) if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif c == "?":
            n += 1
            out.append(f"${n}")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _pg_error(exc: BaseException, sql: str) -> StoreError:
    return StoreError(f"PostgreSQL: {type(exc).__name__}: {exc} (in: {_head(sql)})")


def _rowcount(status: str) -> int:
    # "INSERT 0 3", "UPDATE 2", "DELETE 0", "SELECT 5"; "CREATE TABLE" says nothing.
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


def where_of(url: str) -> str:
    """``url`` without user, password or options: host:port/database (for messages)."""
    p = urlsplit(url)
    return f"{p.hostname or 'localhost'}:{p.port or 5432}{p.path}"


class _PgTx:
    """Statements on one pooled connection (inside its transaction, if one is open)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        try:
            status: str = await self._conn.execute(to_dollar(sql), *params)
        except (*_PG_ERRORS, OSError) as exc:
            raise _pg_error(exc, sql) from exc
        return _rowcount(status)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        rows = list(rows)
        if not rows:
            return 0
        try:
            await self._conn.executemany(to_dollar(sql), rows)
        except (*_PG_ERRORS, OSError) as exc:
            raise _pg_error(exc, sql) from exc
        return None

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            records = await self._conn.fetch(to_dollar(sql), *params)
        except (*_PG_ERRORS, OSError) as exc:
            raise _pg_error(exc, sql) from exc
        return [tuple(r) for r in records]

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None


class PostgresDb(Db):
    """A PostgreSQL database through a small asyncpg pool (the URL's query sets server options)."""

    dialect: Dialect = "postgres"

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self._where = where
        self._direct = _PgTx(pool)  # the pool runs each statement on a free connection

    @classmethod
    async def connect(cls, url: str, pool_size: int = PG_POOL_SIZE) -> "PostgresDb":
        """Connect to ``url`` (``postgresql://user@host:port/db?search_path=…``)."""
        where = where_of(url)
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=PG_CONNECT_TIMEOUT_S
            )
        except (*_PG_ERRORS, OSError, ValueError) as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {where}: {exc}") from exc
        return cls(pool, where)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._direct.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> int | None:
        async with self.transaction() as tx:
            return await tx.executemany(sql, rows)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._direct.fetch(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        try:
            conn = await self._pool.acquire()
        except (*_PG_ERRORS, OSError) as exc:
            raise StoreError(f"PostgreSQL at {self._where}: {exc}") from exc
        try:
            tr = conn.transaction()
            try:
                await tr.start()
            except (*_PG_ERRORS, OSError) as exc:
                raise _pg_error(exc, "BEGIN") from exc
            try:
                yield _PgTx(conn)
            except BaseException:
                try:
                    await asyncio.shield(tr.rollback())
                except (*_PG_ERRORS, OSError):
                    conn.terminate()  # the pool replaces it; the server rolls back
                raise
            try:
                await tr.commit()
            except (*_PG_ERRORS, OSError) as exc:
                raise _pg_error(exc, "COMMIT") from exc
        finally:
            await self._pool.release(conn)

    def group_commit(self) -> AbstractAsyncContextManager[Tx]:
        return self.transaction()

    async def executescript(self, script: str) -> None:
        # One at a time across the database: concurrent CREATE … IF NOT EXISTS can collide.
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (_PG_SCHEMA_LOCK,))
            await tx.execute(script)

    async def close(self) -> None:
        try:
            await self._pool.close()
        except (*_PG_ERRORS, OSError) as exc:
            raise StoreError(f"closing PostgreSQL at {self._where}: {exc}") from exc
