"""Personal data at rest (issue 13, finding 5): VINs, plates and fleet webhook secrets are
never in the store in clear, on SQLite and PostgreSQL; the data key lives outside it; the
SQLite files are 0600 in a 0700 directory; one VIN is held by one active vehicle."""

import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.protocol.keys import generate_private_key
from cloud.db import connect
from cloud.errors import StoreError
from cloud.policy import PolicyRecord
from cloud.sealing import KEY_ENV, Sealer, new_key_text
from cloud.store import Store, VinHeld

from .conftest import within

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
VIN = "LSVAU2180N2183294"
PLATE = "沪A31676"
SECRET = "fleet-webhook-secret-0123456789"


def record(vid: str = "v0000000") -> PolicyRecord:
    return PolicyRecord(vid, "PICC", "中国人保财险", "PDZA2026****1234", NOW.date(),
                        NOW.date() + timedelta(days=364), "national", NOW)  # fmt: skip


async def fill(store: Store) -> None:
    """A fleet, a vehicle with a VIN and plate, a policy seed, a fleet webhook."""
    await store.create_fleet("fabcdefghijklmnop", "A", b"\x01" * 32, NOW)
    await store.add_vehicle("vaaaaaaaaaaaaaaa1", generate_private_key().public_key(), VIN)
    await store.set_plate("vaaaaaaaaaaaaaaa1", PLATE)
    await store.put_policy_seed("LSVAU2180N2183295", record(), "京B12345")
    await store.set_fleet_webhook("fabcdefghijklmnop", "https://a.example/h", SECRET, NOW)


async def test_nothing_personal_in_clear_and_everything_reads_back(db_target: Path | str) -> None:
    async with await within(Store.open(db_target)) as store:
        await within(fill(store))
        assert await within(store.vehicle_identity("vaaaaaaaaaaaaaaa1")) == (VIN, PLATE)
        assert await within(store.fleet_webhooks()) == {
            "fabcdefghijklmnop": ("https://a.example/h", SECRET)
        }
        assert (await within(store.vehicle("vaaaaaaaaaaaaaaa1"))).vin == VIN  # type: ignore[union-attr]
    raw = await raw_values(db_target)
    for clear in (VIN, PLATE, "LSVAU2180N2183295", "京B12345", SECRET, "31676"):
        assert not any(clear in v for v in raw), f"{clear!r} in clear in the store"
    assert any(v.startswith("s1:") for v in raw)  # sealed, not dropped


async def raw_values(target: Path | str) -> list[str]:
    """Every text value of the tables that hold personal data, as stored."""
    db = await connect(target)
    try:
        out: list[str] = []
        tables = (
            "SELECT vin, plate, vin_hash FROM vehicles",
            "SELECT vin, plate FROM policy_seeds",
            "SELECT secret FROM fleet_webhooks",
        )
        for sql in tables:  # fmt: skip
            for row in await db.fetch(sql, ()):
                out += [str(v) for v in row if v is not None]
        return out
    finally:
        await db.close()


async def test_a_sqlite_file_holds_no_vin_plate_or_secret_in_its_bytes(tmp_path: Path) -> None:
    db = tmp_path / "cloud" / "cloud.db"
    async with await within(Store.open(db)) as store:
        await within(fill(store))
        files = [p for p in db.parent.iterdir() if p.name.startswith("cloud.db")
                 and not p.name.endswith(".key")]  # fmt: skip
        blob = b"".join(p.read_bytes() for p in files if p.exists())  # the WAL too
        assert {p.name for p in files} >= {"cloud.db", "cloud.db-wal"}
    for clear in (VIN, PLATE, SECRET):
        assert clear.encode() not in blob, clear
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for p in files:
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


async def test_the_key_file_beside_a_sqlite_store_is_made_0600_and_needed_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    db = tmp_path / "cloud.db"
    async with await within(Store.open(db)) as store:
        await within(fill(store))
    key = Path(f"{db}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    async with await within(Store.open(db)) as store:  # the same key again: reads back
        assert await within(store.vehicle_identity("vaaaaaaaaaaaaaaa1")) == (VIN, PLATE)
    other = tmp_path / "other.key"
    other.write_text(new_key_text())
    with pytest.raises(StoreError, match="does not open with this data key"):
        async with await within(Store.open(db, other)) as store:
            await within(store.vehicle_identity("vaaaaaaaaaaaaaaa1"))


async def test_a_postgresql_store_needs_a_key_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(StoreError, match="no data key"):
        await Store.open("postgresql://nobody@127.0.0.1:1/none")


async def test_an_older_store_with_clear_values_is_sealed_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    async with await within(Store.open(db)) as store:
        await within(fill(store))
    sealer = Sealer.from_text(os.environ[KEY_ENV], KEY_ENV)
    with sqlite3.connect(db) as conn:  # as a version before sealing wrote them
        conn.execute("UPDATE vehicles SET vin = ?, plate = ?, vin_hash = NULL", (VIN, PLATE))
        conn.execute("UPDATE policy_seeds SET vin = 'LSVAU2180N2183295', plate = '京B12345'")
        conn.execute("UPDATE fleet_webhooks SET secret = ?", (SECRET,))
    async with await within(Store.open(db)) as store:
        assert await within(store.vehicle_identity("vaaaaaaaaaaaaaaa1")) == (VIN, PLATE)
        assert (await within(store.fleet_webhooks()))["fabcdefghijklmnop"][1] == SECRET
    raw = await raw_values(db)
    assert not any(c in v for v in raw for c in (VIN, PLATE, SECRET, "LSVAU2180N2183295"))
    assert sealer.lookup(VIN) in raw and sealer.lookup("LSVAU2180N2183295") in raw


async def test_one_vin_one_active_vehicle(db_target: Path | str) -> None:
    async with await within(Store.open(db_target)) as store:
        key = generate_private_key().public_key()
        await within(store.add_vehicle("vaaaaaaaaaaaaaaa1", key, VIN))
        with pytest.raises(VinHeld):
            await within(store.add_vehicle("vaaaaaaaaaaaaaaa2", key, VIN.lower()))
        await within(store.add_vehicle("vaaaaaaaaaaaaaaa1", key, VIN))  # re-keying the holder
        assert await within(store.revoke("vaaaaaaaaaaaaaaa1", NOW)) is not None
        await within(store.add_vehicle("vaaaaaaaaaaaaaaa2", key, VIN))  # released: free
        assert (await within(store.vehicle("vaaaaaaaaaaaaaaa2"))).vin == VIN  # type: ignore[union-attr]
