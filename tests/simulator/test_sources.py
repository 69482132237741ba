"""The simulated national platform and insurers, over real HTTP: quotes and their arithmetic,
bindings, payment, webhooks, lag, and every fault knob."""

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agent.protocol.clock import ManualClock
from cloud.webhooks import order_paid, verify
from simulator.sources import HttpServer, Insurer, NationalPlatform, ThirdPartyPlatform
from simulator.sources.premium import term_for

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 in China
VIN = "LSVAM4187C2184847"
PLATE = "沪A12345"
SECRET = b"picc-webhook-secret"
T = 10.0


def ask(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "plate": PLATE, "vin": VIN, "region": "310000", "kind": "family_car", "seats": 5,
        "displacement_l": "1.5", "fuel": "petrol",
        "claims": {"first_insured": False, "claim_free_years": 1, "at_fault_claims_last_year": 0,
                   "fatal_last_year": False},
        "start": "2027-01-01",
    }  # fmt: skip
    return body | changes


def claims(free: int = 1, claims_: int = 0, fatal: bool = False, first: bool = False) -> Any:
    return {"first_insured": first, "claim_free_years": free,
            "at_fault_claims_last_year": claims_, "fatal_last_year": fatal}  # fmt: skip


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
async def national(clock: ManualClock) -> AsyncIterator[NationalPlatform]:
    async with NationalPlatform(lag_s=60, clock=clock) as n:
        yield n


@pytest.fixture
async def picc(clock: ManualClock, national: NationalPlatform) -> AsyncIterator[Insurer]:
    async with Insurer("PICC", "中国人保财险", reports_to=[national], clock=clock,
                       webhook_secret=SECRET, webhook_backoff_s=0.01) as i:  # fmt: skip
        yield i


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=T) as c:
        yield c


# ---- the premium every insurer quotes (cloud.tariff, tested in tests/cloud) ----

PREMIUMS = [
    # region, seats, litres, fuel, claims, row, rate, ctpl, tax, total
    ("310000", 5, "1.5", "petrol", claims(1), "A1", "-0.10", "855.00", "360.00", "1215.00"),
    ("310000", 5, "1.0", "petrol", claims(2), "A2", "-0.20", "760.00", "180.00", "940.00"),
    ("310000", 5, "1.6", "petrol", claims(0, 1), "A4", "0.00", "950.00", "360.00", "1310.00"),
    ("310000", 7, "2.0", "petrol", claims(0, 0, True), "A6", "0.30", "1430.00", "450.00",
     "1880.00"),
    ("310000", 5, "0.0", "bev", claims(0, first=True), "new", "0.00", "950.00", "0.00",
     "950.00"),
    ("110000", 5, "1.5", "petrol", claims(1), "A1", "-0.15", "807.50", "420.00", "1227.50"),
    ("440300", 5, "2.0", "petrol", claims(3), "A3", "-0.30", "665.00", "420.00", "1085.00"),
    ("150000", 5, "0.0", "bev", claims(1), "A1", "-0.30", "665.00", "0.00", "665.00"),
    ("610000", 5, "1.5", "phev", claims(2), "A2", "-0.35", "617.50", "0.00", "617.50"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (date(2027, 1, 1), date(2027, 12, 31)),
        (date(2028, 2, 29), date(2029, 2, 28)),  # a 29 Feb start
        (date(2027, 3, 1), date(2028, 2, 29)),  # a term across a leap day
        (date(2028, 3, 1), date(2029, 2, 28)),
        (date(2027, 2, 28), date(2028, 2, 27)),
    ],
)
def test_term_is_one_year_less_a_day(start: date, end: date) -> None:
    assert term_for(start) == (start, end)


# ---- quotes over HTTP --------------------------------------------------------


async def test_quotes_over_http_follow_the_regional_tariff(
    picc: Insurer, http: httpx.AsyncClient
) -> None:
    for region, seats, litres, fuel, record, row, rate, ctpl, tax, total in PREMIUMS:
        body = ask(region=region, seats=seats, displacement_l=litres, fuel=fuel, claims=record)
        r = await http.post(f"{picc.url}/v1/quotes", json=body)
        assert r.status_code == 201, r.text
        q = r.json()
        p = q["premium"]
        assert (p["row"], p["floating_rate"], p["ctpl"], p["vehicle_vessel_tax"], p["total"]) == (
            row, rate, ctpl, tax, total,
        ), region  # fmt: skip
        assert p["tax_exemption"] == ("new_energy" if fuel in ("bev", "phev") else None)
        assert (q["insurer_code"], q["insurer_name"]) == ("PICC", "中国人保财险")
        assert (q["start"], q["end"], q["start_rule"]) == ("2027-01-01", "2027-12-31", "midnight")
        assert datetime.fromisoformat(q["expires_at"]) == NOW + timedelta(minutes=15)


async def test_a_surcharge_knob_quotes_off_the_tariff(
    picc: Insurer, http: httpx.AsyncClient
) -> None:
    picc.set_knobs(ctpl_surcharge_cny=100)
    r = await http.post(f"{picc.url}/v1/quotes", json=ask())
    assert (r.json()["premium"]["ctpl"], r.json()["premium"]["total"]) == ("955.00", "1315.00")


async def test_a_29_february_start(http: httpx.AsyncClient) -> None:
    clock = ManualClock(datetime(2028, 2, 1, tzinfo=UTC))
    async with Insurer("PINGAN", "平安产险", clock=clock) as pingan:
        r = await http.post(f"{pingan.url}/v1/quotes", json=ask(start="2028-02-29"))
    assert r.status_code == 201
    assert (r.json()["start"], r.json()["end"]) == ("2028-02-29", "2029-02-28")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"start": "2026-11-24"}, "start_in_past"),
        ({"start": "2026-11-25"}, "start_in_past"),  # 00:00 today is past: not backdated
        ({"start": "2027-03-01"}, "too_early"),  # more than 90 days ahead
        ({"kind": "taxi"}, "vehicle_kind_unsupported"),
        ({"region": "990000"}, "region_unsupported"),
        ({"region": "150000"}, "tax_table_missing"),  # a petrol car in Inner Mongolia
        ({"claims": claims(0)}, "bad_facts"),
        ({"displacement_l": 1.5}, "bad_request"),
        ({"use": "private"}, "bad_request"),
        ({"seats": "five"}, "bad_request"),
        ({"vin": "LSVAM4187C218484"}, "bad_request"),
        ({"extra": 1}, "bad_request"),
    ],
)
async def test_quote_refusals(
    picc: Insurer, http: httpx.AsyncClient, changes: dict[str, Any], code: str
) -> None:
    r = await http.post(f"{picc.url}/v1/quotes", json=ask(**changes))
    assert (r.status_code, r.json()["error"]["code"]) == (422, code)


# ---- bindings, payment -------------------------------------------------------


async def quote_id(insurer: Insurer, http: httpx.AsyncClient, **changes: Any) -> str:
    r = await http.post(f"{insurer.url}/v1/quotes", json=ask(**changes))
    assert r.status_code == 201, r.text
    qid: str = r.json()["quote_id"]
    return qid


async def bind(insurer: Insurer, http: httpx.AsyncClient, qid: str, key: str) -> httpx.Response:
    return await http.post(f"{insurer.url}/v1/bindings", json={"quote_id": qid},
                           headers={"Idempotency-Key": key})  # fmt: skip


async def test_binding_is_idempotent(picc: Insurer, http: httpx.AsyncClient) -> None:
    qid, other = await quote_id(picc, http), await quote_id(picc, http)
    first = await bind(picc, http, qid, "key-1")
    assert first.status_code == 201
    order = first.json()
    assert order["amount"] == "1215.00" and order["currency"] == "CNY"
    assert order["status"] == "awaiting_payment" and order["quote_id"] == qid
    assert order["payment_url"] == f"{picc.url}/pay/{order['order_id']}"
    again = await bind(picc, http, qid, "key-1")
    assert (again.status_code, again.json()) == (200, order)
    assert len(picc.orders) == 1
    conflict = await bind(picc, http, qid, "key-2")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "quote_already_bound")
    reused = await bind(picc, http, other, "key-1")
    assert (reused.status_code, reused.json()["error"]["code"]) == (409, "idempotency_key_reused")
    unknown = await bind(picc, http, "q_nope", "key-3")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_quote")
    keyless = await http.post(f"{picc.url}/v1/bindings", json={"quote_id": other})
    assert (keyless.status_code, keyless.json()["error"]["code"]) == (
        400, "idempotency_key_required",
    )  # fmt: skip
    assert len(picc.orders) == 1


async def test_an_expired_quote_is_gone(
    picc: Insurer, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    qid = await quote_id(picc, http)
    clock.advance(15 * 60)
    r = await bind(picc, http, qid, "late")
    assert (r.status_code, r.json()["error"]["code"]) == (410, "quote_expired")
    picc.set_knobs(quote_ttl_s=1)
    qid = await quote_id(picc, http)
    clock.advance(0.5)
    assert (await bind(picc, http, qid, "quick")).status_code == 201


async def test_paying_twice_charges_once_and_issues_one_policy(
    picc: Insurer, national: NationalPlatform, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    order = (await bind(picc, http, await quote_id(picc, http), "k")).json()
    oid = order["order_id"]
    paid = await http.post(f"{picc.url}/v1/orders/{oid}/pay")
    again = await http.post(f"{picc.url}/v1/orders/{oid}/pay")
    assert paid.status_code == again.status_code == 200
    assert paid.json() == again.json()
    assert picc.orders[oid].charges == 1
    policy = paid.json()["policy"]
    assert policy["policy_no"].startswith("PDZA2026") and policy["status"] == "in_force"
    assert (policy["start"], policy["end"], policy["vin"]) == ("2027-01-01", "2027-12-31", VIN)
    got = (await http.get(f"{picc.url}/v1/orders/{oid}")).json()
    assert got["status"] == "paid" and got["policy"] == policy
    assert (await http.get(f"{picc.url}/v1/orders/nope")).status_code == 404
    # The insurer knows at once; the national platform after its lag.
    mine = (await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})).json()
    assert [p["policy_no"] for p in mine["policies"]] == [policy["policy_no"]]
    assert mine["source"] == "PICC"
    nat = (await http.get(f"{national.url}/v1/policies", params={"plate": PLATE})).json()
    assert nat["policies"] == [] and nat["source"] == "national"
    clock.advance(60)
    nat = (await http.get(f"{national.url}/v1/policies", params={"plate": "沪A·12345"})).json()
    assert nat["policies"] == [policy]
    assert datetime.fromisoformat(nat["as_of"]) == clock.now()


async def test_the_payment_page(picc: Insurer, http: httpx.AsyncClient) -> None:
    order = (await bind(picc, http, await quote_id(picc, http), "page")).json()
    page = await http.get(order["payment_url"])
    assert page.headers["content-type"].startswith("text/html") and "1215.00" in page.text
    assert "<form" in page.text
    done = await http.post(order["payment_url"])
    assert "支付成功" in done.text and picc.orders[order["order_id"]].charges == 1


async def test_cancellation_reaches_the_national_platform_late(
    picc: Insurer, national: NationalPlatform, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    policy = picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    clock.advance(61)
    picc.cancel_policy(policy.policy_no)
    status = {"vin": VIN}
    assert (await http.get(f"{picc.url}/v1/policies", params=status)).json()["policies"][0][
        "status"
    ] == "cancelled"
    assert (await http.get(f"{national.url}/v1/policies", params=status)).json()["policies"][0][
        "status"
    ] == "in_force"
    clock.advance(61)
    assert (await http.get(f"{national.url}/v1/policies", params=status)).json()["policies"][0][
        "status"
    ] == "cancelled"


async def test_seeding_and_queries(national: NationalPlatform, http: httpx.AsyncClient) -> None:
    policy = {
        "policy_no": "PDZA2026990000000001", "insurer_code": "CPIC", "insurer_name": "太平洋产险",
        "plate": "粤B88888", "vin": "LFV2A21K6D4000001", "start": "2026-03-01",
        "end": "2027-02-28", "status": "in_force", "issued_at": "2026-02-20T08:00:00Z",
    }  # fmt: skip
    r = await http.post(f"{national.url}/_admin/policies", json=policy)
    assert r.status_code == 201
    found = (await http.get(f"{national.url}/v1/policies", params={"vin": policy["vin"]})).json()
    assert [p["policy_no"] for p in found["policies"]] == [policy["policy_no"]]
    both = {"vin": policy["vin"], "plate": "京A00000"}  # every key given must match
    assert (await http.get(f"{national.url}/v1/policies", params=both)).json()["policies"] == []
    assert (await http.get(f"{national.url}/v1/policies")).status_code == 400
    bad = await http.post(f"{national.url}/_admin/policies", json=policy | {"vin": "short"})
    assert bad.status_code == 422


async def test_a_third_party_names_itself(http: httpx.AsyncClient) -> None:
    async with ThirdPartyPlatform(source="cheche") as tp:
        r = await http.get(f"{tp.url}/v1/policies", params={"vin": VIN})
    assert r.json()["source"] == "cheche"


# ---- webhooks ----------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint that fails its first ``fail_first`` deliveries with a 500."""

    fail_first: int = 0
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/insurer")
        async def hook(request: Request) -> Response:
            self.got.append((dict(request.headers), await request.body()))
            if len(self.got) <= self.fail_first:
                return Response("boom", status_code=500)
            return Response(status_code=204)

        return app


async def pay_one(insurer: Insurer, http: httpx.AsyncClient) -> str:
    order = (await bind(insurer, http, await quote_id(insurer, http), "hook")).json()
    r = await http.post(f"{insurer.url}/v1/orders/{order['order_id']}/pay")
    assert r.status_code == 200
    oid: str = order["order_id"]
    return oid


async def test_webhook_is_signed_and_retried_until_accepted(
    picc: Insurer, clock: ManualClock, http: httpx.AsyncClient
) -> None:
    receiver = Receiver(fail_first=2)
    async with HttpServer(receiver.app()) as hooks:
        picc.webhook_url = f"{hooks.url}/hooks/insurer"
        oid = await pay_one(picc, http)
        await picc.drain_webhooks()
    assert len(receiver.got) == 3
    assert [(a.attempt, a.status) for a in picc.webhook_attempts_log] == [
        (1, 500), (2, 500), (3, 204),
    ]  # fmt: skip
    headers, body = receiver.got[-1]
    ts = headers["x-ctpl-timestamp"]
    assert ts == str(int(clock.now().timestamp()))
    mac = hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-ctpl-signature"] == f"sha256={mac}"
    event = json.loads(body)
    assert event["event"] == "order.paid" and event["order_id"] == oid
    assert event["insurer_code"] == "PICC" and event["policy"] == picc.orders[oid].policy.wire()  # type: ignore[union-attr]
    assert set(event) == {"event", "order_id", "quote_id", "insurer_code", "policy", "paid_at"}
    verify(SECRET, ts, headers["x-ctpl-signature"], body, clock.now())  # the cloud's check
    order_id, issued = order_paid(body, "PICC")
    assert order_id == oid and issued.start == date(2027, 1, 1)


async def test_duplicate_webhooks_knob(picc: Insurer, http: httpx.AsyncClient) -> None:
    receiver = Receiver()
    picc.set_knobs(duplicate_webhooks=True)
    async with HttpServer(receiver.app()) as hooks:
        picc.webhook_url = f"{hooks.url}/hooks/insurer"
        await pay_one(picc, http)
        await picc.drain_webhooks()
    assert len(receiver.got) == 2 and receiver.got[0][1] == receiver.got[1][1]
    assert [a.delivery for a in picc.webhook_attempts_log] == [1, 2]


async def test_webhook_attempts_are_bounded(clock: ManualClock, http: httpx.AsyncClient) -> None:
    async with HttpServer(FastAPI()) as gone:
        dead = f"{gone.url}/hooks/insurer"
    async with Insurer("PICC", "中国人保财险", clock=clock, webhook_url=dead,
                       webhook_attempts=3, webhook_backoff_s=0.01) as picc:  # fmt: skip
        await pay_one(picc, http)
        await picc.drain_webhooks()
    attempts = picc.webhook_attempts_log
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert all(a.status is None and a.error == "ConnectError" for a in attempts)


# ---- knobs -------------------------------------------------------------------


async def test_latency_knob(picc: Insurer, http: httpx.AsyncClient) -> None:
    picc.set_knobs(latency_ms=150)
    started = time.monotonic()
    assert (await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})).status_code == 200
    assert time.monotonic() - started >= 0.15


async def test_error_rate_is_deterministic_with_a_seed(http: httpx.AsyncClient) -> None:
    async def statuses(seed: int) -> list[int]:
        async with NationalPlatform(seed=seed, knobs={"error_rate": 0.5}) as n:
            return [(await http.get(f"{n.url}/v1/policies", params={"vin": VIN})).status_code
                    for _ in range(12)]  # fmt: skip

    first, second = await statuses(7), await statuses(7)
    expected = [503 if random.Random(7).random() < 0.5 else 200 for _ in range(1)]
    assert first == second and set(first) == {200, 503} and first[:1] == expected


async def test_outage_and_html_errors(picc: Insurer, http: httpx.AsyncClient) -> None:
    picc.set_knobs(outage=True)
    r = await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})
    assert (r.status_code, r.json()["error"]["code"]) == (503, "outage")
    picc.set_knobs(html_errors=True)
    r = await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>")
    # The admin routes and paying stay up through an outage.
    assert (await http.get(f"{picc.url}/_admin/knobs")).json()["outage"] is True
    picc.set_knobs(outage=False)
    r = await http.get(f"{picc.url}/v1/orders/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


async def test_outage_that_drops_connections(picc: Insurer, http: httpx.AsyncClient) -> None:
    picc.set_knobs(outage=True, outage_mode="close")
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})
    picc.set_knobs(outage=False)
    assert (await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})).status_code == 200


async def test_slow_drip(picc: Insurer, http: httpx.AsyncClient) -> None:
    picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    picc.set_knobs(slow_drip=True, drip_chunk_bytes=64, drip_interval_ms=10)
    started = time.monotonic()
    async with http.stream("GET", f"{picc.url}/v1/policies", params={"vin": VIN}) as r:
        chunks = [c async for c in r.aiter_raw()]
    body = b"".join(chunks)
    assert len(chunks) > 3 and json.loads(body)["policies"][0]["vin"] == VIN
    assert time.monotonic() - started >= (len(body) // 64) * 0.01


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("wrong_types", lambda b: json.loads(b)["policies"][0]["start"] == 20260101),
        ("missing_fields", lambda b: "end" not in json.loads(b)["policies"][0]),
        ("not_json", lambda b: b.startswith(b"{") and not b.rstrip().endswith(b"}")),
        ("html", lambda b: b.startswith(b"<!DOCTYPE html>")),
        ("wrong_vehicle", lambda b: json.loads(b)["policies"][0]["vin"] != VIN),
    ],
)
async def test_malformed_knob(
    picc: Insurer, http: httpx.AsyncClient, mode: str, check: Any
) -> None:
    picc.issue_policy(PLATE, VIN, date(2026, 1, 1))
    r = await http.post(f"{picc.url}/_admin/knobs", json={"malformed": mode})
    assert r.status_code == 200 and r.json()["malformed"] == mode
    r = await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})
    assert r.status_code == 200 and check(r.content)


async def test_oversize_knob(picc: Insurer, http: httpx.AsyncClient) -> None:
    picc.set_knobs(oversize_kib=300)
    r = await http.get(f"{picc.url}/v1/policies", params={"vin": VIN})
    assert len(r.content) > 300 * 1024 and r.json()["source"] == "PICC"


async def test_knobs_over_http(national: NationalPlatform, http: httpx.AsyncClient) -> None:
    r = await http.post(f"{national.url}/_admin/knobs", json={"lag_s": 5, "malformed": True})
    assert r.status_code == 200 and (r.json()["lag_s"], r.json()["malformed"]) == (
        5, "wrong_types",
    )  # fmt: skip
    assert national.knobs.lag_s == 5
    for bad in ({"lag_s": -1}, {"error_rate": 2}, {"no_such_knob": 1}, {"malformed": "zzz"}):
        r = await http.post(f"{national.url}/_admin/knobs", json=bad)
        assert r.status_code == 422, bad
    assert national.knobs.lag_s == 5 and national.knobs.error_rate == 0


async def test_a_stopped_service_restarts_on_its_port(http: httpx.AsyncClient) -> None:
    async with NationalPlatform() as n:
        url = n.url
        await n.stop()
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/v1/policies", params={"vin": VIN})
        await n.start()
        assert n.url == url
        r = await asyncio.wait_for(http.get(f"{url}/v1/policies", params={"vin": VIN}), T)
        assert r.status_code == 200
