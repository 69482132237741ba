"""The source adapters against the real simulated services: retries, the breaker, strict
validation of every kind of bad answer, insurer calls, webhooks, the per-vehicle cache."""

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from agent.protocol.clock import ManualClock
from cloud.aggregate import SourceKind, SourcePolicy
from cloud.source_registry import SourceRegistry, vehicle_key
from cloud.sources import (
    InsurerClient,
    SourceClient,
    SourceConfig,
    SourceError,
    SourcesConfig,
    make_client,
)
from cloud.tariff import ClaimsRecord, Vehicle
from simulator.sources import HttpServer, Insurer, Knobs, NationalPlatform

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
VIN = "LSVAM4187C2184847"
PLATE = "沪A12345"
SECRET = b"pingan-webhook-secret"
FAST: dict[str, Any] = {
    "timeout_s": 1.0, "connect_timeout_s": 0.5, "attempts": 3, "backoff_base_s": 0.005,
    "backoff_cap_s": 0.01, "breaker_failures": 50, "breaker_cooldown_s": 10.0,
}  # fmt: skip


def config(name: str, kind: SourceKind, url: str, **kw: Any) -> SourceConfig:
    return SourceConfig.model_validate({"name": name, "kind": kind, "base_url": url} | FAST | kw)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
async def picc(clock: ManualClock) -> AsyncIterator[Insurer]:
    async with Insurer("PICC", "中国人保财险", clock=clock) as i:
        yield i


def client_for(insurer: Insurer, clock: ManualClock, **kw: Any) -> InsurerClient:
    client = make_client(config(insurer.code, "insurer", insurer.url, **kw), clock=clock,
                         rng=random.Random(1))  # fmt: skip
    assert isinstance(client, InsurerClient)
    return client


def failures(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if not k.endswith((".ok", ".retries"))}


# ---- look-ups ----------------------------------------------------------------


async def test_lookup_answers_typed_policies(picc: Insurer, clock: ManualClock) -> None:
    issued = picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    async with client_for(picc, clock) as client:
        answer = await client.lookup(PLATE, VIN)
        by_vin = await client.lookup(None, VIN.lower())
        by_plate = await client.lookup("沪A·12345", None)
        with pytest.raises(ValueError):
            await client.lookup(None, None)
    assert (answer.source, answer.kind, answer.as_of, answer.received_at) == (
        "PICC", "insurer", NOW, NOW,
    )  # fmt: skip
    assert answer.policies == (
        SourcePolicy(issued.policy_no, "PICC", "中国人保财险", PLATE, VIN, date(2026, 1, 1),
                     date(2026, 12, 31), "in_force", NOW),
    )  # fmt: skip
    assert by_vin.policies == by_plate.policies == answer.policies
    assert client.counters == {"PICC.ok": 3}


def seed_failing_first_then_not() -> int:
    """A seed whose random draws are one under 0.5 then one at or above it."""
    return next(
        s for s in range(1000)
        if (r := random.Random(s)).random() < 0.5 <= r.random()
    )  # fmt: skip


async def test_a_5xx_is_retried(clock: ManualClock) -> None:
    seed = seed_failing_first_then_not()
    async with (
        Insurer("PICC", "中国人保财险", clock=clock, seed=seed, knobs={"error_rate": 0.5}) as picc,
        client_for(picc, clock) as client,
    ):
        answer = await client.lookup(PLATE, VIN)
    assert answer.policies == ()
    assert picc.hits["GET /v1/policies"] == 2
    assert client.counters == {"PICC.retries": 1, "PICC.ok": 1}


async def test_retries_end_after_the_attempts(picc: Insurer, clock: ManualClock) -> None:
    picc.set_knobs(outage=True)
    async with client_for(picc, clock) as client:
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
    assert (info.value.reason, info.value.status, info.value.source) == ("unavailable", 503, "PICC")
    assert picc.hits["GET /v1/policies"] == 3
    assert client.counters == {"PICC.retries": 2, "PICC.unavailable": 1}


async def test_a_4xx_is_not_retried(picc: Insurer, clock: ManualClock) -> None:
    async with client_for(picc, clock) as client:
        with pytest.raises(SourceError) as info:
            await client.bind("q_nope", "key-1")
    assert (info.value.reason, info.value.status, info.value.code) == (
        "not_found", 404, "unknown_quote",
    )  # fmt: skip
    assert picc.hits["POST /v1/bindings"] == 1
    assert client.counters == {"PICC.not_found": 1}
    assert client.breaker.state == "closed" and client.breaker.consecutive == 0


# ---- every kind of bad answer ------------------------------------------------

BAD = [
    ({"malformed": "wrong_types"}, "invalid"),
    ({"malformed": "missing_fields"}, "invalid"),
    ({"malformed": "wrong_vehicle"}, "invalid"),
    ({"malformed": "not_json"}, "not_json"),
    ({"malformed": "html"}, "html"),
    ({"oversize_kib": 300}, "too_large"),
    ({"slow_drip": True, "drip_chunk_bytes": 16, "drip_interval_ms": 25}, "timeout"),
    ({"latency_ms": 400}, "timeout"),
    ({"outage": True}, "unavailable"),
    ({"outage": True, "html_errors": True}, "unavailable"),
    ({"error_rate": 1.0, "html_errors": True}, "unavailable"),
    ({"outage": True, "outage_mode": "close"}, "connection"),
]


@pytest.mark.parametrize(("knobs", "reason"), BAD, ids=[r + str(sorted(k)) for k, r in BAD])
async def test_every_bad_answer_is_one_typed_error(
    picc: Insurer, clock: ManualClock, knobs: dict[str, Any], reason: str
) -> None:
    picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    async with client_for(picc, clock, timeout_s=0.3, attempts=2) as client:
        good = await client.lookup(PLATE, VIN)
        picc.set_knobs(**knobs)
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
        assert info.value.reason == reason
        assert failures(client.counters) == {f"PICC.{reason}": 1}
        picc.set_knobs(**Knobs().model_dump())
        assert await client.lookup(PLATE, VIN) == good  # nothing else broken
        assert client.counters["PICC.ok"] == 2


async def test_an_answer_from_another_source_is_invalid(picc: Insurer, clock: ManualClock) -> None:
    async with SourceClient(config("national", "national", picc.url), clock=clock) as client:
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
    assert info.value.reason == "invalid" and "'PICC'" in str(info.value)


async def test_an_insurer_answering_for_another_is_invalid(clock: ManualClock) -> None:
    async with NationalPlatform(source="PINGAN", clock=clock) as fake:
        fake.add_policy(
            {"policy_no": "PDZA2026110000000009", "insurer_code": "PICC", "insurer_name": "x",
             "plate": PLATE, "vin": VIN, "start": "2026-01-01", "end": "2026-12-31",
             "issued_at": NOW.isoformat()}
        )  # fmt: skip
        async with SourceClient(config("PINGAN", "insurer", fake.url), clock=clock) as client:
            with pytest.raises(SourceError) as info:
                await client.lookup(PLATE, VIN)
    assert info.value.reason == "invalid" and "'PICC'" in str(info.value)


async def test_a_source_that_is_down(clock: ManualClock) -> None:
    async with NationalPlatform() as national:
        url = national.url
    async with SourceClient(config("national", "national", url), clock=clock) as client:
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
    assert info.value.reason == "connection"
    assert client.counters == {"national.retries": 2, "national.connection": 1}


# ---- the circuit breaker -----------------------------------------------------


async def test_breaker_opens_fails_fast_half_opens_and_closes(
    picc: Insurer, clock: ManualClock
) -> None:
    picc.set_knobs(outage=True)
    async with client_for(picc, clock, attempts=1, breaker_failures=3) as client:
        for _ in range(3):
            with pytest.raises(SourceError):
                await client.lookup(PLATE, VIN)
        assert client.breaker.state == "open" and client.counters["PICC.breaker_opened"] == 1
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
        assert info.value.reason == "circuit_open"
        assert picc.hits["GET /v1/policies"] == 3  # failed fast: never sent

        clock.advance(10)  # the cool-down: one trial, which fails and opens it again
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
        assert info.value.reason == "unavailable" and picc.hits["GET /v1/policies"] == 4
        assert client.breaker.state == "open" and client.counters["PICC.breaker_opened"] == 2
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
        assert info.value.reason == "circuit_open"

        picc.set_knobs(outage=False, latency_ms=100)
        clock.advance(10)  # half-open: one trial at a time, the others fail fast
        trial, other = await asyncio.gather(
            client.lookup(PLATE, VIN), client.lookup(PLATE, VIN), return_exceptions=True
        )
        assert not isinstance(trial, BaseException)
        assert isinstance(other, SourceError) and other.reason == "circuit_open"
        assert client.breaker.state == "closed"
        picc.set_knobs(latency_ms=0)
        await client.lookup(PLATE, VIN)
    assert failures(client.counters) == {
        "PICC.unavailable": 4, "PICC.circuit_open": 3, "PICC.breaker_opened": 2,
    }  # fmt: skip


async def test_the_breaker_cuts_retries_short_with_the_real_reason(
    picc: Insurer, clock: ManualClock
) -> None:
    picc.set_knobs(outage=True)
    async with client_for(picc, clock, attempts=5, breaker_failures=2) as client:
        with pytest.raises(SourceError) as info:
            await client.lookup(PLATE, VIN)
    assert info.value.reason == "unavailable" and picc.hits["GET /v1/policies"] == 2


async def test_a_cancelled_trial_frees_the_half_open_slot(
    picc: Insurer, clock: ManualClock
) -> None:
    picc.set_knobs(outage=True)
    async with client_for(picc, clock, attempts=1, breaker_failures=1) as client:
        with pytest.raises(SourceError):
            await client.lookup(PLATE, VIN)
        picc.set_knobs(outage=False, latency_ms=2000)
        clock.advance(10)
        trial = asyncio.create_task(client.lookup(PLATE, VIN))
        await asyncio.sleep(0.05)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        picc.set_knobs(latency_ms=0)
        await client.lookup(PLATE, VIN)  # the slot was freed: a new trial goes out
        assert client.breaker.state == "closed"


# ---- insurer calls -----------------------------------------------------------


def car(region: str = "310000", **changes: Any) -> Vehicle:
    """A 5-seat 1.5 L petrol family car with one claim-free year (the demo's car)."""
    claims = ClaimsRecord(first_insured=False, claim_free_years=1, at_fault_claims_last_year=0,
                          fatal_last_year=False)  # fmt: skip
    base: dict[str, Any] = dict(
        region=region,
        kind="family_car",
        seats=5,
        displacement_l=Decimal("1.5"),
        fuel="petrol",
        claims=claims,
    )
    return Vehicle(**(base | changes))


async def test_quote_bind_pay_order(picc: Insurer, clock: ManualClock) -> None:
    async with client_for(picc, clock) as client, httpx.AsyncClient() as phone:
        quote = await client.quote(PLATE, VIN, car(), start=date(2027, 1, 1))
        assert (quote.insurer_code, quote.start, quote.end, quote.start_rule) == (
            "PICC", date(2027, 1, 1), date(2027, 12, 31), "midnight",
        )  # fmt: skip
        # Shanghai uses scheme E: one claim-free year is -10 %, not the -30 % of scheme A.
        assert (quote.premium.ctpl, quote.premium.floating_rate, quote.premium.total) == (
            Decimal("855.00"), Decimal("-0.10"), Decimal("1215.00"),
        )  # fmt: skip
        assert quote.premium.row == "A1" and quote.premium.tax_exemption is None
        assert f"{quote.premium.total}" == "1215.00"
        assert quote.expires_at == NOW + timedelta(minutes=15)
        order = await client.bind(quote.quote_id, "consent-1")
        assert order.created and order.amount == Decimal("1215.00") and order.policy is None
        again = await client.bind(quote.quote_id, "consent-1")
        assert not again.created and again.order_id == order.order_id
        with pytest.raises(SourceError) as info:
            await client.bind(quote.quote_id, "consent-2")
        assert (info.value.reason, info.value.code) == ("conflict", "quote_already_bound")
        assert (await phone.post(order.payment_url)).status_code == 200
        paid = await client.order(order.order_id)
        assert paid.status == "paid" and paid.paid_at == NOW
        assert paid.policy is not None and paid.policy.start == date(2027, 1, 1)
        with pytest.raises(SourceError) as info:
            await client.order("ord_nope")
        assert info.value.reason == "not_found"
        for bad in (lambda: client.order("../admin"), lambda: client.bind("q", "")):
            with pytest.raises(ValueError):
                await bad()


async def test_an_expired_quote_is_gone(picc: Insurer, clock: ManualClock) -> None:
    async with client_for(picc, clock) as client:
        seven = car(seats=7, displacement_l=Decimal("2.0"),
                    claims=ClaimsRecord(False, 3, 0, False))  # fmt: skip
        quote = await client.quote(PLATE, VIN, seven, start=date(2026, 12, 1))
        assert quote.premium.total == Decimal("1220.00")  # 1100 × 0.7 + 450
        clock.advance(900)
        with pytest.raises(SourceError) as info:
            await client.bind(quote.quote_id, "too-late")
    assert (info.value.reason, info.value.status) == ("gone", 410)


async def test_a_quote_that_does_not_add_up_is_invalid(clock: ManualClock) -> None:
    app = FastAPI()
    sums = {"ctpl": "665.00", "vehicle_vessel_tax": "360.00", "total": "1000.00"}

    @app.post("/v1/quotes")
    async def quote() -> JSONResponse:
        premium = {"currency": "CNY", "base": "950.00", "floating_rate": "-0.30"} | sums
        body = {"quote_id": "q1", "insurer_code": "PICC", "insurer_name": "人保",
                "start": "2027-01-01", "end": "2027-12-31",
                "expires_at": "2026-11-25T02:15:00Z", "premium": premium}  # fmt: skip
        return JSONResponse(body, status_code=201)

    async with HttpServer(app) as liar:
        client = make_client(config("PICC", "insurer", liar.url), clock=clock)
        assert isinstance(client, InsurerClient)
        async with client:
            with pytest.raises(SourceError) as info:
                await client.quote(PLATE, VIN, car(), start=date(2027, 1, 1))
            assert info.value.reason == "invalid" and "total" in str(info.value)
            sums["total"] = "1025"  # not two places
            with pytest.raises(SourceError) as info:
                await client.quote(PLATE, VIN, car(), start=date(2027, 1, 1))
            assert info.value.reason == "invalid"
            sums["total"] = "1025.00"
            with pytest.raises(SourceError) as info:  # not the start asked for
                await client.quote(PLATE, VIN, car(), start=date(2027, 1, 2))
            assert info.value.reason == "invalid" and "not 2027-01-02" in str(info.value)


async def test_the_earliest_start_after_a_lapse_is_the_next_china_midnight(
    picc: Insurer, clock: ManualClock
) -> None:
    """At 00:30 China time the UTC date is still yesterday: the start must be tomorrow in
    China, and asking for today (00:00 already past) is refused, not backdated."""
    clock.set_wall(datetime(2026, 12, 4, 16, 30, tzinfo=UTC))  # 00:30 on 5 Dec in China
    async with client_for(picc, clock) as client:
        quote = await client.quote(PLATE, VIN, car(), start=None)
        assert (quote.start, quote.start_rule) == (date(2026, 12, 6), "midnight")
        with pytest.raises(SourceError) as info:
            await client.quote(PLATE, VIN, car(), start=date(2026, 12, 5))
        assert (info.value.reason, info.value.code) == ("refused", "start_in_past")


async def test_an_insurer_that_starts_cover_on_payment(clock: ManualClock) -> None:
    clock.set_wall(datetime(2026, 12, 3, 10, 31, 20, tzinfo=UTC))  # 18:31:20 in China
    async with (
        Insurer("PINGAN", "平安产险", clock=clock, earliest_start="on_payment") as pingan,
        client_for(pingan, clock) as client,
        httpx.AsyncClient() as phone,
    ):
        quote = await client.quote(PLATE, VIN, car(), start=None)
        assert (quote.start, quote.start_rule) == (date(2026, 12, 3), "on_payment")
        order = await client.bind(quote.quote_id, "consent-1")
        await phone.post(order.payment_url)
        paid = await client.order(order.order_id)
        assert paid.policy is not None
        assert paid.policy.starts_at == datetime(2026, 12, 3, 10, 32, tzinfo=UTC)
        assert (paid.policy.start, paid.policy.end) == (date(2026, 12, 3), date(2027, 12, 2))


async def test_a_new_energy_car_pays_no_vehicle_tax_and_other_kinds_are_refused(
    picc: Insurer, clock: ManualClock
) -> None:
    async with client_for(picc, clock) as client:
        bev = await client.quote(PLATE, VIN, car(fuel="bev", displacement_l=Decimal("0")),
                                 start=date(2027, 1, 1))  # fmt: skip
        assert (bev.premium.vehicle_vessel_tax, bev.premium.tax_exemption) == (
            Decimal("0.00"), "new_energy",
        )  # fmt: skip
        assert bev.premium.total == Decimal("855.00")
        with pytest.raises(SourceError) as info:
            await client.quote(PLATE, VIN, car(kind="truck"), start=date(2027, 1, 1))
        assert (info.value.reason, info.value.code) == ("refused", "vehicle_kind_unsupported")


async def test_the_national_platform_reports_the_vehicle_facts(clock: ManualClock) -> None:
    async with NationalPlatform(clock=clock) as national:
        national.add_vehicle({"vin": VIN, "plate": PLATE, "region": "110000", "seats": 7,
                              "displacement_l": "2.0", "fuel": "phev",
                              "claims": {"claim_free_years": 3}})  # fmt: skip
        async with make_client(config("national", "national", national.url), clock=clock) as c:
            found = await c.vehicle(None, VIN)  # by VIN alone: the registry gives the plate
            assert (found.vin, found.plate) == (VIN, PLATE)
            seven = car("110000", seats=7, displacement_l=Decimal("2.0"), fuel="phev",
                        claims=ClaimsRecord(False, 3, 0, False))  # fmt: skip
            assert found.vehicle == seven
            with pytest.raises(SourceError) as info:
                await c.vehicle(None, "LSVAM4187C2184848")
            assert info.value.reason == "not_found"
            national.set_knobs(malformed="wrong_vehicle")  # policies only: facts unaffected
            assert (await c.vehicle(PLATE, None)).vehicle.region == "110000"


# ---- the registry: every source at once, cached ------------------------------


@pytest.fixture
async def world(clock: ManualClock) -> AsyncIterator[tuple[NationalPlatform, Insurer, Insurer]]:
    async with NationalPlatform(clock=clock) as national:
        to = [national]
        async with (
            Insurer("PICC", "中国人保财险", clock=clock, reports_to=to) as picc,
            Insurer("PINGAN", "平安产险", clock=clock, reports_to=to) as pingan,
        ):
            yield national, picc, pingan


def registry_for(
    world: tuple[NationalPlatform, Insurer, Insurer], clock: ManualClock, **kw: Any
) -> SourceRegistry:
    national, picc, pingan = world
    sources = [config("national", "national", national.url, attempts=1),
               config("PICC", "insurer", picc.url, attempts=1),
               config("PINGAN", "insurer", pingan.url, attempts=1)]  # fmt: skip
    return SourceRegistry(SourcesConfig(sources=tuple(sources), **kw), clock=clock)


async def test_refresh_is_cached_per_vehicle_until_the_ttl(
    world: tuple[NationalPlatform, Insurer, Insurer], clock: ManualClock
) -> None:
    national, picc, _ = world
    picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    async with registry_for(world, clock, cache_ttl_s=60) as reg:
        first = await reg.refresh(PLATE, VIN)
        assert first.verdict == "confirmed" and national.hits["GET /v1/policies"] == 1
        assert await reg.refresh(PLATE, VIN) is first
        assert national.hits["GET /v1/policies"] == 1
        forced = await reg.refresh(PLATE, VIN, force=True)
        assert forced is not first and national.hits["GET /v1/policies"] == 2
        clock.advance(59)
        assert await reg.refresh(PLATE, VIN) is forced
        clock.advance(1)
        assert await reg.refresh(PLATE, VIN) is not forced
        assert national.hits["GET /v1/policies"] == 3
        other = await reg.refresh(None, "LFV2A21K6D4000001")  # another vehicle, its own entry
        assert other.verdict == "none" and national.hits["GET /v1/policies"] == 4
    assert reg.counters["cache.hit"] == 2 and reg.counters["cache.miss"] == 4


async def test_a_result_with_a_failure_is_cached_briefly(
    world: tuple[NationalPlatform, Insurer, Insurer], clock: ManualClock
) -> None:
    national, _, pingan = world
    pingan.set_knobs(outage=True)
    async with registry_for(world, clock, cache_ttl_s=300, retry_after_s=5) as reg:
        first = await reg.refresh(PLATE, VIN)
        assert [f.source for f in first.failures] == ["PINGAN"] and first.verdict == "unknown"
        clock.advance(5)
        await reg.refresh(PLATE, VIN)
        assert national.hits["GET /v1/policies"] == 2


async def test_concurrent_refreshes_share_one_round(
    world: tuple[NationalPlatform, Insurer, Insurer], clock: ManualClock
) -> None:
    national, picc, pingan = world
    for s in world:
        s.set_knobs(latency_ms=50)
    async with registry_for(world, clock) as reg:
        results = await asyncio.gather(*(reg.refresh(PLATE, VIN) for _ in range(5)))
    assert all(r is results[0] for r in results)
    assert [s.hits["GET /v1/policies"] for s in (national, picc, pingan)] == [1, 1, 1]


async def test_registry_config_and_lookups(
    world: tuple[NationalPlatform, Insurer, Insurer], clock: ManualClock
) -> None:
    async with registry_for(world, clock) as reg:
        assert reg.insurer("PICC").name == "PICC"
        with pytest.raises(KeyError):
            reg.insurer("national")
    one = config("national", "national", "http://127.0.0.1:9")
    for sources in ((one, one), (one, one.model_copy(update={"name": "other"}))):
        with pytest.raises(ValueError):
            SourcesConfig(sources=sources)
    with pytest.raises(ValueError):
        config("x", "insurer", "ftp://example.com")
    by_plate = vehicle_key("沪A·12345", None)
    assert by_plate == vehicle_key(" 沪a12345", None) != vehicle_key(None, VIN)
    assert vehicle_key(PLATE, VIN.lower()) == VIN
