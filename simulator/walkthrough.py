"""The demo's renewal walk-through: the outside world (national platform, two insurers)
and three drivers who act on their head units.

- The driver of the first car showing the 30-day prompt taps "Renew now", compares the
  quotes (the same CTPL price at both insurers: 855.00 for a Shanghai car with a year
  without claims), chooses one, and pays on a phone (the payment link the head unit shows
  as a QR code): the insurer's webhook reaches the cloud, and the car's head unit shows
  the new term, which starts when the old one ends; its prompt is gone.
- The driver of the first car showing the 15-day prompt bought a policy at a counter;
  they tap "Already renewed": the cloud asks the sources again at once, finds it, and
  the prompts stop.
- The driver of the first parked car whose cover has lapsed (an electric car: no vehicle
  tax) taps "Renew now": PICC's cover would start at the next 00:00 China time, PINGAN's
  on payment; the driver takes PINGAN's and pays. The head unit shows 待生效 (pending:
  uninsured) until the minute cover starts, then covered.
"""

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from agent import texts
from agent.protocol import calendar
from agent.protocol.messages import Quote
from agent.runner import Agent
from cloud.pki import DevPki, write_private

from .fleet import demo_plate, synthetic_vin
from .sources import Insurer, NationalPlatform
from .sources.insurer import EarliestStart

INSURERS: Final[tuple[tuple[str, str, EarliestStart], ...]] = (
    ("PICC", "中国人保财险", "next_midnight"),
    ("PINGAN", "平安产险", "on_payment"),
)
"""The demo's insurers and when each lets a lapsed car's cover start."""
COVERED_WAIT_S: Final = 75.0
"""How long the lapsed car may wait for its on-payment cover (the next whole minute)."""


class OutsideWorld:
    """The national platform and the insurers, as real HTTP servers on free ports."""

    def __init__(self, pki: DevPki, api_port: int) -> None:
        self.national = NationalPlatform()
        self.secrets = {code: secrets.token_urlsafe(24) for code, _, _ in INSURERS}
        self.insurers = {
            code: Insurer(
                code, name, webhook_secret=self.secrets[code], webhook_ca=pki.ca_cert,
                webhook_url=f"https://127.0.0.1:{api_port}/v1/webhooks/insurers/{code}",
                reports_to=[self.national], earliest_start=earliest,
            )
            for code, name, earliest in INSURERS
        }  # fmt: skip
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> "OutsideWorld":
        await self._stack.enter_async_context(self.national)
        for insurer in self.insurers.values():
            await self._stack.enter_async_context(insurer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def seed(self, rows: list[dict[str, str]], vehicles: list[dict[str, Any]]) -> None:
        """Tell the sources of the fleet's current policies (rows keyed by VIN) and the
        national platform of every car's facts (what a premium is priced by)."""
        for facts in vehicles:
            self.national.add_vehicle(facts)
        now = datetime.now(UTC)
        for i, row in enumerate(rows):
            policy = {
                "policy_no": f"PDZA{row['coverage_start'][:4]}{i:08d}",
                "insurer_code": row["insurer_code"], "insurer_name": row["insurer_name"],
                "plate": row["plate"], "vin": row["vin"], "start": row["coverage_start"],
                "end": row["coverage_end"], "issued_at": now.isoformat(),
            }  # fmt: skip
            self.national.add_policy(policy)
            if row["insurer_code"] in self.insurers:
                self.insurers[row["insurer_code"]].add_policy(policy)

    def write_config(self, path: Path) -> Path:
        """The cloud's ``--sources`` file (0600: it holds the webhook secrets)."""
        data = {
            "national_url": self.national.url,
            "insurers": [
                {"code": c, "name": i.name, "url": i.url, "webhook_secret": self.secrets[c]}
                for c, i in self.insurers.items()
            ],
        }
        write_private(path, json.dumps(data, indent=1).encode())
        return path


async def _until(check: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _stage(agent: Agent, stage: str) -> Callable[[], bool]:
    return lambda: agent.renewal is not None and agent.renewal.stage == stage


def _with_prompt(agents: list[Agent], stage: str) -> tuple[int, Agent] | None:
    """The first car showing a prompt of ``stage`` (a moving car shows none)."""
    for i, agent in enumerate(agents):
        shown = agent.head_unit.on_screen
        if shown is not None and shown.prompt.stage == stage:
            return i, agent
    return None


def _quote_line(q: Quote) -> str:
    """One quote as the demo prints it: insurer, total = CTPL + tax, when cover starts."""
    tax = f"tax {q.vehicle_vessel_tax}"
    if q.tax_exemption == "new_energy":
        tax += " (new-energy: exempt)"
    starts = "on payment" if q.start_rule == "on_payment" else f"from {q.start} 00:00"
    return f"{q.insurer_code} CNY {q.total} (CTPL {q.ctpl} + {tax}; cover {starts})"


async def _quote_and_pay(
    agent: Agent, world: OutsideWorld, pick: Callable[[list[Quote]], Quote]
) -> tuple[str, Quote | None]:
    """Tap "Renew now", compare, choose with ``pick``, pay by phone: (what was quoted, the
    quote chosen), or (why it stopped, None)."""
    hu, vid = agent.head_unit, agent.vid
    assert hu.on_screen is not None
    await hu.answer(hu.on_screen.n, "accept")
    if not await _until(_stage(agent, "quotes")) or agent.renewal is None:
        reason = agent.renewal.reason if agent.renewal is not None else None
        return f"{vid}: no quotes came ({reason or 'no answer'})", None
    quotes = list(agent.renewal.quotes)
    listed = "; ".join(_quote_line(q) for q in quotes)
    chosen = pick(quotes)
    await hu.accept_quote(chosen.quote_id)
    if not await _until(_stage(agent, "awaiting_payment")) or agent.renewal is None:
        return f"{vid}: quotes {listed}; the bind did not complete", None
    url = agent.renewal.payment_url or ""
    order_id = url.rsplit("/", 1)[-1]
    insurer = world.insurers[chosen.insurer_code]
    async with httpx.AsyncClient() as phone:  # the driver scans the QR code and pays
        await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")
    return listed, chosen


async def renew_through_the_head_unit(agents: list[Agent], world: OutsideWorld) -> str:
    """The first car with the d30 prompt renews: quote, choose, pay; a line on the outcome."""
    found = _with_prompt(agents, "d30")
    if found is None:
        return "no car shows the 30-day prompt: no renewal to walk through"
    _, agent = found
    hu, vid = agent.head_unit, agent.vid
    old_end = agent.state.coverage_end if agent.state else None
    listed, chosen = await _quote_and_pay(agent, world, lambda qs: qs[0])
    if chosen is None:
        return listed
    renewed = await _until(
        lambda: agent.state is not None and agent.state.next_coverage_end is not None
        and hu.on_screen is None
    )  # fmt: skip
    if not renewed or agent.state is None:
        return f"{vid}: paid {chosen.insurer_code}; the new policy has not reached the car yet"
    return (
        f"{vid}: tapped Renew now; quotes {listed}; the same CTPL price at every insurer; "
        f"chose {chosen.insurer_code}; paid CNY {chosen.total} by phone; renewed through "
        f"the head unit: covered until {agent.state.next_coverage_end} (the new term "
        f"starts the day after {old_end}), head unit shows {hu.snapshot()['status']}, "
        "prompt gone"
    )


async def renew_after_a_lapse(agents: list[Agent], world: OutsideWorld) -> str:
    """The first parked car with the lapsed prompt renews with cover from payment: it shows
    待生效 (pending) until the start instant, then covered."""
    found = _with_prompt(agents, "lapsed")
    if found is None:
        return "no parked car shows the lapsed prompt: no renewal after a lapse"
    _, agent = found
    hu, vid = agent.head_unit, agent.vid

    def soonest(quotes: list[Quote]) -> Quote:  # the price is the same: cover soonest
        return next((q for q in quotes if q.start_rule == "on_payment"), quotes[0])

    listed, chosen = await _quote_and_pay(agent, world, soonest)
    if chosen is None:
        return listed
    pending = await _until(lambda: hu.snapshot()["status"] == "pending")
    state = agent.state
    starts = state.starts_at if state is not None else None
    if not pending or state is None or starts is None:
        return f"{vid}: lapsed; quotes {listed}; paid, but the car never showed pending"
    shown = hu.snapshot()["texts"]["zh-CN"]
    covered = await _until(lambda: hu.snapshot()["status"] == "covered", COVERED_WAIT_S)
    then = f"then covered until {state.coverage_end}" if covered else "not covered yet"
    return (
        f"{vid}: lapsed; tapped Renew now; quotes {listed}; chose {chosen.insurer_code} "
        f"(cover on payment); paid CNY {chosen.total}; head unit showed pending "
        f"(「{shown['headline']}：{shown['detail']}」) until "
        f"{texts.instant_text(starts, 'en')} China time, {then}"
    )


async def renewed_elsewhere(agents: list[Agent], world: OutsideWorld) -> str:
    """The first car with the d15 prompt was renewed at a counter; its driver says so."""
    found = _with_prompt(agents, "d15")
    if found is None or found[1].state is None or found[1].state.coverage_end is None:
        return "no car shows the 15-day prompt: no renewal elsewhere to walk through"
    i, agent = found
    assert agent.state is not None and agent.state.coverage_end is not None
    hu = agent.head_unit
    counter = world.insurers["PICC"]
    start: date = calendar.renewal_start(agent.state.coverage_end)
    issued = counter.issue_policy(demo_plate(i), synthetic_vin(i), start, report=True)
    assert hu.on_screen is not None
    await hu.answer(hu.on_screen.n, "already_renewed")
    if not await _until(_stage(agent, "renewed_elsewhere")):
        return f"{agent.vid}: the sources did not confirm the renewal yet"
    await _until(lambda: agent.state is not None and agent.state.next_coverage_end == issued.end)
    await hu.evaluate()
    quiet = hu.on_screen is None
    return (
        f"{agent.vid}: tapped Already renewed; renewal elsewhere confirmed by the sources "
        f"(PICC, until {issued.end}); prompts {'stop' if quiet else 'still shown'}"
    )


async def walk_through(agents: list[Agent], world: OutsideWorld) -> list[str]:
    """The three walk-throughs, concurrently; a line each."""
    results = await asyncio.gather(
        renew_through_the_head_unit(agents, world),
        renewed_elsewhere(agents, world),
        renew_after_a_lapse(agents, world),
        return_exceptions=True,
    )
    return [r if isinstance(r, str) else f"walk-through failed: {r!r}" for r in results]
