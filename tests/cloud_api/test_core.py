"""The pure core: tokens, claim and CSR checks, renewal bodies, key sets (no server)."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from agent.protocol.envelope import Signer
from agent.protocol.errors import ProtocolError
from agent.protocol.keys import generate_private_key
from cloud import enrollment as en
from cloud.errors import Refused
from cloud.keyset import build_keyset, open_keyset

from .conftest import cn, csr_pem

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_tokens_are_prefixed_random_and_stored_as_digests() -> None:
    a, b = en.new_token(en.CLAIM_PREFIX), en.new_token(en.CLAIM_PREFIX)
    assert a != b and a.startswith("cl_") and len(a) == 46
    assert len(en.token_digest(a)) == 32
    assert en.digests_match(en.token_digest(a), en.token_digest(a))
    assert not en.digests_match(en.token_digest(a), en.token_digest(b))


def test_ids_are_opaque_and_well_formed() -> None:
    assert en.FLEET_ID_RE.fullmatch(en.new_fleet_id())
    vid = en.assign_vid()
    assert en.check_vid(vid) == vid and len(vid) == 17


FLEET = "fabcdefghijklmnop"
FRESH = en.ClaimRow(FLEET, NOW + timedelta(seconds=1), None)


@pytest.mark.parametrize(
    ("claim", "fleet_id", "code"),
    [
        (None, None, "claim_unknown"),
        (en.ClaimRow(FLEET, NOW + timedelta(days=1), NOW), None, "claim_used"),
        (en.ClaimRow(FLEET, NOW, None), None, "claim_expired"),
        (en.ClaimRow(FLEET, NOW, NOW), None, "claim_used"),  # used is told before expired
        (FRESH, "fqqqqqqqqqqqqqqqq", "claim_wrong_fleet"),
        (en.ClaimRow(FLEET, NOW, None), "fqqqqqqqqqqqqqqqq", "claim_expired"),
    ],
)
def test_claim_checks_in_contract_order(
    claim: en.ClaimRow | None, fleet_id: str | None, code: str
) -> None:
    with pytest.raises(Refused) as info:
        en.check_claim(claim, NOW, fleet_id)
    assert info.value.code == code


def test_a_fresh_claim_passes_with_or_without_its_fleet() -> None:
    assert en.check_claim(FRESH, NOW, None) is FRESH
    assert en.check_claim(FRESH, NOW, FLEET) is FRESH


def test_a_good_csr_yields_its_key() -> None:
    key = generate_private_key()
    assert en.check_csr(csr_pem(key)) == key.public_key()


@pytest.mark.parametrize(
    ("pem", "code"),
    [
        ("", "csr_invalid"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "csr_invalid"),
        ("\udcff", "csr_invalid"),
        (csr_pem(generate_private_key(), cn("x")), "csr_subject_not_allowed"),
    ],
)
def test_csr_refusals(pem: str, code: str) -> None:
    with pytest.raises(Refused) as info:
        en.check_csr(pem)
    assert (info.value.status, info.value.code) == (422, code)


@pytest.mark.parametrize("vin", [None, "LSGCAR00000000001", "1HGCM82633A004352"])
def test_good_vins(vin: str | None) -> None:
    assert en.check_vin(vin) == vin


@pytest.mark.parametrize("vin", ["", "LSGCAR0000000000O", "LSGCAR0000000000Q", "LSGCAR 0000000001"])
def test_bad_vins(vin: str) -> None:
    with pytest.raises(Refused, match="VIN alphabet"):
        en.check_vin(vin)


VEHICLE = en.VehicleRow("vaaaaaaaaaaaaaaaa", FLEET, None, 3)


def _body(**over: object) -> bytes:
    body: dict[str, object] = {
        "type": "cert.renewal",
        "vid": VEHICLE.vid,
        "seq": 4,
        "csr_pem": "x",
    }
    return json.dumps({**body, **over}).encode()


@pytest.mark.parametrize(
    ("body", "vehicle", "code"),
    [
        (_body(), en.VehicleRow(VEHICLE.vid, FLEET, NOW, 0), "revoked"),
        (_body(seq=3), VEHICLE, "replay"),
        (_body(seq=4.0), VEHICLE, "bad_body"),
        (_body(seq="4"), VEHICLE, "bad_body"),
        (_body(type="status.request"), VEHICLE, "bad_body"),
        (_body(extra=1), VEHICLE, "bad_body"),
        (_body(vid="vbbbbbbbbbbbbbbbb"), VEHICLE, "vid_mismatch"),
        (b"[", VEHICLE, "bad_body"),
    ],
)
def test_renewal_body_refusals(body: bytes, vehicle: en.VehicleRow, code: str) -> None:
    with pytest.raises(Refused) as info:
        en.check_renewal(body, vehicle)
    assert info.value.code == code


def test_a_renewal_body_with_a_higher_seq_passes() -> None:
    assert en.check_renewal(_body(), VEHICLE).seq == 4


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"nope", "bad_body"),
        (b"[1]", "bad_body"),
        (b'{"vid": 1}', "bad_body"),
        (b'{"vid": "VIN"}', "vid_invalid"),
    ],
)
def test_the_claimed_vid_of_an_unverified_body(body: bytes, code: str) -> None:
    with pytest.raises(Refused) as info:
        en.claimed_vid(body)
    assert info.value.code == code


def test_request_models_are_strict() -> None:
    with pytest.raises(ValidationError):
        en.ClaimsCreate.model_validate({"count": 1.0, "expires_in_s": 60})
    with pytest.raises(ValidationError):
        en.EnrollRequest.model_validate({"claim_token": "x", "csr_pem": "y", "vid": "v"})


def test_a_key_set_round_trips_and_is_bound_to_its_root() -> None:
    root, signing, other = generate_private_key(), generate_private_key(), generate_private_key()
    cut = NOW + timedelta(days=7)
    sealed = build_keyset(
        Signer(root),
        [(signing.public_key(), None), (other.public_key(), cut)],
        version=3,
        issued_at=NOW,
    ).encode()
    body = open_keyset(sealed, root.public_key())
    assert (body.version, body.issued_at, body.keys[1].not_after) == (3, NOW, cut)
    with pytest.raises(ProtocolError):
        open_keyset(sealed, signing.public_key())
    forged = build_keyset(Signer(signing), [(signing.public_key(), None)], version=9, issued_at=NOW)
    with pytest.raises(ProtocolError):
        open_keyset(forged.encode(), root.public_key())
    # Signed for another topic, it is not a key set.
    data = json.loads(sealed)["body"]
    moved = Signer(root).seal("ctpl/v1/vaaaaaaaaaaaaaaaa/renew", data.encode())
    with pytest.raises(ProtocolError):
        open_keyset(moved, root.public_key())
