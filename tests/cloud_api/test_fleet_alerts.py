"""Fleet alerts end to end: the monitor derives them from the store, the API lists them per
fleet, and signed webhooks reach a real receiver, retried, resumed and given up."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud import renewal_flow
from cloud.alert_delivery import AlertSender
from cloud.fleet_monitor import FleetMonitor
from cloud.pki import DevPki

from .conftest import ADMIN_TOKEN, Api, within
from .fleet_support import Hook, Seeded, car_event, receiving, seed_fleet, serving_fleet

SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def api(shared_pki: DevPki, tmp_path: Path) -> AsyncIterator[Api]:
    async with serving_fleet(shared_pki, tmp_path) as running:
        yield running


def monitor(api: Api, sender: AlertSender) -> FleetMonitor:
    return FleetMonitor(api.store, api.config, api.clock.now, sender)


def quiet_sender(hooks: list[Hook] | None = None, **kw: object) -> AlertSender:
    """A sender with a 1 s, 2 s, 4 s… schedule (no jitter) that may post to this host's
    loopback, where the receivers are (the development setting, given explicitly)."""
    kw.setdefault("allow_loopback", True)
    return AlertSender(hooks or [], base_s=1.0, cap_s=4.0, rand=lambda: 1.0, **kw)  # type: ignore[arg-type]


async def kinds_by_vid(api: Api, fleet_id: str, token: str) -> dict[tuple[str, str], dict]:  # type: ignore[type-arg]
    r = await api.client.get(f"/v1/fleets/{fleet_id}/alerts", headers=api.auth(token))
    assert r.status_code == 200, r.text
    return {(a["vid"], a["kind"]): a for a in r.json()["alerts"]}


async def test_the_monitor_raises_each_alert_once_and_the_fleet_sees_only_its_own(
    api: Api,
) -> None:
    s: Seeded = await seed_fleet(api)
    v = s.vids
    await car_event(api, v["lapsed"], "lapsed_while_driving", "a" * 32, seq=10)
    await car_event(api, v["lapsed"], "lapsed_while_driving", "a" * 32, seq=11)  # re-sent
    await car_event(api, v["active"], "prompt_answered", "b" * 32, seq=12, detail="d15:accept")
    sender = quiet_sender()
    m = monitor(api, sender)
    first = await within(m.tick())
    got = await kinds_by_vid(api, s.fleet_id, s.token)
    assert set(got) == {
        (v["soon"], "expiring_no_renewal"),  # 5 days, online, no renewal
        (v["lapsed"], "offline_and_expiring"),  # lapsed and never seen
        (v["lapsed"], "lapsed_while_driving"),  # the car said so (once, though sent twice)
    }
    assert s.other_vid not in json.dumps(list(got.values()))
    assert got[(v["soon"], "expiring_no_renewal")]["detail"]["days_left"] == 5
    # A second tick, and a second monitor (another worker process): nothing new.
    assert await within(m.tick()) == []
    assert await within(monitor(api, quiet_sender()).tick()) == []
    assert len(first) == 5  # fleet A's three and fleet B's two
    assert m.counters["alerts_raised"] == 5
    assert m.counters["alerts_raised.lapsed_while_driving"] == 1
    # Fleet B sees its own, and not A's; A's token is refused on B's list.
    b_id = (await api.store.vehicle(s.other_vid)).fleet_id  # type: ignore[union-attr]
    theirs = await kinds_by_vid(api, b_id, s.other_token)
    assert set(theirs) == {(s.other_vid, "expiring_no_renewal"),
                           (s.other_vid, "offline_and_expiring")}  # fmt: skip
    other = await api.client.get(f"/v1/fleets/{b_id}/alerts", headers=api.auth(s.token))
    assert (other.status_code, other.json()["error"]["code"]) == (403, "forbidden")
    listed = await api.client.get(f"/v1/fleets/{s.fleet_id}/alerts", headers=api.auth(ADMIN_TOKEN))
    assert listed.status_code == 200 and "LSGCAR" not in listed.text
    assert api.counters["fleet_alerts"] >= 1


async def test_an_open_renewal_or_a_next_term_silences_expiring(api: Api) -> None:
    s = await seed_fleet(api)
    soon = s.vids["soon"]
    flow = renewal_flow.start("r" * 32, soon, "c" * 32, None)
    await api.store.save_flow(flow, api.clock.now())
    await within(monitor(api, quiet_sender()).tick())
    got = await kinds_by_vid(api, s.fleet_id, s.token)
    assert (soon, "expiring_no_renewal") not in got
    assert (s.vids["lapsed"], "offline_and_expiring") in got


async def seed_three(api: Api) -> Seeded:
    """The seeded fleets; fleet A with three alerts due (B with two)."""
    s = await seed_fleet(api)
    await car_event(api, s.vids["lapsed"], "lapsed_while_driving", "a" * 32, seq=10)
    return s


async def test_webhooks_are_signed_retried_with_backoff_and_delivered_once(api: Api) -> None:
    s = await seed_three(api)
    async with (
        receiving(SECRET, fail_first=2) as rx,
        quiet_sender([Hook(s.fleet_id, rx.url, SecretStr(SECRET))]) as sender,
    ):
        m = monitor(api, sender)
        await within(m.tick())  # raises 3 of A's (and 2 of B's: no webhook there)
        assert rx.calls == 3 and len(rx.received) == 1
        # Two failed (attempt 1, retry in 1 s); one went through.
        assert m.counters["alerts_failed"] == 2 and m.counters["alerts_delivered"] == 1
        assert m.counters["alerts_no_webhook"] == 2
        await within(m.tick())  # not due yet: nobody is called
        assert rx.calls == 3
        api.clock.advance(1)
        await within(m.tick())
        assert rx.calls == 5 and len(rx.unique()) == 3 and rx.refused == 0
        for _, body in rx.received:
            doc = json.loads(body)
            assert doc["fleet_id"] == s.fleet_id and "LSGCAR" not in body.decode()
        rows = await api.store.fleet_alerts(s.fleet_id)
        assert all(a.delivered_at is not None for a in rows)
        assert sorted(a.attempts for a in rows) == [1, 2, 2]
        api.clock.advance(3600)
        await within(m.tick())
        assert rx.calls == 5  # delivered stays delivered


async def test_a_restart_resumes_the_schedule_and_gives_up_after_max_attempts(
    api: Api,
) -> None:
    s = await seed_three(api)
    async with receiving(SECRET, fail_first=10**6) as rx:
        hooks = [Hook(s.fleet_id, rx.url, SecretStr(SECRET))]
        async with quiet_sender(hooks, max_attempts=3) as first:
            await within(monitor(api, first).tick())
        assert rx.calls == 3
        # A new process: the attempts so far come from the store, not from memory.
        async with quiet_sender(hooks, max_attempts=3) as second:
            m = monitor(api, second)
            for step_s in (1, 2, 4, 4):
                api.clock.advance(step_s)
                await within(m.tick())
        assert rx.calls == 9 and rx.received == []
        assert m.counters["alerts_gave_up"] == 3
        rows = await api.store.fleet_alerts(s.fleet_id)
        assert all(a.gave_up and a.attempts == 3 for a in rows)
        assert await api.store.due_alerts(api.clock.now() + timedelta(days=1)) == []


async def test_a_wrong_secret_or_a_dead_url_is_a_failed_attempt(api: Api) -> None:
    s = await seed_three(api)
    async with receiving(SECRET) as rx:
        hooks = [Hook(s.fleet_id, rx.url, SecretStr("not-the-secret"))]
        async with quiet_sender(hooks) as wrong:
            await within(monitor(api, wrong).tick())
        assert rx.refused == 3 and rx.received == []
        assert wrong.counters["alerts_failed"] == 3
    api.clock.advance(1)
    async with quiet_sender([Hook(s.fleet_id, rx.url, SecretStr(SECRET))]) as dead:
        await within(dead.deliver_due(api.store, api.clock.now()))  # the server is gone
    assert dead.counters["alerts_failed"] == 3
    rows = await api.store.fleet_alerts(s.fleet_id)
    assert all(a.attempts == 2 and a.delivered_at is None for a in rows)


async def test_run_ticks_on_its_interval_and_closes_its_client_when_cancelled(api: Api) -> None:
    s = await seed_fleet(api)
    sender = quiet_sender()
    m = monitor(api, sender)
    m.interval_s = 0.05
    task = asyncio.create_task(m.run(), name="test-monitor")
    try:
        async with asyncio.timeout(10):
            while m.counters["monitor_ticks"] < 3:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)
    assert sender.client.is_closed
    assert m.counters["alerts_raised"] == 4  # A's two and B's two, raised once
    assert len(await api.store.fleet_alerts(s.fleet_id)) == 2


async def test_an_operator_sets_the_fleets_webhook_through_the_api(
    shared_pki: DevPki, tmp_path: Path
) -> None:
    # The development setting lets a webhook reach this host's loopback, where the
    # receiver is; every other internal address stays refused (test_webhook_targets.py).
    async with serving_fleet(shared_pki, tmp_path, allow_loopback_webhooks=True) as api:
        await operator_sets_webhook(api)


async def operator_sets_webhook(api: Api) -> None:
    s = await seed_three(api)
    path = f"/v1/fleets/{s.fleet_id}/webhook"
    mine = api.auth(s.token)
    unset = await api.client.get(path, headers=mine)
    assert (unset.status_code, unset.json()["error"]["code"]) == (404, "webhook_unset")
    refusals = [
        ("http://ops.example.com/h", "scheme"),
        ("https://user:pw@ops.example.com/h", "credentials"),
        ("ftp://ops.example.com/h", "scheme"),
        ("https://", "host"),
        ("https://10.0.0.1:8443/h", "private_address"),
        ("https://169.254.169.254/latest/meta-data/", "link_local"),
    ]
    for url, why in refusals:
        bad = await api.client.put(path, headers=mine, json={"url": url, "secret": SECRET})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "webhook_url_refused"), url
        assert bad.json()["error"]["message"].startswith(f"{why}: "), url
    short = await api.client.put(
        path, headers=mine, json={"url": "https://ops.example.com/h", "secret": "short"}
    )
    assert short.status_code == 422
    theirs = await api.client.put(
        path, headers=api.auth(s.other_token), json={"url": "https://x.example/h", "secret": SECRET}
    )
    assert (theirs.status_code, theirs.json()["error"]["code"]) == (403, "forbidden")
    async with receiving(SECRET) as rx, quiet_sender() as sender:  # no webhook in the config
        put = await api.client.put(path, headers=mine, json={"url": rx.url, "secret": SECRET})
        assert put.status_code == 200 and put.json() == {"fleet_id": s.fleet_id, "url": rx.url}
        shown = await api.client.get(path, headers=mine)
        assert shown.json() == {"fleet_id": s.fleet_id, "url": rx.url}
        assert SECRET not in shown.text
        m = monitor(api, sender)
        await within(m.tick())
        assert len(rx.unique()) == 3 and rx.refused == 0  # signed with the secret set
        assert m.counters["alerts_delivered"] == 3 and m.counters["alerts_no_webhook"] == 2
    gone = await api.client.delete(path, headers=mine)
    assert gone.status_code == 204
    again = await api.client.delete(path, headers=mine)
    assert (again.status_code, again.json()["error"]["code"]) == (404, "webhook_unset")
