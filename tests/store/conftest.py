"""The store's database, twice: a SQLite file in a temp dir and a fresh PostgreSQL schema.

PostgreSQL is found at ``CTPL_TEST_PG_URL`` (default: the CI service,
``postgresql://postgres@127.0.0.1:5432/test``). Each test gets a schema of its own,
dropped afterwards, so tests never see each other's rows and leave nothing behind.
If PostgreSQL does not answer, its half of the tests fails (never skips) and says how
to start it.
"""

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from cloud.db import Db, connect, where_of
from cloud.errors import StoreError

PG_URL_ENV = "CTPL_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEP_S = 10.0

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout_s: float = STEP_S) -> T:
    """Await ``aw`` under a timeout."""
    async with asyncio.timeout(timeout_s):
        return await aw


PRIVATE_URL_FILE = Path(__file__).resolve().parents[2] / "var" / "pg" / "url"
"""Where ``make test`` notes the private PostgreSQL it started (.ci/pg_private), if any."""


def pg_url() -> str:
    """The PostgreSQL the tests use: CTPL_TEST_PG_URL, else the private one, else CI's."""
    if PG_URL_ENV in os.environ:
        return os.environ[PG_URL_ENV]
    if PRIVATE_URL_FILE.is_file():
        return PRIVATE_URL_FILE.read_text().strip()
    return DEFAULT_PG_URL


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections look up (and create) tables in ``schema``."""
    p = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(p.query) if k != "search_path"]
    return urlunsplit(p._replace(query=urlencode([*query, ("search_path", schema)])))


def _unreachable(url: str, exc: Exception) -> str:
    return (
        f"PostgreSQL does not answer at {where_of(url)} ({exc}).\n"
        "The store tests run against SQLite and PostgreSQL alike. Start one with trust auth "
        "for 127.0.0.1 and a database `test`, e.g. on Debian:\n"
        "  sudo apt-get install -y postgresql && sudo service postgresql start\n"
        "  sudo -u postgres createdb test\n"
        f"or point {PG_URL_ENV} at another (postgresql://user@host:port/db). "
        "`make pg` checks it."
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Path | str]:
    """Where a fresh store lives: a SQLite path, or a URL onto an empty PostgreSQL schema."""
    if request.param == "sqlite":
        yield tmp_path / "store.db"
        return
    url = pg_url()
    try:
        admin = await within(connect(url))
    except (StoreError, TimeoutError) as exc:
        unreachable = _unreachable(url, exc)
    else:
        unreachable = ""
    if unreachable:
        pytest.fail(unreachable, pytrace=False)  # outside the except: no chained traceback
    schema = f"t_{secrets.token_hex(6)}"  # fixed shape: safe to put in the statement
    try:
        await within(admin.execute(f"CREATE SCHEMA {schema}"))
        yield with_search_path(url, schema)
    finally:
        try:
            await within(admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        finally:
            await within(admin.close())


@pytest.fixture
async def db(db_target: Path | str) -> AsyncIterator[Db]:
    """An open Db on ``db_target``."""
    opened = await within(connect(db_target))
    yield opened
    await within(opened.close())
