"""Revoking through the API cuts the car off the real broker at once; the other car stays."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.protocol import messages
from agent.protocol.keys import generate_private_key
from cloud.errors import LinkError
from cloud.pki import DevPki
from simulator.broker import Mosquitto

from .conftest import ADMIN_TOKEN, csr_pem, within
from .test_with_worker import Car, Served, worker_served

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def served(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Served]:
    overrides = {"crl_file": own_pki.crl, "broker_pid_file": own_broker.pid_file}
    async with worker_served(own_pki, own_broker, tmp_path, **overrides) as running:
        yield running


async def enroll_two(s: Served) -> list[Car]:
    fleet = (await s.client.post("/v1/fleets", json={"name": "cut"}, headers=AUTH)).json()
    claims = await s.client.post(
        f"/v1/fleets/{fleet['fleet_id']}/claims",
        json={"count": 2, "expires_in_s": 600},
        headers={"Authorization": f"Bearer {fleet['operator_token']}"},
    )
    cars = []
    for token in claims.json()["claim_tokens"]:
        key = generate_private_key()
        r = await s.client.post("/v1/enroll", json={"claim_token": token, "csr_pem": csr_pem(key)})
        assert r.status_code == 201, r.text
        car = Car(s, r.json()["vid"], key, r.json()["certificate_pem"])
        await within(car.link.connect(s.broker.host, s.broker.port))
        cars.append(car)
    return cars


async def test_revoking_disconnects_the_car_refuses_its_reconnect_and_spares_the_other(
    served: Served,
) -> None:
    stolen, other = await enroll_two(served)
    try:
        r = await served.client.post(f"/v1/vehicles/{stolen.vid}/revoke", json={}, headers=AUTH)
        assert r.status_code == 200, r.text
        await within(stolen.link.wait_disconnected())
        with pytest.raises(LinkError):
            await stolen.link.connect(served.broker.host, served.broker.port, timeout_s=3.0)
        assert other.link.connected
        other.ask(seq=1)
        state = await other.reply()
        assert isinstance(state, messages.PolicyState) and state.reply_to == 1
    finally:
        for car in (stolen, other):
            await within(car.link.close())
