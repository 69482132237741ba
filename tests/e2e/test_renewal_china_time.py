"""The whole renewal of an uncovered car at the night hours of China time, end to end.

Between 00:00 and 08:00 China time the UTC date is still yesterday. A real agent, the real
broker, a real worker with its HTTPS API and the simulated national platform and insurers
as real HTTP servers all run on one ManualClock set to 00:30 or 07:59 China time (the
agent's trusted time comes from the worker's signed ``issued_at``). A lapsed car and a
car that was never insured each renew on their own: the quotes start at the next 00:00
China time (PICC) or on payment (PINGAN), never on a UTC date; the car is told ``pending``
(待生效) with the exact start from payment until then, and ``active`` from that instant.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from agent.protocol import calendar
from agent.protocol.clock import ManualClock
from agent.runner import Agent
from cloud.config import CloudConfig, InsurerSource
from cloud.fleet_file import import_files
from cloud.pki import DevPki
from cloud.policy import PolicyRecord
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port
from simulator.cars import car_config
from simulator.fleet import synthetic_plate, synthetic_vin, vehicle_facts
from simulator.sources import Insurer, NationalPlatform

from .helpers import FAST, until

SECRETS = {"PICC": "picc-webhook-secret", "PINGAN": "pingan-webhook-secret"}
NIGHT = {
    "00:30": datetime(2026, 12, 4, 16, 30, tzinfo=UTC),  # 5 Dec 00:30 in China, 4 Dec UTC
    "07:59": datetime(2026, 12, 4, 23, 59, tzinfo=UTC),  # 5 Dec 07:59 in China, 4 Dec UTC
}
TODAY = date(2026, 12, 5)
"""The China date at both instants (the UTC date is the 4th)."""
LAPSED, NEVER = 1, 2
"""Car 1 had a term that ended on 1 Dec; car 2 never had one (not even a plate on record:
the national platform's registry gives it)."""


@dataclass
class Night:
    clock: ManualClock
    pki: DevPki
    db: Path
    national: NationalPlatform
    insurers: dict[str, Insurer]
    worker: Worker


@pytest.fixture(params=sorted(NIGHT), ids=lambda k: f"china-{k}")
async def night(
    request: pytest.FixtureRequest, own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Night]:
    clock = ManualClock(NIGHT[request.param])
    api_port = free_port()
    national = NationalPlatform(clock=clock)
    insurers = {
        code: Insurer(
            code, name, webhook_url=f"https://127.0.0.1:{api_port}/v1/webhooks/insurers/{code}",
            webhook_secret=SECRETS[code], webhook_ca=own_pki.ca_cert, reports_to=[national],
            clock=clock, earliest_start=earliest,
        )
        for code, name, earliest in (("PICC", "中国人保财险", "next_midnight"),
                                     ("PINGAN", "平安产险", "on_payment"))
    }  # fmt: skip
    for i, _ in enumerate(own_pki.vids()):
        national.add_vehicle(vehicle_facts(i, synthetic_vin(i), synthetic_plate(i)))
    db = tmp_path / "cloud.db"
    async with await Store.open(db) as store:  # the vehicles, as a fleet import adds them
        await import_files(store, own_pki.vehicles_file, None)
        lapsed = own_pki.vids()[LAPSED]
        await store.set_plate(lapsed, synthetic_plate(LAPSED))
        await store.put_policy(
            PolicyRecord(
                vid=lapsed, insurer_code="PICC", insurer_name="中国人保财险",
                policy_no_masked="PDZA2025****0002", coverage_start=date(2025, 12, 2),
                coverage_end=date(2026, 12, 1), source="national",
                verified_at=NIGHT[request.param] - timedelta(hours=1),
            )
        )  # fmt: skip
    config = CloudConfig.from_pki(
        own_pki, db_path=db, broker_port=own_broker.port, client_id="night-cloud",
        http_port=api_port, national_url=None, insurers=(),
    )  # fmt: skip
    async with national, insurers["PICC"], insurers["PINGAN"]:
        config = config.model_copy(update={
            "national_url": national.url,
            "insurers": tuple(
                InsurerSource(code=c, name=i.name, url=i.url, webhook_secret=SECRETS[c])
                for c, i in insurers.items()
            ),
        })  # fmt: skip
        worker = Worker(config, clock)
        task = asyncio.create_task(worker.run(), name="night-worker")
        try:
            async with asyncio.timeout(10):
                await worker.ready.wait()
                await worker.api_ready.wait()
            yield Night(clock, own_pki, db, national, insurers, worker)
        finally:
            for insurer in insurers.values():  # their webhook connections to the API first:
                await insurer.stop()  # the API waits for open connections when it stops
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def a_car(night: Night, index: int, tmp_path: Path) -> tuple[Agent, "asyncio.Task[None]"]:
    vid = night.pki.vids()[index]
    config = car_config(night.pki, vid, tmp_path / "cars", night.worker.config.broker_port,
                        status_interval_s=0.3, **FAST)  # fmt: skip
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    await agent.wait_for_state(10.0)
    return agent, task


async def pay(insurer: Insurer, agent: Agent) -> None:
    assert agent.renewal is not None and agent.renewal.payment_url is not None
    order_id = agent.renewal.payment_url.rsplit("/", 1)[-1]
    async with httpx.AsyncClient() as phone:
        assert (await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")).status_code == 200


def stage(agent: Agent, name: str) -> bool:
    return agent.renewal is not None and agent.renewal.stage == name


@pytest.mark.timeout(120)
async def test_a_lapsed_car_renews_at_night_and_is_pending_until_00_00_china_time(
    night: Night, tmp_path: Path
) -> None:
    agent, task = await a_car(night, LAPSED, tmp_path)
    try:
        assert agent.state is not None and agent.state.status == "lapsed"
        assert calendar.china_date(agent.status_view().time.latest) == TODAY  # type: ignore[union-attr]
        await agent.request_renewal("quote")
        await until(lambda: stage(agent, "quotes"), "the quotes")
        assert agent.renewal is not None
        quotes = {q.insurer_code: q for q in agent.renewal.quotes}
        # The next 00:00 China time is 6 Dec (from the UTC date it would be the 5th: past).
        assert (quotes["PICC"].start, quotes["PICC"].start_rule) == (date(2026, 12, 6), None)
        assert (quotes["PINGAN"].start, quotes["PINGAN"].start_rule) == (TODAY, "on_payment")
        # An electric Shanghai car, two years without claims: 950 x 0.8, no vehicle tax.
        assert {(q.ctpl, q.vehicle_vessel_tax) for q in quotes.values()} == {("760.00", "0.00")}
        await agent.request_renewal("accept", quotes["PICC"].quote_id)
        await until(lambda: stage(agent, "awaiting_payment"), "the payment link")
        await pay(night.insurers["PICC"], agent)
        await until(lambda: stage(agent, "issued"), "the renewal issued")
        starts = datetime(2026, 12, 6, tzinfo=calendar.CHINA_TZ)
        assert agent.renewal is not None and agent.renewal.new_starts_at == starts
        await until(lambda: agent.state is not None and agent.state.status == "pending",
                    "pending on the car")  # fmt: skip
        assert agent.state is not None and agent.state.starts_at == starts
        assert (agent.state.coverage_start, agent.state.coverage_end) == (
            date(2026, 12, 6), date(2027, 12, 5),
        )  # fmt: skip
        assert getattr(agent.status_view(), "status", None) == "pending"
        # 00:00 China time: the next status reply says active.
        night.clock.set_wall(starts)
        await until(lambda: agent.state is not None and agent.state.status == "active",
                    "covered from 00:00 China time")  # fmt: skip
        assert getattr(agent.status_view(), "status", None) == "covered"
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task


@pytest.mark.timeout(120)
async def test_a_car_never_insured_buys_cover_that_starts_on_payment_at_night(
    night: Night, tmp_path: Path
) -> None:
    agent, task = await a_car(night, NEVER, tmp_path)
    try:
        assert agent.state is not None and agent.state.status == "unknown"
        await agent.request_renewal("quote")
        await until(lambda: stage(agent, "quotes"), "the quotes")
        assert agent.renewal is not None
        first = agent.renewal.quotes[0]  # the same price: cover that starts soonest first
        assert (first.insurer_code, first.start_rule, first.start) == (
            "PINGAN", "on_payment", TODAY,
        )  # fmt: skip
        await agent.request_renewal("accept", first.quote_id)
        await until(lambda: stage(agent, "awaiting_payment"), "the payment link")
        await pay(night.insurers["PINGAN"], agent)
        await until(lambda: agent.state is not None and agent.state.status == "pending",
                    "pending until the next whole minute")  # fmt: skip
        now = night.clock.now()
        starts = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        assert agent.state is not None and agent.state.starts_at == starts
        assert agent.state.coverage_start == TODAY
        night.clock.set_wall(starts)
        await until(lambda: agent.state is not None and agent.state.status == "active",
                    "covered from payment")  # fmt: skip
    finally:
        agent.stop()
        async with asyncio.timeout(10):
            await task
