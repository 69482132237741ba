"""cloud.store.Store on real SQLite and real PostgreSQL: every test runs against both."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from agent.protocol.keys import PublicKey, generate_private_key, kid_for
from cloud.db import connect, schema_for
from cloud.errors import StoreError
from cloud.handler import IntentRow, VehicleState
from cloud.policy import PolicyRecord
from cloud.renewal_flow import Stage, start
from cloud.store import AlertRow, Store

from .conftest import within

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FLEET = "fabcdefghijklmnop"
CLAIM = b"c" * 32


@pytest.fixture
async def store(db_target: Path | str) -> AsyncIterator[Store]:
    """An empty store with one fleet and one unused claim of it."""
    opened = await within(Store.open(db_target))
    await within(opened.create_fleet(FLEET, "f", b"d" * 32, NOW))
    await within(opened.add_claims(FLEET, [CLAIM], NOW + timedelta(hours=1)))
    yield opened
    await within(opened.close())


@pytest.fixture
async def other(db_target: Path | str, store: Store) -> AsyncIterator[Store]:
    """A second Store on the same database, as a second worker or API process has."""
    opened = await within(Store.open(db_target))
    yield opened
    await within(opened.close())


def _key() -> PublicKey:
    return generate_private_key().public_key()


async def _enroll(
    store: Store, vid: str, serial: int = 1, claim: bytes = CLAIM, vin: str | None = None
) -> bool:
    return await within(
        store.enroll(
            claim_digest=claim,
            vid=vid,
            fleet_id=FLEET,
            key=_key(),
            vin=vin,
            serial=serial,
            not_after=NOW + timedelta(days=90),
            now=NOW,
        )
    )


async def _vehicles(store: Store, *vids: str) -> None:
    for vid in vids:
        await within(store.add_vehicle(vid, _key(), None))


def _policy(vid: str, **changes: object) -> PolicyRecord:
    base = PolicyRecord(
        vid=vid,
        insurer_code="PICC",
        insurer_name="人保",
        policy_no_masked="PDZA****1234",
        coverage_start=date(2025, 6, 1),
        coverage_end=date(2026, 5, 31),
        source="sim",
        verified_at=NOW,
    )
    return dataclasses.replace(base, **changes)


def _intent(vid: str, intent_id: str, body: bytes = b"{}", *, minutes: int = 0) -> IntentRow:
    return IntentRow(vid, intent_id, "renewal.request", body, 1, NOW + timedelta(minutes=minutes))


# ---- opening ----------------------------------------------------------------------


async def test_opening_again_keeps_what_is_stored(db_target: Path | str) -> None:
    async with await within(Store.open(db_target)) as s:
        await _vehicles(s, "vkeep0000")
    async with await within(Store.open(db_target)) as s:
        assert await within(s.count_vehicles()) == 1


async def test_an_old_store_gains_the_enrollment_columns(db_target: Path | str) -> None:
    db = await within(connect(db_target))
    old = (
        "CREATE TABLE vehicles (vid TEXT PRIMARY KEY, kid TEXT NOT NULL, "
        "public_key_pem BLOB NOT NULL, vin TEXT, "
        "registered_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))) STRICT;"
    )
    await within(db.executescript(schema_for(db.dialect, old)))
    await within(db.close())
    async with await within(Store.open(db_target)) as s:
        await within(s.add_vehicle("vold00000", _key(), None))
        vehicle = await within(s.vehicle("vold00000"))
        assert vehicle is not None and vehicle.renew_seq == 0 and vehicle.fleet_id is None
        assert set(await within(s.load_vehicles())) == {"vold00000"}
        await within(s.set_plate("vold00000", "京A12345"))
        assert await within(s.vehicle_identity("vold00000")) == (None, "京A12345")


# ---- enrollment -------------------------------------------------------------------


async def test_a_failed_enrollment_leaves_the_claim_unused(store: Store) -> None:
    await _vehicles(store, "vtaken000")
    with pytest.raises(StoreError):
        await _enroll(store, "vtaken000")  # the vehicle insert fails after the claim update
    claim = await within(store.claim(CLAIM))
    assert claim is not None and claim.used_at is None
    assert await within(store.count_vehicles()) == 1
    assert await _enroll(store, "vfresh000")
    assert not await _enroll(store, "vfresh001")  # used now
    assert await within(store.count_vehicles()) == 2
    claim = await within(store.claim(CLAIM))
    assert claim is not None and claim.used_at == NOW


async def test_one_claim_enrolls_once_through_two_stores_at_once(
    store: Store, other: Store
) -> None:
    results = await within(
        asyncio.gather(*(_enroll(s, f"vrace{k:04}") for k in range(4) for s in (store, other)))
    )
    assert sorted(results) == [False] * 7 + [True]
    assert await within(other.count_vehicles()) == 1


async def test_an_expired_claim_enrolls_nothing(store: Store) -> None:
    await within(store.add_claims(FLEET, [b"e" * 32], NOW - timedelta(seconds=1)))
    assert not await _enroll(store, "vlate0000", claim=b"e" * 32)
    assert await within(store.count_vehicles()) == 0


async def test_fleets_by_id_and_by_operator(store: Store) -> None:
    fleet = await within(store.fleet(FLEET))
    assert fleet is not None and (fleet.name, fleet.operator_digest) == ("f", b"d" * 32)
    assert await within(store.fleet_of_operator(b"d" * 32)) == fleet
    assert await within(store.fleet_of_operator(b"x" * 32)) is None
    assert await within(store.fleet("nope")) is None
    await within(store.create_fleet("f2", "g", b"g" * 32, NOW))
    assert await within(store.fleet_ids()) == sorted([FLEET, "f2"])
    with pytest.raises(StoreError):
        await within(store.create_fleet("f3", "h", b"g" * 32, NOW))  # operator digest taken


async def test_serials_past_64_bits_are_kept_exactly_and_revocation_is_once(
    store: Store,
) -> None:
    serial = 2**158 + 12345
    assert await _enroll(store, "vbig00000", serial=serial)
    assert await within(store.revoke("vbig00000", NOW)) == NOW
    assert await within(store.revoke("vbig00000", NOW + timedelta(days=1))) == NOW
    assert await within(store.revoked_serials()) == [serial]
    assert await within(store.revoke("vnothere0", NOW)) is None
    assert await within(store.load_vehicles()) == {}
    stored = await within(store.reload_vehicles(["vbig00000", "vnothere0"]))
    assert set(stored) == {"vbig00000"} and stored["vbig00000"].revoked
    vehicle = await within(store.vehicle("vbig00000"))
    assert vehicle is not None and vehicle.revoked_at == NOW and vehicle.fleet_id == FLEET


async def test_renewal_takes_a_growing_seq_and_no_revoked_vehicle(store: Store) -> None:
    assert await _enroll(store, "vren00000", serial=10)
    key = _key()
    later = NOW + timedelta(days=80)
    renew = {"vid": "vren00000", "key": key, "not_after": later + timedelta(days=90)}
    assert await within(store.renew(seq=1, serial=11, now=later, **renew))
    assert not await within(store.renew(seq=1, serial=12, now=later, **renew))
    keys = await within(store.vehicle_keys("vren00000", later))
    assert kid_for(key) in keys and len(keys) == 2  # the new key; the first certificate's
    assert set(await within(store.vehicle_keys("vren00000", NOW + timedelta(days=95)))) == {
        kid_for(key)
    }  # the first certificate expired
    await within(store.revoke("vren00000", later))
    assert not await within(store.renew(seq=2, serial=13, now=later, **renew))
    assert await within(store.revoked_serials()) == [10, 11]


async def test_certificates_can_be_recorded_again_but_not_for_another_vehicle(
    store: Store, other: Store
) -> None:
    await _vehicles(store, "vcert0000", "vcert0001")
    key = _key()
    args = (key, NOW + timedelta(days=90), NOW)
    await within(
        asyncio.gather(
            store.add_certificate("vcert0000", 77, *args),
            other.add_certificate("vcert0000", 77, *args),
        )
    )
    with pytest.raises(StoreError, match="another vehicle"):
        await within(store.add_certificate("vcert0001", 77, *args))
    assert kid_for(key) in await within(store.vehicle_keys("vcert0000", NOW))


# ---- policies -----------------------------------------------------------------------


async def test_policies_are_put_replaced_and_loaded(store: Store) -> None:
    await _vehicles(store, "vpol00000", "vpol00001")
    first = _policy(
        "vpol00000", override="renewal_pending", plate_masked="京A***45",
        next_insurer_code="CPIC", next_insurer_name="太保", next_policy_no_masked="X****9",
        next_end=date(2027, 5, 31),
    )  # fmt: skip
    await within(store.put_policy(first))
    await within(store.put_policy(_policy("vpol00001")))
    assert await within(store.load_policies("vpol00000")) == {"vpol00000": first}
    replaced = _policy("vpol00000", insurer_code="CPIC")
    await within(store.put_policy(replaced))
    assert await within(store.load_policies()) == {
        "vpol00000": replaced,
        "vpol00001": _policy("vpol00001"),
    }


async def test_a_seeded_policy_is_adopted_with_its_plate(store: Store) -> None:
    vin = "LSVAU2180N2183294"
    await within(
        store.put_policy_seed(vin, _policy("ignored", plate_masked="京A***45"), "京A12345")
    )
    assert await _enroll(store, "vseed0000", vin=vin)
    await within(store.put_policy(_policy("vseed0000", next_end=date(2027, 5, 31))))
    adopted = await within(store.adopt_policy_seed("vseed0000"))
    assert adopted == _policy("vseed0000", plate_masked="京A***45")  # the next term is gone
    assert await within(store.vehicle_identity("vseed0000")) == (vin, "京A12345")
    assert await within(store.adopt_policy_seed("vnoseed00")) is None


# ---- counters and intents -----------------------------------------------------------


async def test_counters_are_written_by_compare_and_set(store: Store, other: Store) -> None:
    await _vehicles(store, "vcas00000", "vcas00001")
    mine = VehicleState(kid="k", key=_key(), last_seq=5, down_seq=2, version=1, content_key="c")
    theirs = VehicleState(kid="k", key=_key(), last_seq=6, down_seq=2, version=1, content_key="c")
    saved = await within(store.save_counters([mine.row("vcas00000")]))
    assert saved.conflicts == frozenset() and saved.new_intents == 0
    # The other store read the same base (nothing stored): its write must not land.
    saved = await within(
        other.save_counters([theirs.row("vcas00000")], [_intent("vcas00000", "i-lost")])
    )
    assert saved.conflicts == {"vcas00000"} and saved.new_intents == 0
    assert await within(other.intents("vcas00000")) == []  # a conflict's intents wait too
    mine.last_seq, mine.last_seen = 7, NOW
    row = mine.row("vcas00000")
    assert row[6:] == (5, 2)  # conditional on the first write
    both = [row, VehicleState(kid="k", key=_key(), last_seq=1).row("vcas00001")]
    saved = await within(store.save_counters(both))
    assert saved.conflicts == frozenset()
    loaded = await within(other.load_vehicles())
    assert (loaded["vcas00000"].last_seq, loaded["vcas00000"].last_seen) == (7, NOW)
    assert loaded["vcas00000"].stored == (7, 2) and loaded["vcas00001"].last_seq == 1
    reloaded = await within(other.reload_vehicles(["vcas00000", "vcas00000", "vnothere0"]))
    assert set(reloaded) == {"vcas00000"}
    r = reloaded["vcas00000"]
    assert (r.last_seq, r.down_seq, r.version, r.content_key, r.revoked) == (7, 2, 1, "c", False)
    assert await within(other.reload_vehicles([])) == {}


async def test_a_write_built_on_an_unstored_one_never_becomes_the_first(store: Store) -> None:
    """A worker's second batch, built on a first not yet stored (pipelined commits on
    pooled connections can land out of order), must not land as the vehicle's first row:
    the first would then be refused, and its replies dropped though a later one landed."""
    await _vehicles(store, "vcasfirst")
    car = VehicleState(kid="k", key=_key(), last_seq=1000, down_seq=1)
    first = car.row("vcasfirst")
    car.down_seq = 10
    second = car.row("vcasfirst")
    assert first[6:] == (0, 0) and second[6:] == (1000, 1)
    assert (await within(store.save_counters([second]))).conflicts == {"vcasfirst"}
    nothing = (await within(store.reload_vehicles(["vcasfirst"])))["vcasfirst"]
    assert (nothing.last_seq, nothing.down_seq) == (0, 0)
    assert (await within(store.save_counters([first]))).conflicts == frozenset()
    assert (await within(store.save_counters([second]))).conflicts == frozenset()
    got = (await within(store.reload_vehicles(["vcasfirst"])))["vcasfirst"]
    assert (got.last_seq, got.down_seq) == (1000, 10)


async def test_concurrent_saves_of_one_store_all_land(store: Store) -> None:
    vids = [f"vmany{k:04}" for k in range(40)]
    await _vehicles(store, *vids)
    states = {vid: VehicleState(kid="k", key=_key()) for vid in vids}

    async def save(vid: str, seq: int) -> frozenset[str]:
        states[vid].last_seq = seq
        return (await store.save_counters([states[vid].row(vid)])).conflicts

    # Many at once also on SQLite's one connection: statements of concurrent calls
    # interleave there (a cursor freed on the wrong thread once broke this).
    for seq in range(1, 25):
        results = await within(asyncio.gather(*(save(vid, seq) for vid in vids)))
        assert all(c == frozenset() for c in results)
    loaded = await within(store.load_vehicles())
    assert {v.last_seq for v in loaded.values()} == {24}


async def test_the_first_copy_of_an_intent_stays(store: Store) -> None:
    await _vehicles(store, "vint00000")
    first = [_intent("vint00000", "a", b"first"), _intent("vint00000", "b", minutes=1)]
    saved = await within(store.save_counters([], first))
    assert saved.new_intents == 2
    again = [_intent("vint00000", "a", b"second", minutes=2), _intent("vint00000", "c", minutes=3)]
    assert (await within(store.save_counters([], again))).new_intents == 1
    stored = await within(store.intents("vint00000"))
    assert [(i.intent_id, i.body) for i in stored] == [("a", b"first"), ("b", b"{}"), ("c", b"{}")]
    assert stored[0] == first[0] and type(stored[0].body) is bytes
    assert [i.intent_id for i in await within(store.intents())] == ["a", "b", "c"]


async def test_intents_are_claimed_once_and_marked_processed(store: Store, other: Store) -> None:
    await _vehicles(store, "vclm00000")
    intents = [_intent("vclm00000", f"i{k:02}", minutes=k) for k in range(20)]
    intents.append(dataclasses.replace(_intent("vclm00000", "event"), type="vehicle.event"))
    await within(store.save_counters([], intents))
    lease = timedelta(minutes=5)
    a, b = await within(
        asyncio.gather(
            store.claim_intents("renewal.request", "one", NOW, lease),
            other.claim_intents("renewal.request", "two", NOW, lease),
        )
    )
    assert sorted(i.intent_id for i in a + b) == [f"i{k:02}" for k in range(20)]  # each once
    assert not {i.intent_id for i in a} & {i.intent_id for i in b}
    holder, taken = ("one", a) if a else ("two", b)
    assert [i.received_at for i in taken] == sorted(i.received_at for i in taken)
    # Within the lease only the holder gets them again; past it, anyone.
    soon = NOW + timedelta(minutes=1)
    assert await within(store.claim_intents("renewal.request", "three", soon, lease)) == []
    assert len(await within(store.claim_intents("renewal.request", holder, soon, lease))) == len(
        taken
    )
    await within(store.mark_processed("vclm00000", "i00", soon))
    pending = await within(other.unprocessed_intents("renewal.request"))
    assert [i.intent_id for i in pending] == [f"i{k:02}" for k in range(1, 20)]
    late = await within(store.claim_intents("renewal.request", "three", NOW + lease * 3, lease))
    assert len(late) == 19


async def test_fleet_vehicle_events_since(store: Store) -> None:
    assert await _enroll(store, "vevt00000")
    await _vehicles(store, "voutsider")
    event = "vehicle.event"
    rows = [
        dataclasses.replace(_intent("vevt00000", "e1", minutes=1), type=event),
        dataclasses.replace(_intent("vevt00000", "e2", minutes=2), type=event),
        _intent("vevt00000", "r1", minutes=3),
        dataclasses.replace(_intent("voutsider", "e3", minutes=4), type=event),
    ]
    await within(store.save_counters([], rows))
    assert [i.intent_id for i in await within(store.fleet_vehicle_events(FLEET))] == ["e1", "e2"]
    since = NOW + timedelta(minutes=1)
    assert [i.intent_id for i in await within(store.fleet_vehicle_events(FLEET, since))] == ["e2"]
    seen = VehicleState(kid="k", key=_key(), last_seq=1, last_seen=NOW)
    await within(store.save_counters([seen.row("vevt00000")]))
    assert await within(store.fleet_vehicles(FLEET)) == [("vevt00000", None, NOW)]


# ---- renewals and alerts ------------------------------------------------------------


async def test_flows_are_saved_with_their_policy_and_found(store: Store) -> None:
    await _vehicles(store, "vflow0000")
    flow = start("r_1", "vflow0000", "i1", date(2026, 5, 31))
    await within(store.save_flow(flow, NOW))
    later = dataclasses.replace(flow, stage=Stage.AWAITING_PAYMENT, order_id="o-1")
    issued = _policy("vflow0000", next_end=date(2027, 5, 31))
    await within(store.save_flow(later, NOW + timedelta(minutes=1), issued))
    other_flow = start("r_2", "vflow0000", "i2", None)
    await within(store.save_flow(other_flow, NOW + timedelta(minutes=2)))
    assert await within(store.flows("id", ("r_1",))) == [later]
    assert await within(store.flows("order", ("o-1",))) == [later]
    assert await within(store.flows("vid", ("vflow0000",))) == [other_flow, later]
    assert await within(store.flows("stage", (Stage.QUOTING.value,))) == [other_flow]
    assert await within(store.load_policies("vflow0000")) == {"vflow0000": issued}


async def test_alerts_are_added_once_and_delivered(store: Store) -> None:
    await _vehicles(store, "valrt0000")

    def alert(alert_id: str, minutes: int) -> AlertRow:
        return AlertRow(
            alert_id, FLEET, "valrt0000", "lapsing", NOW + timedelta(minutes=minutes), "{}"
        )

    assert await within(store.add_alerts([alert("a1", 0), alert("a2", 1)])) == ["a1", "a2"]
    assert await within(store.add_alerts([alert("a1", 5), alert("a3", 2)])) == ["a3"]
    assert [a.alert_id for a in await within(store.fleet_alerts(FLEET))] == ["a3", "a2", "a1"]
    assert [a.alert_id for a in await within(store.fleet_alerts(FLEET, limit=1))] == ["a3"]
    assert [a.alert_id for a in await within(store.due_alerts(NOW))] == ["a1", "a2", "a3"]
    retry = NOW + timedelta(minutes=10)
    await within(store.alert_attempted("a1", attempts=1, delivered_at=None, next_attempt_at=retry))
    await within(store.alert_attempted("a2", attempts=1, delivered_at=NOW, next_attempt_at=None))
    await within(
        store.alert_attempted(
            "a3", attempts=9, delivered_at=None, next_attempt_at=None, gave_up=True
        )
    )
    assert await within(store.due_alerts(NOW)) == []
    [due] = await within(store.due_alerts(retry))
    assert (due.alert_id, due.attempts, due.next_attempt_at) == ("a1", 1, retry)
    # A delivered alert stays delivered.
    await within(store.alert_attempted("a2", attempts=2, delivered_at=None, next_attempt_at=retry))
    a2 = next(a for a in await within(store.fleet_alerts(FLEET)) if a.alert_id == "a2")
    assert (a2.attempts, a2.delivered_at, a2.gave_up) == (1, NOW, False)
    a3 = next(a for a in await within(store.fleet_alerts(FLEET)) if a.alert_id == "a3")
    assert a3.gave_up is True


async def test_each_due_alert_is_claimed_by_one_of_two_stores(store: Store, other: Store) -> None:
    await _vehicles(store, "valrt0001")
    alerts = [
        AlertRow(f"c{n:02d}", FLEET, "valrt0001", "lapsing", NOW + timedelta(seconds=n), "{}")
        for n in range(20)
    ]
    await within(store.add_alerts(alerts))
    lease = timedelta(minutes=2)
    mine, theirs = await within(
        asyncio.gather(
            store.claim_due_alerts(NOW, lease, limit=15), other.claim_due_alerts(NOW, lease, 15)
        )
    )
    got = [a.alert_id for a in mine] + [a.alert_id for a in theirs]
    assert len(got) == len(set(got)) >= 15, "no alert claimed twice"
    assert [a.alert_id for a in mine] == sorted(a.alert_id for a in mine)  # oldest first
    # What neither took (a claimer that lost the race takes fewer) is still due, once.
    rest = await within(store.claim_due_alerts(NOW, lease, limit=50))
    assert sorted(got + [a.alert_id for a in rest]) == [a.alert_id for a in alerts]
    assert await within(store.claim_due_alerts(NOW + lease / 2, lease)) == []
    # A claimer that died: its alerts are due again once the lease is over.
    again = await within(other.claim_due_alerts(NOW + lease, lease, limit=50))
    assert len(again) == 20 and all(a.attempts == 0 for a in again)


async def test_a_fleets_policies_are_its_vehicles_only(store: Store) -> None:
    assert await _enroll(store, "vfleet001")
    await _vehicles(store, "vloner001")  # registered outside any fleet
    for vid in ("vfleet001", "vloner001"):
        await within(store.put_policy(_policy(vid)))
    assert await within(store.fleet_policies(FLEET)) == {"vfleet001": _policy("vfleet001")}
    assert await within(store.fleet_policies("fzzzzzzzzzzzzzzzz")) == {}
    assert set(await within(store.load_policies())) == {"vfleet001", "vloner001"}


async def test_a_fleets_webhook_is_set_replaced_and_removed(store: Store) -> None:
    assert await within(store.fleet_webhooks()) == {}
    await within(store.set_fleet_webhook(FLEET, "https://a.example/h", "s" * 16, NOW))
    await within(store.set_fleet_webhook(FLEET, "https://b.example/h", "t" * 16, NOW))
    assert await within(store.fleet_webhooks()) == {FLEET: ("https://b.example/h", "t" * 16)}
    assert await within(store.delete_fleet_webhook(FLEET)) is True
    assert await within(store.delete_fleet_webhook(FLEET)) is False
    assert await within(store.fleet_webhooks()) == {}
    with pytest.raises(StoreError):  # only a fleet that exists
        await within(store.set_fleet_webhook("fzzzzzzzzzzzzzzzz", "https://c/h", "u" * 16, NOW))
