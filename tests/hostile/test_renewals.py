"""Insurers and cars against renewals, in the end-to-end world of tests/e2e/test_renewal.py
(a real agent, broker, worker with its HTTPS API, the simulated national platform and two
insurers): an insurer completing another's order or dictating the cover, and a car making
the cloud ask every source without end."""

import json
import ssl
import time
from pathlib import Path

import httpx

from agent.protocol import messages
from cloud.store import Store
from cloud.webhooks import sign
from simulator.fleet import synthetic_plate, synthetic_vin
from tests.e2e.helpers import until
from tests.e2e.test_renewal import SECRETS, World, running_agent, stop

from .conftest import TallyFactory
from .figures import Tally
from .harness import Cloud

RENEWALS = "insurer webhooks"


def _cloud(world: World) -> Cloud:
    """The harness's view of the world's worker, for the checks after each attack."""
    return Cloud(world.pki, world.broker, world.db, world.worker, world.task)


async def test_an_insurer_cannot_complete_another_insurers_order_nor_dictate_the_cover(
    world: World, tmp_path: Path, tally: TallyFactory
) -> None:
    wrong = tally(
        "cross-insurer webhook (PINGAN signs PICC's order paid, to 2099)",
        group=RENEWALS,
        expected="403 `wrong_insurer` (401/400/404 when malformed)",
    )
    unpaid = tally(
        "webhook before the insurer's record shows payment",
        group=RENEWALS,
        expected="409 `order_unpaid`",
    )
    mismatch = tally(
        "webhook body contradicting the insurer's record",
        group=RENEWALS,
        expected="409 `webhook_mismatch`",
    )
    cloud = _cloud(world)
    agent, task = await running_agent(world, 2, tmp_path)
    try:
        await agent.request_renewal("quote")
        await until(
            lambda: agent.renewal is not None and agent.renewal.stage == "quotes", "the quotes"
        )
        assert agent.renewal is not None
        picc = next(q for q in agent.renewal.quotes if q.insurer_code == "PICC")
        pingan = next(q for q in agent.renewal.quotes if q.insurer_code == "PINGAN")
        await agent.request_renewal("accept", picc.quote_id)
        await until(
            lambda: agent.renewal is not None and agent.renewal.stage == "awaiting_payment",
            "the payment link",
        )
        assert agent.renewal is not None and agent.renewal.payment_url is not None
        order_id = agent.renewal.payment_url.rsplit("/", 1)[-1]

        def body(
            code: str = "PICC",
            order: str = order_id,
            quote: str = picc.quote_id,
            policy: dict[str, object] | None = None,
        ) -> bytes:
            """An order.paid body; ``policy`` replaces fields of its policy."""
            fields = {
                "policy_no": "PDZA2099000000000001",
                "insurer_code": code,
                "insurer_name": "中国人保财险",
                "plate": synthetic_plate(2),
                "vin": synthetic_vin(2),
                "start": picc.start.isoformat(),
                "end": "2099-12-31",
                "status": "in_force",
                "issued_at": "2026-12-01T00:00:00Z",
                **(policy or {}),
            }
            return json.dumps(
                {
                    "event": "order.paid",
                    "order_id": order,
                    "quote_id": quote,
                    "insurer_code": code,
                    "policy": fields,
                    "paid_at": "2026-12-01T00:00:00Z",
                }
            ).encode()

        async def deliver(
            code: str, secret: str, payload: bytes, ts: int | None = None
        ) -> tuple[int, str]:
            url = f"https://127.0.0.1:{world.api_port}/v1/webhooks/insurers/{code}"
            stamp = str(int(time.time()) if ts is None else ts)
            headers = {
                "X-CTPL-Timestamp": stamp,
                "X-CTPL-Signature": sign(secret.encode(), stamp, payload),
            }
            tls = ssl.create_default_context(cafile=str(world.pki.ca_cert))
            async with httpx.AsyncClient(verify=tls) as client:
                r = await client.post(url, content=payload, headers=headers)
            return r.status_code, r.json().get("error", "")

        async def attempt(
            row: Tally,
            what: str,
            expected: tuple[int, str],
            code: str,
            secret: str,
            payload: bytes,
            ts: int | None = None,
        ) -> None:
            got = await deliver(code, secret, payload, ts)
            issued = agent.renewal is not None and agent.renewal.stage == "issued"
            row.record(
                refused=got == expected,
                leaked=issued,
                crashed=got[0] >= 500,
                what=f"{what}: {got}",
            )

        pingan_secret, picc_secret = SECRETS["PINGAN"], SECRETS["PICC"]
        for what, payload, expected in [
            ("PINGAN's code in the body", body("PINGAN"), (403, "wrong_insurer")),
            (
                "PINGAN's code, PICC's true term",
                body("PINGAN", policy={"end": picc.end.isoformat()}),
                (403, "wrong_insurer"),
            ),
            (
                "PINGAN's own quote id",
                body("PINGAN", quote=pingan.quote_id),
                (403, "wrong_insurer"),
            ),
            ("PICC's code in the body", body("PICC"), (400, "bad_body")),
            (
                "an order PINGAN made up",
                body("PINGAN", order="ord_made_up"),
                (404, "unknown_order"),
            ),
        ]:
            await attempt(wrong, what, expected, "PINGAN", pingan_secret, payload)
        await attempt(
            wrong,
            "to PICC's URL with PINGAN's secret",
            (401, "bad_signature"),
            "PICC",
            pingan_secret,
            body(),
        )
        await attempt(
            wrong,
            "PICC's own, 10 minutes old",
            (401, "stale_delivery"),
            "PICC",
            picc_secret,
            body(),
            ts=int(time.time()) - 600,
        )

        for what, payload in [
            ("to 2099", body()),
            ("its true term", body(policy={"end": picc.end.isoformat()})),
        ]:
            await attempt(unpaid, what, (409, "order_unpaid"), "PICC", picc_secret, payload)

        insurer = world.insurers["PICC"]
        insurer.webhook_url = None  # its own delivery waits: the forged ones come first
        async with httpx.AsyncClient() as phone:  # now the driver pays
            await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")
        record = insurer.orders[order_id].policy
        assert record is not None
        true = {
            "policy_no": record.policy_no,
            "start": record.start.isoformat(),
            "end": record.end.isoformat(),
        }
        for what, changes in [
            ("cover to 2099", {"end": "2099-12-31"}),
            (
                "a term a year longer",
                {"end": record.end.replace(year=record.end.year + 1).isoformat()},
            ),
            (
                "a start a year early",
                {"start": record.start.replace(year=record.start.year - 1).isoformat()},
            ),
            ("another policy number", {"policy_no": "PDZA2099000000000001"}),
            (
                "cover from an instant it chose",
                {"starts_at": f"{record.start}T00:00:00+08:00"}
                if record.starts_at is None
                else {"starts_at": None},
            ),
        ]:
            await attempt(
                mismatch,
                what,
                (409, "webhook_mismatch"),
                "PICC",
                picc_secret,
                body(policy={**true, **changes}),
            )
        genuine = insurer.webhook_body(insurer.orders[order_id])
        assert await deliver("PICC", picc_secret, genuine) == (200, "")
        await until(
            lambda: agent.renewal is not None and agent.renewal.stage == "issued",
            "the genuine webhook issued the term",
        )
        await until(
            lambda: agent.state is not None and agent.state.next_coverage_end == picc.end,
            "the insurer's own term on the car",
        )
    finally:
        await stop(agent, task)
    async with await Store.open(world.db) as store:
        policy = (await store.load_policies(agent.vid))[agent.vid]
    if policy.next_end != record.end or (policy.next_end and policy.next_end.year == 2099):
        mismatch.leaked += 1
        mismatch.notes.append(f"stored next end {policy.next_end}")
    try:
        for row in (wrong, unpaid, mismatch):
            if not await cloud.answers() or cloud.crashed():
                row.crashed("the worker no longer answers a signed request")
            row.check()
    finally:
        await cloud.close_cars()


async def test_a_car_cannot_make_the_cloud_ask_the_sources_without_end(
    world: World, tally: TallyFactory
) -> None:
    """Six look-ups in ten minutes are acted on; the seventh and every one after it gets
    ``rate_limited``, sent by a bare car (no agent to slow it down)."""
    row = tally(
        "rate limit: look-ups from one car past six in ten minutes",
        group="rate limit",
        expected="`renewal.update` failed, `rate_limited`",
    )
    cloud = _cloud(world)
    try:
        await _flood(world, cloud, row)
    finally:
        await cloud.close_cars()


async def _flood(world: World, cloud: Cloud, row: Tally) -> None:
    vid = world.pki.vids()[1]
    car = await cloud.car(vid)
    before = world.national.hits["GET /v1/policies"]

    async def ask() -> messages.RenewalUpdate | None:
        """One "already renewed" request: the cloud's final word on it (None if none)."""
        _, intent, payload = cloud.renewal_request(car, "already_renewed")
        cloud.publish(car, "renewal", payload)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            heard = await cloud.next_heard(car, 10)
            body = heard.body if heard is not None else None
            if (
                isinstance(body, messages.RenewalUpdate)
                and body.intent_id == intent
                and body.stage != "checking"
            ):
                return body
        return None

    for n in range(6):  # a driver's taps: each acted on
        answer = await ask()
        assert answer is not None and answer.reason != "rate_limited", f"request {n + 1}"
    for n in range(10):  # the car goes on
        answer = await ask()
        refused = (
            answer is not None
            and (answer.stage, answer.reason) == ("failed", "rate_limited")
            and (answer.retry_after_s or 0) >= 1
        )
        row.record(refused=refused, what=f"request {7 + n}: {answer and answer.reason}")
    asked = world.national.hits["GET /v1/policies"] - before
    if asked != 6:
        row.leaked += max(asked - 6, 0)
        row.notes.append(f"the national platform was asked {asked} times")
    assert world.worker.renewals is not None
    assert world.worker.renewals.counters["refused.rate_limited"] == 10
    if not await cloud.answers() or cloud.crashed():
        row.crashed("the worker no longer answers a signed request")
    row.check()
