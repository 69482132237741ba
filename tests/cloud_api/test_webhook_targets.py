"""A fleet operator is never trusted with the addresses the cloud connects to (issue 13,
finding 4): internal targets are refused when a webhook is saved, and again on the
address each delivery connects to, so a name that rebinds after it was saved gets nothing.

Real API, real store, real listeners on loopback; only DNS is stood in for (``Dns``)."""

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud.alert_delivery import AlertSender
from cloud.config import FleetWebhook
from cloud.fleet_monitor import FleetMonitor
from cloud.outbound import TransportFailed
from cloud.pki import DevPki

from .conftest import Api, within
from .fleet_support import Hook, Receiver, Seeded, car_event, seed_fleet, serving_fleet
from .webhook_support import Dns, listening, server_tls, serving_app

SECRET = "webhook-secret-0123456789"
PUBLIC = "93.184.216.34"
"""What the stand-in DNS answers for a name while it looks harmless."""

FINDING = [  # issue 13, finding 4: each was accepted, and delivered to
    ("http://127.0.0.1:5432/", "scheme"),
    ("http://[::1]:5432/", "scheme"),
    ("http://localhost:22/", "scheme"),
    ("http://127.0.0.1:8883/", "scheme"),  # the broker's port
    ("https://127.0.0.1:8883/", "loopback"),
    ("https://localhost:8883/", "loopback"),
    ("https://[::1]:8443/", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "link_local"),
    ("https://10.0.0.1:8443/", "private_address"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),
]
FORMS = [  # the same addresses written otherwise
    ("https://[::ffff:a9fe:a9fe]/", "link_local"),  # IPv4-mapped 169.254.169.254
    ("https://[64:ff9b::7f00:1]/", "loopback"),  # NAT64 of 127.0.0.1
    ("https://[64:ff9b::a00:1]/", "private_address"),  # NAT64 of 10.0.0.1
    ("https://[2002:a00:1::1]/", "private_address"),  # 6to4 of 10.0.0.1
    ("https://[::127.0.0.1]/", "loopback"),  # IPv4-compatible
    ("https://127.0.0.1./", "loopback"),
    ("https://127.1/", "host"),
    ("https://2130706433/", "host"),
    ("https://0x7f000001/", "host"),
    ("https://[fe80::1]/", "link_local"),
    ("https://[fd00::1]/", "private_address"),
    ("https://172.16.0.1/", "private_address"),
    ("https://192.168.1.1/", "private_address"),
    ("https://100.64.0.1/", "shared_address"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://255.255.255.255/", "reserved"),
    ("https://192.0.2.1/", "reserved"),
    ("https://a.localhost/", "loopback"),
    ("https://ops.example.com/h#top", "fragment"),
    ("https://user:pw@ops.example.com/h", "credentials"),
]
NAMES = {  # what the stand-in DNS answers; each refused with one code
    "internal.fleet.example": ["10.1.2.3"],
    "metadata.fleet.example": ["169.254.169.254"],
    "half.fleet.example": [PUBLIC, "127.0.0.1"],  # one forbidden address is enough
    "mapped.fleet.example": ["::ffff:127.0.0.1"],
    "nat64.fleet.example": ["64:ff9b::a9fe:a9fe"],
}

SHOWN = {"alert_id", "fleet_id", "vid", "kind", "raised_at", "detail"} | {
    "delivered",
    "attempts",
    "gave_up",
}
"""What the API shows of an alert: what it says, and whether it was delivered."""


@pytest.fixture
async def api(shared_pki: DevPki, tmp_path: Path) -> AsyncIterator[Api]:
    """The API as in production: no development setting."""
    async with serving_fleet(shared_pki, tmp_path) as running:
        yield running


def sender(dns: Dns, hooks: list[Hook] | None = None, **kw: object) -> AlertSender:
    """A sender that asks ``dns`` (no jitter; 1 s, 2 s… between attempts)."""
    return AlertSender(hooks or [], resolver=dns, base_s=1.0, cap_s=4.0, rand=lambda: 1.0, **kw)  # type: ignore[arg-type]


async def seeded(api: Api) -> Seeded:
    """Fleet A with three alerts due, fleet B with two (and no webhook)."""
    s = await seed_fleet(api)
    await car_event(api, s.vids["lapsed"], "lapsed_while_driving", "a" * 32, seq=10)
    return s


async def put(api: Api, s: Seeded, url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = await api.client.put(
        f"/v1/fleets/{s.fleet_id}/webhook", headers=api.auth(s.token),
        json={"url": url, "secret": SECRET},
    )  # fmt: skip
    return r.status_code, r.json()


async def test_every_internal_target_is_refused_when_saved_with_its_reason(api: Api) -> None:
    s = await seeded(api)
    dns = Dns({name: list(addresses) for name, addresses in NAMES.items()})
    dns.answers["hooks.fleet.example"] = [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]
    api.app.state.outbound_resolver = dns
    cases = FINDING + FORMS + [(f"https://{n}/hook", "host_not_public") for n in NAMES]
    cases.append(("https://nowhere.fleet.example/hook", "host_not_public"))  # no such name
    for url, reason in cases:
        status, body = await put(api, s, url)
        assert (status, body["error"]["code"]) == (422, "webhook_url_refused"), url
        assert body["error"]["message"].startswith(f"{reason}: "), (url, body)
    assert api.counters["rejected.webhook_url_refused"] == len(cases)
    assert api.counters["fleet_webhook_refused.loopback"] >= 8
    assert api.counters["fleet_webhook_refused.host_not_public"] == len(NAMES) + 1
    gone = await api.client.get(f"/v1/fleets/{s.fleet_id}/webhook", headers=api.auth(s.token))
    assert gone.status_code == 404  # nothing was saved
    # A name with public addresses only is saved.
    assert await put(api, s, "https://hooks.fleet.example/hook") == (
        200, {"fleet_id": s.fleet_id, "url": "https://hooks.fleet.example/hook"},
    )  # fmt: skip


@pytest.mark.parametrize(
    "later",
    [["127.0.0.1"], ["::ffff:127.0.0.1"], [PUBLIC, "127.0.0.1"]],
    ids=["loopback", "mapped", "one-of-two"],
)
async def test_a_name_that_rebinds_to_loopback_after_it_was_saved_gets_nothing(
    api: Api, later: list[str]
) -> None:
    s = await seeded(api)
    dns = Dns({"hooks.fleet.example": [PUBLIC]})
    api.app.state.outbound_resolver = dns
    async with listening() as listener:
        url = f"https://hooks.fleet.example:{listener.port}/hook"
        assert (await put(api, s, url))[0] == 200  # public when saved
        dns.answers["hooks.fleet.example"] = later  # and loopback when delivered
        dns.asked.clear()
        async with sender(dns) as refusing:
            m = FleetMonitor(api.store, api.config, api.clock.now, refusing)
            await within(m.tick())
        assert listener.connections == 0  # refused before any byte was sent
        assert dns.asked  # judged on a fresh answer, at connect time
        assert m.counters["alert_target_refused"] == 3
        assert m.counters["alerts_failed"] == 0 and m.counters["alerts_delivered"] == 0
        # The listener is reachable this way: the refusal, not the address, kept it silent.
        async with sender(dns, allow_loopback=True) as dev:
            with pytest.raises(TransportFailed):
                await within(dev.client.post(url, b"{}", {}))
        assert listener.connections == 1
    # The operator sees "not delivered, given up": no attempt, no transport detail.
    r = await api.client.get(f"/v1/fleets/{s.fleet_id}/alerts", headers=api.auth(s.token))
    shown = r.json()["alerts"]
    assert len(shown) == 3
    for alert in shown:
        assert (alert["delivered"], alert["attempts"], alert["gave_up"]) == (False, 0, True)
        assert set(alert) == SHOWN  # no field says why or how a delivery failed


async def test_a_configured_webhook_to_an_internal_address_gets_nothing(api: Api) -> None:
    s = await seeded(api)
    async with listening() as listener:
        hook = FleetWebhook(
            fleet_id=s.fleet_id, url=f"https://127.0.0.1:{listener.port}/h", secret=SECRET
        )
        async with sender(Dns(), [hook]) as refusing:  # type: ignore[list-item]
            m = FleetMonitor(api.store, api.config, api.clock.now, refusing)
            await within(m.tick())
        assert listener.connections == 0
    assert m.counters["alert_target_refused"] == 3 and m.counters["alerts_no_webhook"] == 2


@pytest.mark.parametrize("status", [302, 307, 308])
async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(api: Api, status: int) -> None:
    s = await seeded(api)
    async with listening() as listener:
        target = f"http://127.0.0.1:{listener.port}/hook"

        async def redirect(_: Request) -> Response:
            return Response(status_code=status, headers={"Location": target})

        app = Starlette(routes=[Route("/hook", redirect, methods=["POST"])])
        async with serving_app(app) as port:
            hooks = [Hook(s.fleet_id, f"http://127.0.0.1:{port}/hook", SecretStr(SECRET))]
            async with sender(Dns(), hooks, allow_loopback=True) as dev:
                m = FleetMonitor(api.store, api.config, api.clock.now, dev)
                await within(m.tick())
        assert listener.connections == 0
    assert m.counters["alerts_failed"] == 3 and m.counters["alerts_delivered"] == 0
    rows = await api.store.fleet_alerts(s.fleet_id)
    assert all(a.attempts == 1 and a.delivered_at is None for a in rows)


@pytest.mark.parametrize("allow_loopback", [True, False], ids=["development", "production"])
async def test_https_to_a_local_tls_receiver_only_with_the_development_setting(
    api: Api, shared_pki: DevPki, tmp_path: Path, allow_loopback: bool
) -> None:
    s = await seeded(api)
    name = "alerts.fleet.example"  # the certificate's name; DNS says 127.0.0.1
    cert, key, trust = server_tls(shared_pki, tmp_path, name)
    receiver = Receiver(SECRET)
    app = Starlette(routes=[Route("/hook", receiver.endpoint, methods=["POST"])])
    async with serving_app(app, tls_files=(cert, key)) as port:
        hooks = [Hook(s.fleet_id, f"https://{name}:{port}/hook", SecretStr(SECRET))]
        dns = Dns({name: ["127.0.0.1"]})
        async with sender(dns, hooks, allow_loopback=allow_loopback, tls=trust) as it:
            m = FleetMonitor(api.store, api.config, api.clock.now, it)
            await within(m.tick())
    if allow_loopback:  # connected to 127.0.0.1, TLS verified for the name, signed
        assert len(receiver.unique()) == 3 and receiver.refused == 0
        assert m.counters["alerts_delivered"] == 3
        for _, body in receiver.received:
            assert json.loads(body)["fleet_id"] == s.fleet_id
    else:
        assert receiver.calls == 0
        assert m.counters["alert_target_refused"] == 3 and m.counters["alerts_delivered"] == 0
