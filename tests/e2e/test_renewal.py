"""Renewal end to end, exactly once: a real agent, the real broker, a real cloud worker with
its HTTPS API, and the simulated national platform and two insurers as real HTTP servers.

Quote → consent (tapped twice) → bind → the worker killed and restarted → pay (twice) →
the webhook delivered twice → one policy, one charge, a new signed state on the car
starting the day after the old one ends. And "already renewed elsewhere" re-queries the
sources at once and stops the prompts.
"""

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.protocol import calendar
from agent.runner import Agent
from cloud.config import InsurerSource
from cloud.pki import DevPki
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port
from simulator.cars import car_config
from simulator.fleet import synthetic_plate, synthetic_vin, vehicle_facts
from simulator.sources import Insurer, NationalPlatform

from ..cloud.conftest import start_worker
from .helpers import FAST, until

SECRETS = {"PICC": "picc-webhook-secret", "PINGAN": "pingan-webhook-secret"}


@dataclass
class World:
    pki: DevPki
    broker: Mosquitto
    db: Path
    api_port: int
    national: NationalPlatform
    insurers: dict[str, Insurer]
    worker: Worker
    task: "asyncio.Task[None]"

    def settings(self) -> dict[str, Any]:
        return {
            "http_port": self.api_port,
            "national_url": self.national.url,
            "insurers": tuple(
                InsurerSource(code=code, name=i.name, url=i.url, webhook_secret=SECRETS[code])
                for code, i in self.insurers.items()
            ),
        }

    async def kill_worker(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def restart_worker(self) -> None:
        self.worker, self.task = await start_worker(
            self.pki, self.broker, self.db, seed=False, **self.settings()
        )


@pytest.fixture
async def world(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path) -> AsyncIterator[World]:
    api_port = free_port()
    national = NationalPlatform()
    insurers = {
        code: Insurer(
            code, name, webhook_url=f"https://127.0.0.1:{api_port}/v1/webhooks/insurers/{code}",
            webhook_secret=SECRETS[code], webhook_ca=own_pki.ca_cert, reports_to=[national],
        )
        for code, name in (("PICC", "中国人保财险"), ("PINGAN", "平安产险"))
    }  # fmt: skip
    for i, _ in enumerate(own_pki.vids()):  # what premiums are priced by
        national.add_vehicle(vehicle_facts(i, synthetic_vin(i), synthetic_plate(i)))
    async with national, insurers["PICC"], insurers["PINGAN"]:
        w = World(own_pki, own_broker, tmp_path / "cloud.db", api_port, national, insurers,
                  None, None)  # type: ignore[arg-type]  # fmt: skip
        w.worker, w.task = await start_worker(own_pki, own_broker, w.db, **w.settings())
        try:
            yield w
        finally:
            for insurer in insurers.values():  # their webhook connections to the API first:
                await insurer.stop()  # the API waits for open connections when it stops
            await w.kill_worker()


async def running_agent(
    world: World, index: int, tmp_path: Path
) -> tuple[Agent, asyncio.Task[None]]:
    vid = world.pki.vids()[index]
    agent = Agent(car_config(world.pki, vid, tmp_path / "cars", world.broker.port, **FAST))
    task = asyncio.create_task(agent.run())
    await agent.wait_for_state(10.0)
    return agent, task


async def stop(agent: Agent, task: "asyncio.Task[None]") -> None:
    agent.stop()
    async with asyncio.timeout(10):
        await task


async def test_quote_consent_pay_issue_exactly_once_through_a_worker_restart(
    world: World, tmp_path: Path
) -> None:
    agent, task = await running_agent(world, 2, tmp_path)  # 45 days of cover left
    try:
        old = agent.state
        assert old is not None and old.coverage_end is not None
        start = calendar.renewal_start(old.coverage_end)
        await agent.request_renewal("quote")
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "quotes",
                    "the quotes")  # fmt: skip
        assert agent.renewal is not None
        quotes = agent.renewal.quotes
        assert {q.insurer_code for q in quotes} == {"PICC", "PINGAN"}
        assert all(q.start == start for q in quotes)  # no gap, no overlap
        choice = quotes[0]
        # The driver taps twice: two consents, one bind.
        await agent.request_renewal("accept", choice.quote_id)
        await agent.request_renewal("accept", choice.quote_id)
        await until(
            lambda: agent.renewal is not None and agent.renewal.stage == "awaiting_payment",
            "the payment link",
        )
        assert agent.renewal is not None and agent.renewal.payment_url is not None
        order_id = agent.renewal.payment_url.rsplit("/", 1)[-1]
        insurer = world.insurers[choice.insurer_code]
        insurer.set_knobs(duplicate_webhooks=True)

        await world.kill_worker()  # mid-flow: the order exists, unpaid
        await world.restart_worker()

        async with httpx.AsyncClient() as phone:  # the driver pays on a phone, twice
            for _ in range(2):
                paid = await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")
                assert paid.status_code == 200
        await until(
            lambda: agent.state is not None and agent.state.next_coverage_end == choice.end,
            "the renewed state on the car",
        )
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "issued",
                    "the renewal issued")  # fmt: skip
        await insurer.drain_webhooks()
        new = agent.state
        assert new is not None and new.version > old.version
        # Today's term stays on the card; the next one runs on from the day after it ends.
        assert (new.coverage_start, new.coverage_end) == (old.coverage_start, old.coverage_end)
        assert new.status == "renewal_pending" and new.next_coverage_end == choice.end
        shown = agent.status_view()
        assert getattr(shown, "status", None) == "covered"
        assert getattr(shown, "coverage_end", None) == choice.end
    finally:
        await stop(agent, task)
    orders = [o for o in insurer.orders.values() if o.quote_id == choice.quote_id]
    assert len(orders) == 1 and orders[0].charges == 1
    other = next(i for c, i in world.insurers.items() if c != choice.insurer_code)
    assert other.orders == {}
    assert world.worker.counters["webhook.ok"] >= 1
    assert world.worker.renewals is not None
    assert world.worker.renewals.counters["webhook.repeated"] >= 1  # delivered twice
    async with await Store.open(world.db) as store:
        flows = await store.flows("vid", (agent.vid,))
        policy = (await store.load_policies(agent.vid))[agent.vid]
        unprocessed = await store.unprocessed_intents("renewal.request")
    assert [f.stage.value for f in flows] == ["issued"] and unprocessed == []
    assert policy.coverage_end == old.coverage_end and policy.next_end == choice.end
    assert policy.next_insurer_code == choice.insurer_code
    print(
        f"\nrenewal exactly once: 2 consents, worker killed and restarted, paid twice, "
        f"webhooks {world.worker.counters['webhook.ok']} ok + "
        f"{world.worker.renewals.counters['webhook.repeated']} repeated; "
        f"orders {len(orders)}, charges {orders[0].charges}, flows {len(flows)}"
    )


async def test_already_renewed_elsewhere_requeries_and_the_new_term_is_pushed(
    world: World, tmp_path: Path
) -> None:
    agent, task = await running_agent(world, 1, tmp_path)
    try:
        old = agent.state
        assert old is not None and old.coverage_end is not None
        vin, plate = None, None
        async with await Store.open(world.db) as store:
            vin, plate = await store.vehicle_identity(agent.vid)
        assert vin is not None and plate is not None
        # Bought at a counter: the insurer knows it and tells the national platform.
        issued = world.insurers["PINGAN"].issue_policy(
            plate, vin, calendar.renewal_start(old.coverage_end), report=True
        )
        await agent.request_renewal("already_renewed")
        await until(
            lambda: agent.renewal is not None and agent.renewal.stage == "renewed_elsewhere",
            "the renewal confirmed",
        )
        await until(
            lambda: agent.state is not None and agent.state.next_coverage_end == issued.end,
            "the new term on the car",
        )
        assert agent.state is not None and agent.state.status == "renewal_pending"
        assert agent.state.coverage_end == old.coverage_end
    finally:
        await stop(agent, task)


async def test_a_consent_for_a_quote_never_offered_is_refused_and_binds_nothing(
    world: World, tmp_path: Path
) -> None:
    agent, task = await running_agent(world, 2, tmp_path)
    try:
        await agent.request_renewal("accept", "q_not_offered")
        await until(lambda: agent.renewal is not None, "the refusal")
        assert agent.renewal is not None and agent.renewal.stage == "failed"
        assert "no_quotes" in (agent.renewal.message or "")
    finally:
        await stop(agent, task)
    assert all(i.orders == {} for i in world.insurers.values())


async def test_a_quote_off_the_uniform_tariff_is_never_shown(world: World, tmp_path: Path) -> None:
    """CTPL costs the same at every insurer: the cloud prices the car itself (Shanghai, one
    year without claims: 855.00 + 360.00 tax) and drops a quote that differs."""
    world.insurers["PINGAN"].set_knobs(ctpl_surcharge_cny=100)
    agent, task = await running_agent(world, 2, tmp_path)
    try:
        await agent.request_renewal("quote")
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "quotes",
                    "the quotes")  # fmt: skip
        assert agent.renewal is not None
        assert [(q.insurer_code, q.ctpl, q.total) for q in agent.renewal.quotes] == [
            ("PICC", "855.00", "1215.00")
        ]
    finally:
        await stop(agent, task)
    assert world.worker.renewals is not None
    assert world.worker.renewals.counters["quote.off_tariff.PINGAN"] == 1


async def test_a_vehicle_the_tariff_does_not_price_fails_with_a_code_the_car_words(
    world: World, tmp_path: Path
) -> None:
    """A taxi (营业客车) is not priced here: no insurer is asked, the car is told why."""
    world.national.add_vehicle(vehicle_facts(2, synthetic_vin(2), synthetic_plate(2)) |
                               {"kind": "taxi"})  # fmt: skip
    agent, task = await running_agent(world, 2, tmp_path)
    try:
        await agent.request_renewal("quote")
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "failed",
                    "the refusal")  # fmt: skip
        assert agent.renewal is not None and agent.renewal.reason == "vehicle_kind_unsupported"
        shown = agent.head_unit.snapshot()["renewal"]
        assert shown["texts"]["zh-CN"]["detail"] == (
            "本车车型暂不支持在车上续保，请直接联系保险公司办理。"
        )
    finally:
        await stop(agent, task)
    assert all(i.hits["POST /v1/quotes"] == 0 for i in world.insurers.values())


async def test_webhooks_with_a_bad_signature_or_an_unknown_order_are_refused_and_counted(
    world: World,
) -> None:
    from cloud.webhooks import sign

    url = f"https://127.0.0.1:{world.api_port}/v1/webhooks/insurers/PICC"
    body = (
        b'{"event":"order.paid","order_id":"ord_nobody","quote_id":"q","insurer_code":"PICC",'
        b'"policy":{"policy_no":"PDZA2027000001","insurer_code":"PICC","insurer_name":"PICC",'
        b'"plate":"\\u6caaA12345","start":"2027-01-01","end":"2027-12-31"}}'
    )
    ts = str(int(time.time()))
    good = sign(SECRETS["PICC"].encode(), ts, body)
    cases = [
        ({"X-CTPL-Timestamp": ts, "X-CTPL-Signature": sign(b"forged", ts, body)}, url, 401,
         "bad_signature"),
        ({}, url, 401, "bad_signature"),
        ({"X-CTPL-Timestamp": ts, "X-CTPL-Signature": good}, url, 404, "unknown_order"),
        ({"X-CTPL-Timestamp": ts, "X-CTPL-Signature": good}, url.replace("PICC", "NOBODY"), 404,
         "unknown_insurer"),
    ]  # fmt: skip
    tls = ssl.create_default_context(cafile=str(world.pki.ca_cert))
    async with httpx.AsyncClient(verify=tls) as client:
        for headers, target, status, code in cases:
            got = await client.post(target, content=body, headers=headers)
            assert (got.status_code, got.json()["error"]) == (status, code), code
    assert world.worker.counters["webhook.bad_signature"] == 2
    assert world.worker.counters["webhook.unknown_order"] == 1
    async with await Store.open(world.db) as store:
        assert await store.flows("order", ("ord_nobody",)) == []


async def test_an_insurer_cannot_complete_another_insurers_order_nor_dictate_the_cover(
    world: World, tmp_path: Path
) -> None:
    """Finding 1 of issue 13: a webhook signed with PINGAN's secret marked a PICC order paid
    with an end of 2099-12-31 from its body, and the flow was issued. Now the webhook is
    bound to the order's insurer, and the term is read from that insurer's own record."""
    from cloud.webhooks import sign

    agent, task = await running_agent(world, 2, tmp_path)
    try:
        await agent.request_renewal("quote")
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "quotes",
                    "the quotes")  # fmt: skip
        assert agent.renewal is not None
        picc = next(q for q in agent.renewal.quotes if q.insurer_code == "PICC")
        await agent.request_renewal("accept", picc.quote_id)
        await until(lambda: agent.renewal is not None
                    and agent.renewal.stage == "awaiting_payment", "the payment link")  # fmt: skip
        assert agent.renewal is not None and agent.renewal.payment_url is not None
        order_id = agent.renewal.payment_url.rsplit("/", 1)[-1]
        vin, plate = synthetic_vin(2), synthetic_plate(2)

        def forged(end: str, code: str = "PICC") -> bytes:
            policy = {"policy_no": "PDZA2099000000000001", "insurer_code": code,
                      "insurer_name": "中国人保财险", "plate": plate, "vin": vin,
                      "start": picc.start.isoformat(), "end": end, "status": "in_force",
                      "issued_at": "2026-12-01T00:00:00Z"}  # fmt: skip
            event = {
                "event": "order.paid",
                "order_id": order_id,
                "quote_id": picc.quote_id,
                "insurer_code": "PICC",
                "policy": policy,
                "paid_at": "2026-12-01T00:00:00Z",
            }
            return json.dumps(event).encode()

        async def deliver(code: str, secret: str, body: bytes) -> tuple[int, str]:
            url = f"https://127.0.0.1:{world.api_port}/v1/webhooks/insurers/{code}"
            ts = str(int(time.time()))
            headers = {"X-CTPL-Timestamp": ts, "X-CTPL-Signature": sign(secret.encode(), ts, body)}
            tls = ssl.create_default_context(cafile=str(world.pki.ca_cert))
            async with httpx.AsyncClient(verify=tls) as client:
                r = await client.post(url, content=body, headers=headers)
            return r.status_code, r.json().get("error", "")

        # PINGAN, with its own secret and code, says PICC's order is paid, cover to 2099.
        body = forged("2099-12-31", code="PINGAN")
        assert await deliver("PINGAN", SECRETS["PINGAN"], body) == (403, "wrong_insurer")
        # PICC's own webhook before the driver paid: its record shows no payment.
        assert await deliver("PICC", SECRETS["PICC"], forged("2099-12-31")) == (
            409, "order_unpaid",
        )  # fmt: skip
        insurer = world.insurers["PICC"]
        insurer.webhook_url = None  # its own delivery waits: the forged one comes first
        async with httpx.AsyncClient() as phone:  # now the driver pays
            await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")
        # A body claiming cover to 2099 contradicts PICC's record of the order.
        assert await deliver("PICC", SECRETS["PICC"], forged("2099-12-31")) == (
            409, "webhook_mismatch",
        )  # fmt: skip
        genuine = insurer.webhook_body(insurer.orders[order_id])
        assert await deliver("PICC", SECRETS["PICC"], genuine) == (200, "")
        await until(lambda: agent.renewal is not None and agent.renewal.stage == "issued",
                    "the genuine webhook issued the term")  # fmt: skip
        await until(lambda: agent.state is not None and agent.state.next_coverage_end == picc.end,
                    "the insurer's own term on the car")  # fmt: skip
    finally:
        await stop(agent, task)
    c = world.worker.counters
    assert (c["webhook.wrong_insurer"], c["webhook.order_unpaid"], c["webhook.webhook_mismatch"]) \
        == (1, 1, 1)  # fmt: skip
    async with await Store.open(world.db) as store:
        policy = (await store.load_policies(agent.vid))[agent.vid]
    assert policy.next_end == picc.end != date(2099, 12, 31)


async def test_a_car_cannot_make_the_cloud_ask_the_sources_without_end(
    world: World, tmp_path: Path
) -> None:
    """Each "already renewed" makes the cloud ask every source; a car may cause six such
    look-ups in ten minutes, the seventh request is refused with rate_limited."""
    agent, task = await running_agent(world, 1, tmp_path)
    before = world.national.hits["GET /v1/policies"]
    try:
        for n in range(1, 8):
            intent = await agent.request_renewal("already_renewed")

            def answered(intent: str = intent) -> bool:
                r = agent.renewal
                return r is not None and r.intent_id == intent and r.stage != "checking"

            await until(answered, f"request {n} answered")
        assert agent.renewal is not None
        assert (agent.renewal.stage, agent.renewal.reason) == ("failed", "rate_limited")
        wait = agent.renewal.retry_after_s
        assert wait is not None and 1 <= wait <= 600  # the oldest of the six ages out then
        shown = agent.head_unit.snapshot()["renewal"]
        minutes = -(-wait // 60)
        assert shown["texts"]["zh-CN"]["detail"] == f"查询过于频繁，请{minutes}分钟后再试。"
    finally:
        await stop(agent, task)
    assert world.worker.renewals is not None
    assert world.worker.renewals.counters["refused.rate_limited"] == 1
    assert world.national.hits["GET /v1/policies"] - before == 6
