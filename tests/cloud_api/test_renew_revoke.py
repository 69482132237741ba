"""POST /v1/renew and POST /v1/vehicles/{vid}/revoke."""

import json
from typing import Any

from cryptography import x509

from agent.protocol.envelope import Signer
from agent.protocol.keys import PrivateKey, generate_private_key, kid_for

from .conftest import ADMIN_TOKEN, Api, csr_pem, p384_key, within


def renewal(key: PrivateKey, vid: str, seq: int, csr: str, *, topic_vid: str | None = None) -> str:
    """A renewal envelope (text) signed by ``key``."""
    body = {"type": "cert.renewal", "vid": vid, "seq": seq, "csr_pem": csr}
    data = json.dumps(body, separators=(",", ":")).encode()
    return Signer(key).seal(f"ctpl/v1/{topic_vid or vid}/renew", data).decode()


async def renew(api: Api, envelope: Any) -> Any:
    r = await api.client.post("/v1/renew", json={"envelope": envelope})
    return r.status_code, r.json()


async def test_renewal_issues_a_new_certificate_and_registers_the_new_key(api: Api) -> None:
    vid, old = await api.enrolled()
    new = generate_private_key()
    status, got = await renew(api, renewal(old, vid, 1, csr_pem(new)))
    assert status == 200, got
    assert got["vid"] == vid
    cert = x509.load_pem_x509_certificate(got["certificate_pem"].encode())
    assert cert.public_key() == new.public_key()
    assert cert.subject.rfc4514_string() == f"CN={vid}"
    assert api.events.registered[-1] == (vid, new.public_key())
    keys = await within(api.store.vehicle_keys(vid, api.clock.now()))
    # Both certificates are valid, so both keys may still sign a renewal.
    assert set(keys) == {kid_for(old.public_key()), kid_for(new.public_key())}
    # The envelope may also come as a JSON object.
    status, got = await renew(api, json.loads(renewal(new, vid, 2, csr_pem(new))))
    assert status == 200, got


async def test_a_renewal_replay_is_refused(api: Api) -> None:
    vid, key = await api.enrolled()
    sealed = renewal(key, vid, 5, csr_pem(generate_private_key()))
    assert (await renew(api, sealed))[0] == 200
    before = api.events.registered[:]
    for again in (sealed, renewal(key, vid, 5, csr_pem(key)), renewal(key, vid, 4, csr_pem(key))):
        status, got = await renew(api, again)
        assert (status, got["error"]["code"]) == (409, "replay")
    assert api.events.registered == before
    assert (await renew(api, renewal(key, vid, 6, csr_pem(key))))[0] == 200


async def test_a_revoked_vehicle_cannot_renew(api: Api) -> None:
    vid, key = await api.enrolled()
    r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(ADMIN_TOKEN))
    assert r.status_code == 200
    status, got = await renew(api, renewal(key, vid, 1, csr_pem(generate_private_key())))
    assert (status, got["error"]["code"]) == (403, "revoked")


async def test_a_renewal_signed_by_another_key_or_for_another_topic_is_refused(api: Api) -> None:
    vid, key = await api.enrolled()
    other_vid, other = await api.enrolled()
    cases = [
        (renewal(other, vid, 1, csr_pem(other)), 401, "unknown_key"),
        (renewal(key, vid, 1, csr_pem(key), topic_vid=other_vid), 401, "bad_signature"),
        (renewal(key, "vnosuchvehicle00", 1, csr_pem(key)), 404, "vehicle_unknown"),
        (renewal(key, "VIN123", 1, csr_pem(key)), 422, "vid_invalid"),
        ("{}", 422, "bad_envelope"),
        ({"v": 1}, 422, "bad_envelope"),
        (renewal(key, vid, 1, csr_pem(p384_key())), 422, "csr_key_type"),
        (renewal(key, vid, 0, csr_pem(key)), 422, "bad_body"),
    ]
    for envelope, want_status, code in cases:
        status, got = await renew(api, envelope)
        assert (status, got["error"]["code"]) == (want_status, code), (code, got)
    assert len(api.events.registered) == 2  # the two enrollments only


async def test_a_renewal_body_is_strict(api: Api) -> None:
    vid, key = await api.enrolled()
    body = {"type": "cert.renewal", "vid": vid, "seq": 1, "csr_pem": csr_pem(key), "x": 1}
    sealed = Signer(key).seal(f"ctpl/v1/{vid}/renew", json.dumps(body).encode()).decode()
    status, got = await renew(api, sealed)
    assert (status, got["error"]["code"]) == (422, "bad_body")


async def test_operator_revokes_its_own_vehicle_not_another_fleets(api: Api) -> None:
    fleet_a = await api.fleet("a")
    fleet_b = await api.fleet("b")
    vid_a, _ = await api.enrolled(fleet_a)
    vid_b, _ = await api.enrolled(fleet_b)
    r = await api.client.post(f"/v1/vehicles/{vid_b}/revoke", json={}, headers=api.auth(fleet_a[1]))
    assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")
    assert (await within(api.store.vehicle(vid_b))).revoked_at is None  # type: ignore[union-attr]
    assert api.events.revoked == []

    r = await api.client.post(f"/v1/vehicles/{vid_a}/revoke", json={}, headers=api.auth(fleet_a[1]))
    assert r.status_code == 200, r.text
    assert r.json()["vid"] == vid_a and r.json()["revoked_at"]
    r = await api.client.post(f"/v1/vehicles/{vid_b}/revoke", headers=api.auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    assert api.events.revoked == [vid_a, vid_b]


async def test_revocation_lists_every_certificate_serial_of_the_vehicle(api: Api) -> None:
    fleet = await api.fleet()
    vid, key = await api.enrolled(fleet)
    kept, _ = await api.enrolled(fleet)
    status, got = await renew(api, renewal(key, vid, 1, csr_pem(generate_private_key())))
    assert status == 200
    assert await within(api.store.revoked_serials()) == []
    r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(fleet[1]))
    assert r.status_code == 200
    serials = await within(api.store.revoked_serials())
    renewed = x509.load_pem_x509_certificate(got["certificate_pem"].encode()).serial_number
    assert len(serials) == 2 and renewed in serials
    # Idempotent: the first time stays, the hook runs again (a retry finishes the job).
    r2 = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(fleet[1]))
    assert r2.status_code == 200 and r2.json()["revoked_at"] == r.json()["revoked_at"]
    assert api.events.revoked == [vid, vid]
    assert await within(api.store.revoked_serials()) == serials
    assert (await within(api.store.vehicle(kept))).revoked_at is None  # type: ignore[union-attr]
    assert set(await within(api.store.load_vehicles())) == {kept}


async def test_a_failed_revocation_hook_is_reported_and_can_be_retried(api: Api) -> None:
    vid, _ = await api.enrolled()
    api.events.fail_revoke = True
    r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(ADMIN_TOKEN))
    assert (r.status_code, r.json()["error"]["code"]) == (500, "revocation_incomplete")
    assert (await within(api.store.vehicle(vid))).revoked_at is not None  # type: ignore[union-attr]
    api.events.fail_revoke = False
    r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(ADMIN_TOKEN))
    assert r.status_code == 200
    assert api.events.revoked == [vid]


HOSTILE_VIDS = [
    ("vnosuchvehicle00", 404, "vehicle_unknown"),
    ("#", 404, "not_found"),
    ("%23", 422, "vid_invalid"),
    ("%2B", 422, "vid_invalid"),
    ("+", 422, "vid_invalid"),
    ("..", 404, "not_found"),
    ("a/b", 404, "not_found"),
    ("a%2Fb", 404, "not_found"),
    ("", 404, "not_found"),
    ("v" * 3000, 422, "vid_invalid"),
    ("%00", 422, "vid_invalid"),
    ("%C3%A9", 422, "vid_invalid"),
    ("ctpl-cloud", 422, "vid_invalid"),
    ("LSGCAR00000000001", 422, "vid_invalid"),
]


async def test_hostile_vids_in_the_path(api: Api) -> None:
    for vid, status, code in HOSTILE_VIDS:
        r = await api.client.post(
            f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(ADMIN_TOKEN)
        )
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), vid[:20]
    assert api.events.revoked == []
    # An operator meets 403 for all of them: it learns nothing of other fleets' vehicles.
    _, token = await api.fleet()
    for vid, _, code in HOSTILE_VIDS:
        r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=api.auth(token))
        want = (404, "not_found") if code == "not_found" else (403, "forbidden")
        assert (r.status_code, r.json()["error"]["code"]) == want, vid[:20]


async def test_revoking_needs_a_token(api: Api) -> None:
    vid, _ = await api.enrolled()
    for headers in ({}, api.auth("op_forged"), api.auth("cl_x")):
        r = await api.client.post(f"/v1/vehicles/{vid}/revoke", json={}, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
    r = await api.client.post(
        f"/v1/vehicles/{vid}/revoke", json={"x": 1}, headers=api.auth(ADMIN_TOKEN)
    )
    assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request")
    assert api.events.revoked == []
