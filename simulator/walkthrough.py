"""The demo's renewal walk-through: the outside world (national platform, two insurers)
and two drivers who act on their head units.

- The driver of the first car showing the 30-day prompt taps "Renew now", compares the
  quotes, chooses the cheapest, and pays on a phone (the payment link the head unit shows
  as a QR code): the insurer's webhook reaches the cloud, and the car's head unit shows
  the new term; its prompt is gone.
- The driver of the first car showing the 15-day prompt bought a policy at a counter;
  they tap "Already renewed": the cloud asks the sources again at once, finds it, and
  the prompts stop.
"""

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import httpx

from agent.protocol import calendar
from agent.runner import Agent
from cloud.pki import DevPki, write_private

from .fleet import synthetic_plate, synthetic_vin
from .sources import Insurer, NationalPlatform

INSURERS = (("PICC", "中国人保财险"), ("PINGAN", "平安产险"))


class OutsideWorld:
    """The national platform and the insurers, as real HTTP servers on free ports."""

    def __init__(self, pki: DevPki, api_port: int) -> None:
        self.national = NationalPlatform()
        self.secrets = {code: secrets.token_urlsafe(24) for code, _ in INSURERS}
        self.insurers = {
            code: Insurer(
                code, name, webhook_secret=self.secrets[code], webhook_ca=pki.ca_cert,
                webhook_url=f"https://127.0.0.1:{api_port}/v1/webhooks/insurers/{code}",
                reports_to=[self.national],
            )
            for code, name in INSURERS
        }  # fmt: skip
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> "OutsideWorld":
        await self._stack.enter_async_context(self.national)
        for insurer in self.insurers.values():
            await self._stack.enter_async_context(insurer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def seed(self, rows: list[dict[str, str]]) -> None:
        """Tell the sources of the fleet's current policies (rows keyed by VIN)."""
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
    for i, agent in enumerate(agents):
        shown = agent.head_unit.on_screen
        if shown is not None and shown.prompt.stage == stage:
            return i, agent
    return None


async def renew_through_the_head_unit(agents: list[Agent], world: OutsideWorld) -> str:
    """The first car with the d30 prompt renews: quote, choose, pay; a line on the outcome."""
    found = _with_prompt(agents, "d30")
    if found is None:
        return "no car shows the 30-day prompt: no renewal to walk through"
    _, agent = found
    hu, vid = agent.head_unit, agent.vid
    old_end = agent.state.coverage_end if agent.state else None
    assert hu.on_screen is not None
    await hu.answer(hu.on_screen.n, "accept")
    if not await _until(_stage(agent, "quotes")) or agent.renewal is None:
        return f"{vid}: no quotes came"
    quotes = sorted(agent.renewal.quotes, key=lambda q: q.total)
    listed = ", ".join(f"{q.insurer_code} CNY {q.total}" for q in quotes)
    await hu.accept_quote(quotes[0].quote_id)
    if not await _until(_stage(agent, "awaiting_payment")) or agent.renewal is None:
        return f"{vid}: quotes {listed}; the bind did not complete"
    url = agent.renewal.payment_url or ""
    order_id = url.rsplit("/", 1)[-1]
    insurer = world.insurers[quotes[0].insurer_code]
    async with httpx.AsyncClient() as phone:  # the driver scans the QR code and pays
        await phone.post(f"{insurer.url}/v1/orders/{order_id}/pay")
    renewed = await _until(
        lambda: agent.state is not None and agent.state.next_coverage_end is not None
        and hu.on_screen is None
    )  # fmt: skip
    if not renewed or agent.state is None:
        return f"{vid}: paid order {order_id}; the new policy has not reached the car yet"
    return (
        f"{vid}: tapped Renew now; quotes {listed}; chose {quotes[0].insurer_code}; paid "
        f"CNY {quotes[0].total} by phone; renewed through the head unit: covered until "
        f"{agent.state.next_coverage_end} (the new term starts the day after {old_end}), "
        f"head unit shows {hu.snapshot()['status']}, prompt gone"
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
    issued = counter.issue_policy(synthetic_plate(i), synthetic_vin(i), start, report=True)
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
    """Both walk-throughs, concurrently; a line each."""
    results = await asyncio.gather(
        renew_through_the_head_unit(agents, world),
        renewed_elsewhere(agents, world),
        return_exceptions=True,
    )
    return [r if isinstance(r, str) else f"walk-through failed: {r!r}" for r in results]
