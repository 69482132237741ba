"""Every screen state of the head unit, in both languages, at both sizes, in real Chromium.

One real Agent (simulated bus, parked, its own Mosquitto with TLS and the ACL) is moved
through every state by cloud-signed pushes: covered with the e-policy card, each reminder
stage, 待生效 (pending), lapsed, no policy, unverified, then the renewal screens (quotes for
a petrol car renewing without a gap, quotes after a lapse for an electric car, payment,
the result, a failure). Each state is checked in zh-CN and en at 800×480 and 1280×720:
the visible text must hold no ``undefined``, ``null``, ``NaN`` or ``[object``, no raw key
(``snake_case``), no English word on the Chinese screen (but the toggle's "English" and
the masked policy number), and no text may overflow its box or the screen. Screenshots
of every combination go to var/screenshots/sweep/ (git-ignored); the figures are printed.
"""

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from agent.protocol import calendar
from agent.protocol.messages import PolicyState, Quote, RenewalUpdate
from cloud.pki import DevPki
from simulator.broker import Mosquitto
from tests.agent.conftest import eventually

from .conftest import CHINA, SMALL, WIDE, Car, a_car, expiring_state, open_screen

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots" / "sweep"
LANGS = ("zh-CN", "en")
SIZES = (SMALL, WIDE)
NOT_TEXT = re.compile(r"\bundefined\b|\bnull\b|\bNaN\b|\[object")
RAW_KEY = re.compile(r"\b[a-z]+_[a-z_]+\b")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
ALLOWED_ON_ZH = {"English", "PDZA"}
"""The toggle names the other language; masked policy numbers start with letters."""

CHECK = """
() => {
  const problems = [];
  const vw = innerWidth, vh = innerHeight;
  const clips = (el) => {
    const out = [];
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.overflowX !== "visible" || s.overflowY !== "visible") out.push(a);
    }
    return out;
  };
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || el.closest("[hidden]") || el.offsetParent === null) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const name = (el.id || el.dataset.testid || el.className || el.tagName) + "";
    const s = getComputedStyle(el);
    if (s.display !== "inline" && (el.scrollWidth > el.clientWidth + 1 ||
        el.scrollHeight > el.clientHeight + 1)) {
      problems.push("text cut inside " + name + ": " + el.textContent.trim().slice(0, 40));
    }
    if (r.left < -1 || r.top < -1 || r.right > vw + 1 || r.bottom > vh + 1) {
      problems.push("off the screen: " + name + ": " + el.textContent.trim().slice(0, 40));
    }
    for (const box of clips(el)) {
      const b = box.getBoundingClientRect();
      if (r.left < b.left - 1 || r.top < b.top - 1 || r.right > b.right + 1 ||
          r.bottom > b.bottom + 1) {
        problems.push("outside its box " + (box.id || box.className) + ": " +
          el.textContent.trim().slice(0, 40));
        break;
      }
    }
  }
  return { text: document.body.innerText, problems };
}
"""


@dataclass
class Combination:
    state: str
    lang: str
    size: tuple[int, int]
    problems: list[str]


def state(vid: str, **changes: Any) -> PolicyState:
    """A signed state as the cloud sends it: the insurer's name in Chinese, its address."""
    insurer = {"insurer_name": "中国人保财险",
               "insurer_address": "北京市朝阳区建国门外大街2号院2号楼"}  # fmt: skip
    return replace(expiring_state(vid), **(insurer | changes))


def ending_in(vid: str, days: int) -> PolicyState:
    end = datetime.now(CHINA).date() + timedelta(days=days)
    return state(vid, coverage_start=end.replace(year=end.year - 1) + timedelta(days=1),
                 coverage_end=end, status="expiring" if days <= 30 else "active")  # fmt: skip


def quote(qid: str, code: str, name: str, start: date, **changes: Any) -> Quote:
    values: dict[str, Any] = dict(
        quote_id=qid, insurer_code=code, insurer_name=name, start=start,
        end=calendar.one_year_end(start), ctpl="855.00", floating_rate="-0.10",
        vehicle_vessel_tax="360.00", total="1215.00", rate_basis="A1",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        claims_phone="95518" if code == "PICC" else "95511",
    )  # fmt: skip
    return Quote(**(values | changes))


def update(vid: str, stage: str, **changes: Any) -> RenewalUpdate:
    return RenewalUpdate(vid=vid, seq=1, issued_at=datetime.now(UTC), renewal_id="r_sweep",
                         stage=stage, **changes)  # type: ignore[arg-type]  # fmt: skip


async def show(page: Page, lang: str) -> None:
    """Switch ``page`` to ``lang`` with its toggle (the way a driver does)."""
    html = page.locator("html")
    if await html.get_attribute("lang") != lang:
        await page.get_by_test_id("lang-toggle").click()
    await expect(html).to_have_attribute("lang", lang)


async def judge(page: Page, name: str, lang: str, size: tuple[int, int]) -> Combination:
    await page.wait_for_timeout(150)  # a pushed snapshot may still be on its way
    seen: dict[str, Any] = await page.evaluate(CHECK)
    text: str = seen["text"]
    problems = list(seen["problems"])
    problems += [f"not text: {m}" for m in NOT_TEXT.findall(text)]
    problems += [f"raw key: {m}" for m in RAW_KEY.findall(text)]
    if lang == "zh-CN":
        problems += [f"English on the Chinese screen: {w}" for w in LATIN_WORD.findall(text)
                     if w not in ALLOWED_ON_ZH]  # fmt: skip
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}-{lang}-{size[0]}x{size[1]}.png"))
    return Combination(name, lang, size, problems)


@pytest.mark.timeout(300)
async def test_every_screen_state_in_both_languages_at_both_sizes(
    browser: Browser, own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    async with a_car(own_pki, own_broker, tmp_path, reminder_daily_cap=100) as car:
        screens = [await open_screen(browser, car.url, size) for size in SIZES]
        results: list[Combination] = []
        try:
            for name, arrive, ready in steps(car):
                await arrive()
                for screen, size in zip(screens, SIZES, strict=True):
                    await ready(screen.page)
                    for lang in LANGS:
                        await show(screen.page, lang)
                        results.append(await judge(screen.page, name, lang, size))
            for screen in screens:
                assert not screen.unexpected(), screen.problems
        finally:
            for screen in screens:
                await screen.context.close()
    states = sorted({r.state for r in results})
    defects = [(r.state, r.lang, r.size, p) for r in results for p in r.problems]
    print(
        f"\nhead-unit sweep: {len(states)} states x {len(LANGS)} languages x {len(SIZES)} "
        f"sizes = {len(results)} screens, {len(defects)} defects; screenshots in {SHOTS}"
    )
    assert len(results) == len(states) * len(LANGS) * len(SIZES) >= 16 * 4
    assert defects == [], "\n".join(f"{d[0]} {d[1]} {d[2]}: {d[3]}" for d in defects)


def steps(car: Car) -> list[tuple[str, Any, Any]]:
    """(state name, how the cloud and the car get there, what the page shows once there)."""
    vid, cloud, hu = car.vid, car.cloud, car.agent.head_unit
    today = datetime.now(CHINA).date()

    def push(s: PolicyState) -> Any:
        async def go() -> None:
            cloud.push_state(s)
            await eventually(lambda: car.agent.state is not None
                             and car.agent.state.version == cloud.state.version,
                             "the pushed state")  # fmt: skip
            await hu.evaluate()

        return go

    def renewal(u: RenewalUpdate) -> Any:
        async def go() -> None:
            shown = hu.on_screen
            if shown is not None:  # the driver tapped "Renew now" (the prompt goes)
                await hu.answer(shown.n, "accept")
            cloud.push_renewal(u)
            await eventually(lambda: (hu.snapshot()["renewal"] or {}).get("stage") == u.stage,
                             "the renewal update")  # fmt: skip

        return go

    def status(expected: str, stage: str | None = None) -> Any:
        async def ready(page: Page) -> None:
            await expect(page.get_by_test_id("status")).to_have_attribute("data-status", expected)
            prompt = page.get_by_test_id("prompt")
            if stage is None:
                await expect(prompt).to_be_hidden()
            else:
                await expect(prompt).to_have_attribute("data-stage", stage)
                await expect(prompt).to_be_visible()

        return ready

    def renewing(stage: str) -> Any:
        async def ready(page: Page) -> None:
            await expect(page.get_by_test_id("renewal")).to_have_attribute("data-stage", stage)
            await expect(page.get_by_test_id("renewal")).to_be_visible()

        return ready

    starts = today + timedelta(days=1)
    end = today + timedelta(days=12)  # a term not prompted yet: its d15 prompt shows
    petrol = (quote("q_picc", "PICC", "中国人保财险", end + timedelta(days=1)),
              quote("q_pingan", "PINGAN", "平安产险", end + timedelta(days=1)))  # fmt: skip
    electric = {
        "ctpl": "760.00",
        "floating_rate": "-0.20",
        "rate_basis": "A2",
        "vehicle_vessel_tax": "0.00",
        "total": "760.00",
        "tax_exemption": "new_energy",
    }
    lapsed = (quote("q_pingan2", "PINGAN", "平安产险", today, start_rule="on_payment",
                    **electric),
              quote("q_picc2", "PICC", "中国人保财险", starts, **electric))  # fmt: skip
    new_start = datetime.combine(end + timedelta(days=1), datetime.min.time(), CHINA)
    return [
        ("covered-card", push(ending_in(vid, 200)), status("covered")),
        *[(f"stage-d{n}", push(ending_in(vid, days)), status("expiring", f"d{n}"))
          for n, days in ((30, 29), (15, 9), (7, 5), (3, 2), (1, 1), (0, 0))],
        ("pending", push(state(vid, status="pending", coverage_start=starts,
                               coverage_end=calendar.one_year_end(starts))),
         status("pending", "pending")),
        ("lapsed", push(state(vid, status="lapsed", coverage_start=today - timedelta(days=367),
                              coverage_end=today - timedelta(days=3))),
         status("lapsed", "lapsed")),
        ("no-policy", push(state(vid, status="unknown", insurer_code=None, insurer_name=None,
                                 policy_no_masked=None, coverage_start=None, coverage_end=None,
                                 plate_masked=None, claims_phone=None)), status("unknown")),
        ("unverified", push(state(vid, fresh_until=datetime.now(UTC) - timedelta(minutes=1))),
         status("unverified")),
        ("renew-from-d15", push(ending_in(vid, 12)), status("expiring", "d15")),
        ("quotes", renewal(update(vid, "quotes", quotes=petrol)), renewing("quotes")),
        ("quotes-after-a-lapse", renewal(update(vid, "quotes", quotes=lapsed)),
         renewing("quotes")),
        ("payment", renewal(update(vid, "awaiting_payment", amount="1215.00",
                                   payment_url="https://pay.example.test/pay/ord_1")),
         renewing("awaiting_payment")),
        ("result", renewal(update(vid, "issued", new_end=calendar.one_year_end(new_start.date()),
                                  new_starts_at=new_start)), renewing("issued")),
        ("failed", renewal(update(vid, "failed", reason="vehicle_facts_unavailable",
                                  message="vehicle_facts_unavailable: national down")),
         renewing("failed")),
    ]  # fmt: skip
