"""What a policy.state carries for the e-policy card and the VIN check."""

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from agent.protocol import messages
from agent.protocol.vin import VinError, check_vin, mask_vin, vin_digest
from cloud.handler import VehicleState
from cloud.policy import mask_plate
from cloud.store import Store

from .test_handler import CAR_KEY, NOW, VID, make_handler, policy, request

VIN = "LSGCAR00000000007"


@pytest.mark.parametrize(
    ("plate", "masked"),
    [("沪A12345", "沪A·****5"), ("沪A·12345", "沪A·****5"), (" 京B D1234F ", "京B·****F"),
     ("粤Z", "粤·****")],
)  # fmt: skip
def test_plates_are_masked_to_province_letter_and_last(plate: str, masked: str) -> None:
    assert mask_plate(plate) == masked


def test_vin_checks_digest_and_mask() -> None:
    assert check_vin(f" {VIN.lower()}\x00") == VIN
    for bad in ("LSGCAR0000000000I", "SHORT", "LSGCAR000000000077"):
        with pytest.raises(VinError):
            check_vin(bad)
    digest = vin_digest(VID, VIN)
    assert len(digest) == 64 and digest != vin_digest("vbbbbbbbbbbbbbbb2", VIN)
    assert mask_vin(VIN) == "*************0007"


def test_a_state_carries_the_masked_plate_claims_phone_and_vin_digest() -> None:
    h = make_handler(**{VID: policy(plate_masked="沪A·****5")})
    h.vehicles[VID] = VehicleState(
        kid=h.vehicles[VID].kid, key=CAR_KEY.public_key(), vin_digest=vin_digest(VID, VIN)
    )
    reply = h.handle(*request(1), NOW)
    assert reply is not None and isinstance(reply.body, messages.PolicyState)
    body = reply.body
    assert (body.plate_masked, body.claims_phone) == ("沪A·****5", "95518")  # PICC
    assert body.vin_digest == vin_digest(VID, VIN)
    assert VIN.encode() not in messages.encode(body)


async def test_an_older_store_gains_the_plate_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    async with await Store.open(db) as store:
        await store.add_vehicle(VID, CAR_KEY.public_key(), VIN)
        await store.put_policy(policy())
    with closing(sqlite3.connect(db)) as conn:  # as a store from before the column
        conn.execute("ALTER TABLE policies DROP COLUMN plate_masked")
        conn.execute("ALTER TABLE policy_seeds DROP COLUMN plate_masked")
        conn.commit()
    async with await Store.open(db) as store:
        assert (await store.load_policies())[VID].plate_masked is None
        await store.put_policy(policy(plate_masked="沪A·****5"))
        assert (await store.load_policies())[VID].plate_masked == "沪A·****5"
        assert (await store.load_vehicles())[VID].vin_digest == vin_digest(VID, VIN)


def test_a_bought_next_term_keeps_cover_continuous_and_takes_over_at_24_00() -> None:
    from datetime import date, datetime, timedelta, timezone

    from cloud.policy import content_of, status_of

    china = timezone(timedelta(hours=8))
    record = policy(end=date(2026, 12, 31))
    renewed = replace(
        record, next_insurer_code="PINGAN", next_insurer_name="平安产险",
        next_policy_no_masked="PDAA****0001", next_end=date(2027, 12, 31),
    )  # fmt: skip
    before = datetime(2026, 12, 31, 23, 59, tzinfo=china)
    after = datetime(2027, 1, 1, 0, 0, tzinfo=china)
    assert status_of(record, before, 30) == "expiring"
    assert status_of(renewed, before, 30) == "renewal_pending"
    shown = content_of(renewed, before, 30)
    assert (shown.insurer_code, shown.coverage_end, shown.next_coverage_end) == (
        "PICC", date(2026, 12, 31), date(2027, 12, 31),
    )  # fmt: skip
    rolled = content_of(renewed, after, 30)
    assert (rolled.status, rolled.insurer_code, rolled.coverage_start, rolled.coverage_end) == (
        "active", "PINGAN", date(2027, 1, 1), date(2027, 12, 31),
    )  # fmt: skip
    assert rolled.next_coverage_end is None and status_of(record, after, 30) == "lapsed"


def test_a_state_carries_the_insurers_registered_address_when_known() -> None:
    h = make_handler(**{VID: policy()})
    reply = h.handle(*request(1), NOW)
    assert reply is not None and isinstance(reply.body, messages.PolicyState)
    assert reply.body.insurer_address == "北京市朝阳区建国门外大街2号院2号楼"  # PICC
    h.policies[VID] = policy(insurer_code="NOBODY")
    reply = h.handle(*request(2), NOW)
    assert reply is not None and isinstance(reply.body, messages.PolicyState)
    assert (reply.body.insurer_address, reply.body.claims_phone) == (None, None)  # never a guess
    assert b"insurer_address" not in messages.encode(reply.body)
