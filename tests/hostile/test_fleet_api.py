"""Fleet operators against the real HTTPS API (tests/cloud_api/conftest.py ``serving``, with
the real worker as its events and the worker's store): another fleet's car by its VIN, and
internal addresses as a webhook (a real loopback listener counts every connection)."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.protocol.keys import generate_private_key
from cloud.fleet_monitor import FleetMonitor
from simulator.broker import Mosquitto
from tests.cloud_api.conftest import Api, serving, within
from tests.cloud_api.fleet_support import car_event
from tests.cloud_api.test_webhook_targets import PUBLIC, put, seeded, sender
from tests.cloud_api.webhook_support import Dns, listening

from .conftest import TallyFactory
from .harness import Cloud

GROUP = "fleet API"
VIN = "LSGCAR00000000777"
SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def api(cloud: Cloud, tmp_path: Path) -> AsyncIterator[Api]:
    """The API over TLS on the worker's own store, the worker as its events."""
    async with serving(cloud.pki, tmp_path, events=cloud.worker) as running:
        yield running


async def _api_answers(api: Api, cloud: Cloud) -> bool:
    """A legitimate request to each: the API (the key set) and the worker (a signed one)."""
    keyset = await api.client.get("/v1/keyset")
    return keyset.status_code == 200 and await cloud.answers() and not cloud.crashed()


def _error(r: object) -> str:
    try:
        return str(r.json()["error"]["code"])  # type: ignore[attr-defined]
    except (ValueError, KeyError, TypeError):
        return ""


async def test_a_fleet_cannot_enroll_another_fleets_car_by_its_vin(
    api: Api, cloud: Cloud, tally: TallyFactory
) -> None:
    row = tally(
        "cross-fleet VIN (fleet B enrolls fleet A's car's VIN)",
        group=GROUP,
        expected="409 `vin_held` (422 `vin_invalid` for a lookalike), nothing told",
    )
    fleet_a, fleet_b = await api.fleet("a"), await api.fleet("b")
    [claim_a] = await api.claims(*fleet_a)
    r = await api.enroll(claim_a, generate_private_key(), vin=VIN)
    assert r.status_code == 201, r.text
    vid_a = r.json()["vid"]
    held = await api.vehicles()
    [claim_b] = await api.claims(*fleet_b)
    secrets_of_a = (vid_a, fleet_a[0], fleet_a[1], "PICC", VIN[-4:] + '"')
    tries = [
        ("the VIN as printed", VIN, 409, "vin_held"),
        ("the VIN again, another key", VIN, 409, "vin_held"),
        ("lower case", VIN.lower(), 422, "vin_invalid"),
        ("a trailing space", VIN + " ", 422, "vin_invalid"),
        ("a Cyrillic С for C", VIN.replace("C", "С"), 422, "vin_invalid"),
        ("fullwidth digits", VIN.replace("777", "７７７"), 422, "vin_invalid"),
        ("an O for a 0 (not a VIN letter)", VIN.replace("0", "O", 1), 422, "vin_invalid"),
    ]
    for what, vin, status, code in tries:
        r = await api.enroll(claim_b, generate_private_key(), vin=vin)
        told = [s for s in secrets_of_a if s in r.text]
        row.record(
            refused=(r.status_code, _error(r)) == (status, code),
            leaked=bool(told),
            crashed=r.status_code >= 500,
            what=f"{what}: {r.status_code} {_error(r)} told {told}",
        )
    # The same fleet cannot hold the car twice either.
    [again] = await api.claims(*fleet_a)
    r = await api.enroll(again, generate_private_key(), vin=VIN)
    row.record(
        refused=(r.status_code, _error(r)) == (409, "vin_held"),
        what=f"fleet A again: {r.status_code}",
    )
    # Nothing stored, nothing listed, the claim unused: it enrolls another car.
    assert await api.vehicles() == held
    listed = await api.client.get(f"/v1/fleets/{fleet_b[0]}/vehicles", headers=api.auth(fleet_b[1]))
    if listed.json()["total"] != 0:
        row.leaked += 1
    r = await api.enroll(claim_b, generate_private_key(), vin="LSGCAR00000000778")
    assert r.status_code == 201, "a refused enrollment used the claim"
    row_a = await within(api.store.vehicle(vid_a))
    assert row_a is not None and row_a.fleet_id == fleet_a[0]
    if not await _api_answers(api, cloud):
        row.crashed("the API or the worker no longer answers")
    row.check()


async def test_internal_targets_are_refused_as_a_fleet_webhook_and_never_reached(
    api: Api, cloud: Cloud, tally: TallyFactory
) -> None:
    row = tally(
        "SSRF: internal targets as a fleet webhook",
        group=GROUP,
        expected="422 `webhook_url_refused`; a loopback listener gets 0 connections",
    )
    rebind = tally(
        "SSRF: a name that rebinds to loopback after it was saved",
        group=GROUP,
        expected="delivery refused before connecting; 0 connections",
    )
    broker: Mosquitto = cloud.broker
    s = await seeded(api)  # fleet A with alerts due (deliveries would be attempted)
    dns = Dns({"hooks.fleet.example": [PUBLIC]})
    api.app.state.outbound_resolver = dns  # the one stand-in: DNS, as in tests/cloud_api
    async with listening() as listener:
        port = listener.port
        targets = [
            "https://127.0.0.1:5432/",
            "http://127.0.0.1:5432/",
            "https://[::1]/",
            "http://[::1]:5432/",
            "https://localhost:22/",
            "http://localhost:22/",
            f"https://127.0.0.1:{broker.port}/",
            f"http://127.0.0.1:{broker.port}/",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/",
            "https://[::ffff:127.0.0.1]/",
            "https://[64:ff9b::7f00:1]/",
            # The listener's own port, every way of writing loopback.
            f"https://127.0.0.1:{port}/hook",
            f"https://localhost:{port}/hook",
            f"https://[::1]:{port}/hook",
            f"https://[::ffff:127.0.0.1]:{port}/hook",
            f"https://[64:ff9b::7f00:1]:{port}/hook",
            f"https://127.0.0.1.:{port}/hook",
            f"https://2130706433:{port}/hook",
            f"https://0x7f000001:{port}/hook",
            f"https://127.1:{port}/hook",
            f"https://a.localhost:{port}/hook",
            f"https://[::127.0.0.1]:{port}/hook",
            f"https://0.0.0.0:{port}/hook",
        ]
        for url in targets:
            status, body = await put(api, s, url)
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            row.record(
                refused=(status, code) == (422, "webhook_url_refused"),
                crashed=status >= 500,
                what=f"{url}: {status} {code}",
            )
        gone = await api.client.get(f"/v1/fleets/{s.fleet_id}/webhook", headers=api.auth(s.token))
        if gone.status_code != 404:
            row.leaked += 1
            row.notes.append(f"a webhook was saved: {gone.text[:120]}")
        # The alerts due are delivered now: none may reach the listener.
        async with sender(dns) as refusing:
            await within(FleetMonitor(api.store, api.config, api.clock.now, refusing).tick())
        row.leaked += listener.connections

        # Saved while public, loopback when delivered (each of the three ways), each time
        # with a new alert due.
        for i, later in enumerate((["127.0.0.1"], ["::ffff:127.0.0.1"], [PUBLIC, "127.0.0.1"])):
            await car_event(
                api, s.vids["lapsed"], "lapsed_while_driving", f"{i + 1:032x}", seq=20 + i
            )
            dns.answers["hooks.fleet.example"] = [PUBLIC]
            saved, _ = await put(api, s, f"https://hooks.fleet.example:{port}/hook")
            assert saved == 200
            dns.answers["hooks.fleet.example"] = later
            before = listener.connections
            async with sender(dns) as refusing:
                m = FleetMonitor(api.store, api.config, api.clock.now, refusing)
                await within(m.tick())
            reached = listener.connections - before
            refused = m.counters["alert_target_refused"]
            rebind.record(
                refused=reached == 0 and refused >= 1,
                leaked=reached > 0,
                what=f"rebound to {later}: {refused} refused, {reached} connections",
            )
    assert api.counters["rejected.internal"] == 0
    if not await _api_answers(api, cloud):
        row.crashed("the API or the worker no longer answers")
    row.check()
    rebind.check()
