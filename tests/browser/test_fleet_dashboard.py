"""The fleet dashboard in real headless Chromium against the real cloud API over TLS.

A seeded fleet (cars active, expiring, soon, lapsed, unknown) and another fleet; the page
opens with the operator's fragment and must show the right tiles, only its own cars,
filters, alerts, live changes from the store without a reload, and the operator actions,
with no console errors (CSP refusals show there). The page opens in Chinese (its first
language), so the texts checked here are the Chinese ones; both languages' tables are
checked in test_dashboard_texts.py. A screenshot goes to var/screenshots/.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Locator, Page, expect

from cloud.alert_delivery import AlertSender
from cloud.fleet_monitor import FleetMonitor
from cloud.pki import DevPki
from tests.cloud_api.conftest import Api, within
from tests.cloud_api.fleet_support import (
    FleetEvents,
    Seeded,
    car_event,
    policy,
    seed_fleet,
    serving_fleet,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "screenshots" / "fleet-dashboard-1280x800.png"
LIVE_MS = 5000
"""How soon a change in the store must show on the page (the stream re-reads every 0.3 s)."""


@asynccontextmanager
async def dashboard(
    browser: Browser,
    api: Api,
    s: Seeded,
    fragment: bool = True,
    token: str | None = None,
    **context: Any,
) -> AsyncIterator[tuple[Page, list[str]]]:
    """The dashboard at 1280×800 (opened with the fleet's fragment unless told not to, with
    ``token`` in place of the fleet's if given); its console problems. ``context`` adds
    browser-context options (a time zone, a locale)."""
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800}, ignore_https_errors=True, **context
    )
    problems: list[str] = []

    def note(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    try:
        page = await context.new_page()
        page.on("console", note)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        port = api.config.http_port
        url = f"https://localhost:{port}/fleet"
        given = f"#fleet={s.fleet_id}&token={token or s.token}" if fragment else ""
        await page.goto(url + given)
        yield page, problems
    finally:
        await context.close()


async def test_the_dashboard_shows_the_fleet_live_and_acts(
    browser: Browser, shared_pki: DevPki, tmp_path: Path
) -> None:
    async with serving_fleet(shared_pki, tmp_path, events_interval_s=0.3) as api:
        s = await seed_fleet(api)
        events: FleetEvents = api.events  # type: ignore[assignment]
        async with AlertSender([]) as sender:
            monitor = FleetMonitor(api.store, api.config, api.clock.now, sender)
            await within(monitor.tick())
            async with dashboard(browser, api, s) as (page, problems):
                await check_page(page, api, s, monitor, events)
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOT), full_page=False)
                assert not problems, problems


async def check_page(
    page: Page, api: Api, s: Seeded, monitor: FleetMonitor, events: FleetEvents
) -> None:
    def tile(status: str) -> Locator:
        return page.get_by_test_id(f"tile-{status}").locator(".n")

    expected = {"active": 1, "expiring": 2, "lapsed": 1, "pending": 0, "renewal_pending": 0,
                "unknown": 1, "revoked": 0}  # fmt: skip
    for status, n in expected.items():
        await expect(tile(status)).to_have_text(str(n), timeout=LIVE_MS)
    assert await page.evaluate("document.documentElement.lang") == "zh-CN"
    await expect(page.get_by_test_id("tile-lapsed")).to_contain_text("已脱保")
    # The token left the address bar; it stays in this tab's sessionStorage only.
    assert "#" not in page.url and s.token not in page.url
    assert await page.evaluate("sessionStorage.getItem('token')") == s.token
    await expect(page.get_by_test_id("conn")).to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("conn")).to_have_text("实时")

    rows = page.get_by_test_id("rows").locator("tr")
    await expect(rows).to_have_count(5)
    shown = await rows.evaluate_all("rs => rs.map(r => r.dataset.vid)")
    assert sorted(shown) == sorted(s.vids.values())
    assert s.other_vid not in await page.content()

    # Filters narrow the table.
    await page.get_by_test_id("filter-status").select_option("lapsed")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-vid", s.vids["lapsed"])
    await expect(page.get_by_test_id(f"badge-{s.vids['lapsed']}")).to_have_text("已脱保")
    await page.get_by_test_id("filter-status").select_option("")
    await page.get_by_test_id("filter-within").fill("7")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-vid", s.vids["soon"])
    await page.get_by_test_id("filter-within").fill("")
    await page.get_by_test_id("filter-link").select_option("online")
    await expect(rows).to_have_count(2)
    await page.get_by_test_id("filter-link").select_option("")
    await expect(rows).to_have_count(5)

    # The timeline: one lapsed, the soon car in week 1, the expiring one in week 3.
    await expect(page.get_by_test_id("bar-lapsed")).to_contain_text("1")
    await expect(page.get_by_test_id("bar-w1")).to_contain_text("1")
    await expect(page.get_by_test_id("bar-w3")).to_contain_text("1")

    # The alerts the monitor raised.
    alerts = page.get_by_test_id("alerts").locator("li")
    await expect(alerts).to_have_count(2)
    soon_alert = alerts.filter(has_text=s.vids["soon"])
    await expect(soon_alert).to_have_attribute("data-kind", "expiring_no_renewal")
    await expect(soon_alert).to_contain_text("即将到期且未续保")
    await expect(soon_alert).to_contain_text("剩余5天")

    # Live: another process changes the store; the page follows without a reload.
    await policy(api, s.vids["active"], -2)
    await expect(tile("lapsed")).to_have_text("2", timeout=LIVE_MS)
    await expect(tile("active")).to_have_text("0", timeout=LIVE_MS)
    row = page.locator(f'tr[data-vid="{s.vids["active"]}"]')
    await expect(row).to_have_attribute("data-status", "lapsed", timeout=LIVE_MS)
    await car_event(api, s.vids["lapsed"], "lapsed_while_driving", "a" * 32, seq=30)
    await within(monitor.tick())
    driving = alerts.filter(has_text="脱保行驶")
    await expect(driving).to_have_count(1, timeout=LIVE_MS)
    await expect(driving).to_contain_text(s.vids["lapsed"])

    # Operator actions: a refresh, then a bulk renewal of two selected cars.
    await page.get_by_test_id(f"refresh-{s.vids['soon']}").click()
    await expect(page.get_by_test_id("message")).to_have_text(f"刷新 {s.vids['soon']}：已更新")
    assert events.refreshed == [s.vids["soon"]]
    renew = page.get_by_test_id("renew")
    await expect(renew).to_be_disabled()
    for role in ("soon", "lapsed"):
        await page.locator(f'tr[data-vid="{s.vids[role]}"] input[type=checkbox]').check()
    await renew.click()
    await expect(page.get_by_test_id("message")).to_have_text("批量续保：已发起 2 辆")
    assert sorted(events.renewals.values()) == sorted([s.vids["soon"], s.vids["lapsed"]])
    await expect(renew).to_be_disabled()


async def test_without_a_fragment_a_form_asks_and_sign_out_forgets(
    browser: Browser, shared_pki: DevPki, tmp_path: Path
) -> None:
    async with serving_fleet(shared_pki, tmp_path, events_interval_s=0.3) as api:
        s = await seed_fleet(api)
        async with dashboard(browser, api, s, fragment=False) as (page, problems):
            login = page.get_by_test_id("login")
            await expect(login).to_be_visible()
            await page.locator("#in-fleet").fill(s.fleet_id)
            await page.locator("#in-token").fill(s.token)
            await expect(login).to_contain_text("操作员令牌")
            await login.get_by_role("button", name="打开").click()
            await expect(login).to_be_hidden()
            await expect(page.get_by_test_id("tile-expiring").locator(".n")).to_have_text("2")
            await expect(page.get_by_test_id("rows").locator("tr")).to_have_count(5)
            await expect(page.locator("#in-token")).to_have_value("")
            await expect(page.locator("#no-alerts")).to_have_text("暂无告警")
            await page.get_by_role("button", name="退出").click()
            await expect(login).to_be_visible()
            assert await page.evaluate("sessionStorage.getItem('token')") is None
            assert not problems, problems
