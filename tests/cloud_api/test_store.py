"""The store's enrollment tables on real SQLite: one transaction each, and old stores upgraded."""

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.protocol.keys import generate_private_key
from cloud.errors import StoreError
from cloud.store import Store

from .conftest import Api, within

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FLEET = "fabcdefghijklmnop"


async def _store_with_claim(path: Path) -> Store:
    store = await within(Store.open(path))
    await within(store.create_fleet(FLEET, "f", b"d" * 32, NOW))
    await within(store.add_claims(FLEET, [b"c" * 32], NOW + timedelta(hours=1)))
    return store


async def _enroll(store: Store, vid: str, serial: int = 1) -> bool:
    return await within(
        store.enroll(
            claim_digest=b"c" * 32,
            vid=vid,
            fleet_id=FLEET,
            key=generate_private_key().public_key(),
            vin=None,
            serial=serial,
            not_after=NOW + timedelta(days=90),
            now=NOW,
        )
    )


async def test_a_failed_enrollment_leaves_the_claim_unused(tmp_path: Path) -> None:
    store = await _store_with_claim(tmp_path / "c.db")
    async with store:
        await within(store.add_vehicle("vtaken000", generate_private_key().public_key(), None))
        with pytest.raises(StoreError):
            await _enroll(store, "vtaken000")  # the vehicle insert fails after the claim update
        claim = await within(store.claim(b"c" * 32))
        assert claim is not None and claim.used_at is None
        assert await within(store.count_vehicles()) == 1
        assert await _enroll(store, "vfresh000")
        assert not await _enroll(store, "vfresh001")  # used now
        assert await within(store.count_vehicles()) == 2


async def test_serials_past_64_bits_are_kept_exactly(tmp_path: Path) -> None:
    store = await _store_with_claim(tmp_path / "s.db")
    async with store:
        serial = 2**158 + 12345
        assert await _enroll(store, "vbig00000", serial=serial)
        assert await within(store.revoke("vbig00000", NOW)) == NOW
        assert await within(store.revoked_serials()) == [serial]
        assert await within(store.revoke("vnothere0", NOW)) is None


async def test_an_old_store_gains_the_enrollment_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE vehicles (vid TEXT PRIMARY KEY, kid TEXT NOT NULL, "
        "public_key_pem BLOB NOT NULL, vin TEXT, "
        "registered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))) STRICT;"
    )
    db.close()
    async with await within(Store.open(path)) as store:
        await within(store.add_vehicle("vold00000", generate_private_key().public_key(), None))
        vehicle = await within(store.vehicle("vold00000"))
        assert vehicle is not None and vehicle.renew_seq == 0 and vehicle.fleet_id is None
        assert set(await within(store.load_vehicles())) == {"vold00000"}


async def test_concurrent_enrollments_with_one_claim_enroll_once(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    answers = await within(
        asyncio.gather(*(api.enroll(claim, generate_private_key()) for _ in range(5)))
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409, 409]
    assert await api.vehicles() == 1
    assert len(api.events.registered) == 1
