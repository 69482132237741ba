"""A VIN belongs to one fleet (issue 13, finding 2).

The VIN is printed on the windscreen: fleet B minted a claim and enrolled a gateway with
fleet A's car's VIN, then saw that car's policy, got its alerts and could renew it. Now a
VIN held by an active vehicle is refused to any other enrollment (409 ``vin_held``), which
says nothing of the car or its fleet, stores nothing and leaves the claim unused; the
owning fleet releases the car by revoking its gateway, and only then may it move.
"""

from agent.protocol.keys import generate_private_key

from .conftest import Api, within

VIN = "LSGCAR00000000777"


async def test_another_fleet_cannot_enroll_a_vin_held_by_an_active_vehicle(api: Api) -> None:
    fleet_a, fleet_b = await api.fleet("a"), await api.fleet("b")
    [claim_a] = await api.claims(*fleet_a)
    r = await api.enroll(claim_a, generate_private_key(), vin=VIN)
    assert r.status_code == 201, r.text
    vid_a = r.json()["vid"]

    [claim_b] = await api.claims(*fleet_b)
    r = await api.enroll(claim_b, generate_private_key(), vin=VIN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "vin_held")
    said = r.text
    for secret in (vid_a, fleet_a[0], "PICC", "沪"):
        assert secret not in said  # nothing about the car or its fleet
    assert await api.vehicles() == 1
    listed = await api.client.get(f"/v1/fleets/{fleet_b[0]}/vehicles",
                                  headers=api.auth(fleet_b[1]))  # fmt: skip
    assert listed.json()["total"] == 0
    # The same fleet cannot hold one car twice either: the old gateway goes first.
    [again] = await api.claims(*fleet_a)
    r = await api.enroll(again, generate_private_key(), vin=VIN)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "vin_held")

    # Fleet A releases the car (revokes its gateway): now fleet B may take it, with the
    # same claim (a refused enrollment did not use it).
    r = await api.client.post(f"/v1/vehicles/{vid_a}/revoke", json={},
                              headers=api.auth(fleet_a[1]))  # fmt: skip
    assert r.status_code == 200, r.text
    r = await api.enroll(claim_b, generate_private_key(), vin=VIN)
    assert r.status_code == 201, r.text
    vid_b = r.json()["vid"]
    row = await within(api.store.vehicle(vid_b))
    assert row is not None and (row.fleet_id, row.vin) == (fleet_b[0], VIN)
