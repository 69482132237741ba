"""The fleet dashboard's two languages in real Chromium against the real cloud API.

A fleet with a car in every status the page knows (the car whose only term starts later
is ``pending``, uninsured until then, with its start shown), alerts (driving before the
policy starts among them), and the operator's refresh and renewal messages. In zh-CN
(the default) and en, at 1280×800 and 1024×768, the visible text never shows
``undefined``/``null``/``NaN``/``[object``, a raw status, alert or outcome key, or on the
Chinese page a Latin word outside the allow-list (our ids, insurer codes, the toggle's
"English"); no cell, tile, badge or button overflows its box. The browser runs in Los
Angeles time: every date and time shown must still be China time. Screenshots go to
var/screenshots/dashboard-<lang>-<w>x<h>.png.
"""

import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Page, Route, expect

from agent.protocol import calendar
from cloud.alert_delivery import AlertSender
from cloud.fleet_monitor import FleetMonitor
from cloud.pki import DevPki
from cloud.policy import PolicyRecord
from tests.cloud_api.conftest import ADMIN_TOKEN, Api, within
from tests.cloud_api.fleet_support import FleetEvents, Seeded, car_event, policy, seed_fleet
from tests.cloud_api.fleet_support import serving_fleet as serving

from .test_fleet_dashboard import dashboard

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots"
CHINA = ZoneInfo("Asia/Shanghai")
BROWSER_ZONE = "America/Los_Angeles"
LANGS = ("zh-CN", "en")
SIZES = ((1280, 800), (1024, 768))
LIVE_MS = 5000
PENDING_IN_DAYS = 5
"""The pending car's only term starts this many days from today (China)."""

STATUS = {
    "zh-CN": {"active": "有效", "expiring": "即将到期", "lapsed": "已脱保", "pending": "待生效",
              "renewal_pending": "已续保（待生效）", "unknown": "未查到保单",
              "revoked": "设备已移除"},
    "en": {"active": "Active", "expiring": "Expiring", "lapsed": "Lapsed",
           "pending": "Not yet in force", "renewal_pending": "Renewed (next term pending)",
           "unknown": "No policy found", "revoked": "Gateway removed"},
}  # fmt: skip
KINDS = {
    "zh-CN": {"lapsed_while_driving": "脱保行驶", "pending_while_driving": "保单生效前行驶",
              "expiring_no_renewal": "即将到期且未续保", "offline_and_expiring": "离线且即将到期",
              "vin_mismatch": "车架号与保单不符"},
    "en": {"lapsed_while_driving": "Driving while lapsed",
           "pending_while_driving": "Driving before the policy starts",
           "expiring_no_renewal": "Expiring, not renewed",
           "offline_and_expiring": "Offline and expiring",
           "vin_mismatch": "VIN does not match the policy"},
}  # fmt: skip
REFRESHED = {
    "zh-CN": {"updated": "已更新", "unchanged": "无变化", "unavailable": "暂无法查询",
              "no_such_outcome": "结果未知"},
    "en": {"updated": "updated", "unchanged": "unchanged", "unavailable": "not available now",
           "no_such_outcome": "unknown result"},
}  # fmt: skip
RENEWED = {
    "zh-CN": {"started": "已发起", "already_started": "已在进行", "vehicle_unknown": "车辆不存在",
              "vehicle_revoked": "设备已移除", "failed": "发起失败", "no_such_outcome": "结果未知"},
    "en": {"started": "started", "already_started": "already in progress",
           "vehicle_unknown": "vehicle not found", "vehicle_revoked": "gateway removed",
           "failed": "failed", "no_such_outcome": "unknown result"},
}  # fmt: skip
LINKS = {"zh-CN": ["在线", "离线", "未知"], "en": ["online", "offline", "unknown"]}
NOT_SENT = {
    "zh-CN": "批量续保请求未能发出，请再次点击重试（不会重复发起）",
    "en": "Renewal request not sent; press again to retry (same request).",
}
RAW_KEYS = sorted(
    {k for table in (STATUS, KINDS, REFRESHED, RENEWED) for k in table["en"] if "_" in k}
    | {"bad_idempotency_key", "too_many_streams", "fleet_unknown", "renewalItem", "data_age_s"}
)
"""Keys the API or the tables use that must never reach the screen."""
FORBIDDEN = ("undefined", "null", "NaN", "[object", "Infinity")
INSURER_CODES = {"PICC", "PAIC", "PINGAN", "CPIC", "CLPC", "SSAIC", "TPIC", "CCIC"}
WORD = re.compile(r"[A-Za-z0-9_]*[A-Za-z][A-Za-z0-9_]*")
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]+")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
OVERFLOWING = """() => {
  const sel = "header h1, .conn, button, .tile, .tile .n, .tile .label, .panel h2, .bar, "
    + ".bar .wk, th, td, .badge, .starts, label, #message, #alerts li, #alerts li > div";
  const out = [];
  for (const e of document.querySelectorAll(sel)) {
    if (!e.getClientRects().length || e.clientWidth === 0) continue;
    if (e.scrollWidth > e.clientWidth + 1) {
      out.push(e.tagName + "." + e.className + " " + e.scrollWidth + " > " + e.clientWidth
        + ": " + e.textContent.trim().slice(0, 40));
    }
  }
  const doc = document.documentElement;
  if (doc.scrollWidth > doc.clientWidth + 1) out.push("page " + doc.scrollWidth);
  return out;
}"""


@dataclass
class Fleet:
    """The seeded fleet plus a car renewed ahead, a revoked one and a pending one."""

    s: Seeded
    renewed: str
    revoked: str
    pending: str
    pending_start: date

    def allowed(self) -> set[str]:
        """The Latin words the Chinese page may show: our ids, insurer codes, the toggle."""
        return {self.s.fleet_id, *self.s.vids.values(), self.renewed, self.revoked,
                self.pending, *INSURER_CODES, "English"}  # fmt: skip


async def seed_every_status(api: Api) -> Fleet:
    """seed_fleet, then a renewed car, a revoked car and a car whose term starts later."""
    s = await seed_fleet(api)
    fleet = (s.fleet_id, s.token)
    renewed, revoked, pending = [(await api.enrolled(fleet))[0] for _ in range(3)]
    today = calendar.china_date(api.clock.now())
    next_end = today + timedelta(days=368)
    await policy(api, renewed, 3, next_insurer_code="PICC", next_insurer_name="PICC P&C",
                 next_policy_no_masked="PDZA****0002", next_end=next_end)  # fmt: skip
    await policy(api, revoked, 100)
    r = await api.client.post(f"/v1/vehicles/{revoked}/revoke", json={},
                              headers=api.auth(ADMIN_TOKEN))  # fmt: skip
    assert r.status_code == 200, r.text
    start = today + timedelta(days=PENDING_IN_DAYS)
    await api.store.put_policy(PolicyRecord(
        vid=pending, insurer_code="PINGAN", insurer_name="Ping An P&C",
        policy_no_masked="PDAA****0003", coverage_start=start,
        coverage_end=start + timedelta(days=364), source="national",
        verified_at=api.clock.now() - timedelta(minutes=12),
    ))  # fmt: skip
    return Fleet(s, renewed, revoked, pending, start)


def opened(
    browser: Browser, api: Api, s: Seeded, token: str | None = None
) -> AbstractAsyncContextManager[tuple[Page, list[str]]]:
    """The dashboard at 1280×800 in Los Angeles time, opened with the fleet's fragment."""
    return dashboard(browser, api, s, token=token, timezone_id=BROWSER_ZONE, locale="en-US")


async def visible_problems(page: Page, lang: str, allowed: set[str]) -> list[str]:
    """What is wrong with the visible text (and the title) of ``page`` in ``lang``."""
    text = await page.evaluate("document.body.innerText + '\\n' + document.title")
    bare = text
    for word in sorted(allowed, key=len, reverse=True):
        bare = bare.replace(word, " ")
    found = [f"shows {bad!r}" for bad in FORBIDDEN if bad in bare]
    found += [f"shows the raw key {key!r}" for key in RAW_KEYS if key in bare]
    if lang == "zh-CN":
        found += [f"shows the Latin word {w!r}" for w in WORD.findall(bare)]
    else:
        found += [f"shows Chinese {w!r}" for w in CJK.findall(text) if w != "中文"]
    return found


def china_words(day: date, lang: str, today: date) -> str:
    """How the page says that cover starts at 00:00 China time of ``day``."""
    if lang == "zh-CN":
        year = "" if day.year == today.year else f"{day.year}年"
        return f"自{year}{day.month}月{day.day}日0时起生效"
    year = "" if day.year == today.year else f" {day.year}"
    return f"from {day.day} {MONTHS[day.month - 1]}{year} 00:00"


def renewal_message(lang: str, outcomes: list[str]) -> str:
    labels = [RENEWED[lang][o] for o in outcomes]
    if lang == "zh-CN":
        return "批量续保：" + "，".join(f"{label} 1 辆" for label in labels)
    return "Renewals: " + ", ".join(f"1 {label}" for label in labels)


async def test_the_tables_hold_every_text_in_both_languages(
    browser: Browser, shared_pki: DevPki, tmp_path: Path
) -> None:
    async with serving(shared_pki, tmp_path) as api:
        s = await seed_fleet(api)
        async with opened(browser, api, s) as (page, problems):
            await expect(page.get_by_test_id("conn")).to_have_attribute("data-state", "live")
            ui: dict[str, Any] = await page.evaluate("UI")
            assert await page.evaluate("STATUSES") == list(STATUS["en"])
            assert shape(ui["zh-CN"]) == shape(ui["en"])
            for lang in LANGS:
                table = ui[lang]
                assert {k: table["status"][k] for k in STATUS[lang]} == STATUS[lang]
                assert {k: table["kinds"][k] for k in KINDS[lang]} == KINDS[lang]
                for name, words in (("renewalOutcome", RENEWED), ("refreshOutcome", REFRESHED)):
                    outcomes = table[name]
                    for outcome, word in words[lang].items():
                        assert outcomes.get(outcome, outcomes["other"]) == word, (lang, outcome)
                links = [table["link"][k] for k in ("online", "offline", "unknown")]
                assert links == LINKS[lang]
            for path, zh in leaves(ui["zh-CN"]):
                en = dict(leaves(ui["en"]))[path]
                assert zh.strip() and en.strip(), path
                if path not in ("date", "clock", "clockMin"):  # the calendars differ
                    assert placeholders(zh) == placeholders(en), path
                if path != "toggle":
                    assert not WORD.findall(re.sub(r"\{\w+\}", "", zh)), (path, zh)
                    assert "CTPL" not in zh
            # Every placeholder in the document is filled, in both languages.
            for lang in LANGS:
                if await page.evaluate("document.documentElement.lang") != lang:
                    await page.get_by_test_id("lang-toggle").click()
                empty = await page.evaluate(
                    "[...document.querySelectorAll('[data-t]')]"
                    ".filter(e => !e.textContent.trim()).map(e => e.dataset.t)"
                )
                assert empty == [], (lang, empty)
            assert not problems, problems


async def test_dates_and_times_are_china_time_whatever_the_browser_zone(
    browser: Browser, shared_pki: DevPki, tmp_path: Path
) -> None:
    year = datetime.now(CHINA).year
    async with serving(shared_pki, tmp_path) as api:
        s = await seed_fleet(api)
        async with opened(browser, api, s) as (page, problems):
            assert await page.evaluate("new Date().getTimezoneOffset()") > 0  # west of UTC
            cases: dict[str, tuple[str, str]] = {
                f"startsText('{year}-12-04T16:00:00+00:00')": (
                    "自12月5日0时起生效", "from 5 Dec 00:00"),
                f"startsText('{year}-12-05T00:00:00+08:00')": (
                    "自12月5日0时起生效", "from 5 Dec 00:00"),
                f"startsText('{year + 1}-01-05T00:30:00Z')": (
                    f"自{year + 1}年1月5日8时30分起生效", f"from 5 Jan {year + 1} 08:30"),
                "startsText('not a date') + startsText(null) + startsText(undefined)": ("", ""),
                "dateText('2026-12-05')": ("2026年12月5日", "2026-12-05"),
                "dateText(null) + dateText('12/5/2026')": ("––", "––"),
                f"stampText('{year}-03-01T15:05:00Z')": ("3月1日 23:05", "1 Mar 23:05"),
                "ago(null)": ("从未", "never"),
                "ago(new Date(Date.now() - 20000).toISOString())": ("刚刚", "just now"),
                "ago(new Date(Date.now() - 180000).toISOString())": ("3分钟前", "3 min ago"),
                "ago(new Date(Date.now() - 7200000).toISOString())": ("2小时前", "2 h ago"),
                "ago(new Date(Date.now() - 5 * 86400000).toISOString())": ("5天前", "5 d ago"),
                "age({ data_age_s: 720, _at: performance.now() })": ("12分钟", "12 min"),
                "age({ data_age_s: null, _at: 0 })": ("–", "–"),
                "[daysText(5), daysText(1), daysText(0), daysText(-3)].join('|')": (
                    "剩余5天|剩余1天|今日到期|已脱保3天",
                    "5 days left|1 day left|ends today|lapsed 3 days"),
                "tallyText(['started', 'failed', 'no_such_outcome', 'other'])": (
                    "批量续保：已发起 1 辆，发起失败 1 辆，结果未知 2 辆",
                    "Renewals: 1 started, 1 failed, 2 unknown result"),
                "reason({ error: { code: 'timeout' } }, 504) + '|' + reason({}, 502)": (
                    "保单数据源未及时响应|请求被拒绝（502）",
                    "the policy sources did not answer in time|refused (502)"),
            }  # fmt: skip
            for lang_index, lang in enumerate(LANGS):
                if lang_index:
                    await page.get_by_test_id("lang-toggle").click()
                for expression, expected in cases.items():
                    got = await page.evaluate(expression)
                    assert got == expected[lang_index], (lang, expression, got)
            assert not problems, problems


async def test_both_languages_at_both_sizes_show_only_translated_text_that_fits(
    browser: Browser, shared_pki: DevPki, tmp_path: Path
) -> None:
    async with serving(shared_pki, tmp_path, events_interval_s=0.3) as api:
        f = await seed_every_status(api)
        s = f.s
        events: FleetEvents = api.events  # type: ignore[assignment]
        await car_event(api, s.vids["lapsed"], "lapsed_while_driving", "a" * 32, seq=30)
        await car_event(api, s.vids["expiring"], "vin_mismatch", "b" * 32, seq=31)
        await car_event(api, f.pending, "pending_while_driving", "c" * 32, seq=32)
        async with AlertSender([]) as sender:
            monitor = FleetMonitor(api.store, api.config, api.clock.now, sender)
            await within(monitor.tick())
        allowed = f.allowed()
        async with opened(browser, api, s) as (page, problems):
            # Chinese first, with nothing chosen; the choice then survives a reload.
            assert await page.evaluate("document.documentElement.lang") == "zh-CN"
            await expect(page.get_by_test_id("lang-toggle")).to_have_text("English")
            for lang in LANGS:
                if lang == "en":
                    await page.get_by_test_id("lang-toggle").click()
                    await expect(page.get_by_test_id("lang-toggle")).to_have_text("中文")
                    assert await page.evaluate("document.documentElement.lang") == "en"
                    assert await page.evaluate("sessionStorage.getItem('lang')") == "en"
                for size in SIZES:
                    await page.set_viewport_size({"width": size[0], "height": size[1]})
                    await check_fleet(page, f, lang)
                    await check_actions(page, f, events, lang, first=size == SIZES[0])
                    assert await visible_problems(page, lang, allowed) == []
                    assert await page.evaluate(OVERFLOWING) == [], (lang, size)
                    SHOTS.mkdir(parents=True, exist_ok=True)
                    shot = SHOTS / f"dashboard-{lang}-{size[0]}x{size[1]}.png"
                    await page.screenshot(path=str(shot), full_page=True)
            await page.reload()
            await expect(page.get_by_test_id("lang-toggle")).to_have_text("中文")
            assert await page.evaluate("document.documentElement.lang") == "en"
            await page.get_by_test_id("lang-toggle").click()

            # Signed out: the form, in both languages; the language choice is kept.
            await page.get_by_role("button", name="退出").click()
            login = page.get_by_test_id("login")
            await expect(login).to_be_visible()
            assert await page.evaluate("sessionStorage.getItem('token')") is None
            await expect(login).to_contain_text("操作员令牌")
            assert await visible_problems(page, "zh-CN", allowed) == []
            await page.get_by_test_id("lang-toggle").click()
            await expect(login).to_contain_text("Operator token")
            assert await visible_problems(page, "en", allowed) == []
            expected = ("net::ERR_FAILED",)  # the renewal response lost on purpose
            assert [p for p in problems if not any(e in p for e in expected)] == []

        # A refused token: the pill and the form say so, in Chinese.
        async with opened(browser, api, s, token="not-the-token") as (page, problems):
            await expect(page.get_by_test_id("conn")).to_have_text("已拒绝（401）")
            await expect(page.locator("#login-msg")).to_have_text("车队编号或令牌被拒绝（401）")
            assert await visible_problems(page, "zh-CN", allowed) == []


async def check_fleet(page: Page, f: Fleet, lang: str) -> None:
    """Tiles, badges, the pending car and the alerts, in ``lang``."""
    s = f.s
    rows = page.get_by_test_id("rows").locator("tr")
    await expect(rows).to_have_count(8, timeout=LIVE_MS)
    row = page.locator(f'tr[data-vid="{f.pending}"]')
    await expect(row).to_have_attribute("data-status", "pending")
    tiles = {"active": 1, "expiring": 2, "lapsed": 1, "pending": 1,
             "renewal_pending": 1, "unknown": 1, "revoked": 1}  # fmt: skip
    for status, n in tiles.items():
        tile = page.get_by_test_id(f"tile-{status}")
        await expect(tile.locator(".n")).to_have_text(str(n), timeout=LIVE_MS)
        await expect(tile.locator(".label")).to_have_text(STATUS[lang][status])
    by_vid = {s.vids["active"]: "active", s.vids["expiring"]: "expiring",
              s.vids["soon"]: "expiring", s.vids["lapsed"]: "lapsed",
              s.vids["unknown"]: "unknown", f.renewed: "renewal_pending",
              f.revoked: "revoked", f.pending: "pending"}  # fmt: skip
    for vid, status in by_vid.items():
        await expect(page.get_by_test_id(f"badge-{vid}")).to_have_text(STATUS[lang][status])
    starts = page.get_by_test_id(f"starts-{f.pending}")
    today = f.pending_start - timedelta(days=PENDING_IN_DAYS)
    await expect(starts).to_have_text(china_words(f.pending_start, lang, today))
    bar = page.get_by_test_id("bar-lapsed")
    await expect(bar.locator("span").first).to_have_text("2")
    await expect(bar).to_contain_text("已脱保/待生效" if lang == "zh-CN" else "Lapsed / pending")
    alerts = page.get_by_test_id("alerts")
    shown = set(await alerts.locator("li").evaluate_all("ls => ls.map(l => l.dataset.kind)"))
    assert {"lapsed_while_driving", "pending_while_driving", "vin_mismatch",
            "expiring_no_renewal"} <= shown  # fmt: skip
    for kind in shown:
        alert = alerts.locator(f'li[data-kind="{kind}"]').first
        await expect(alert).to_contain_text(KINDS[lang][kind])


async def check_actions(page: Page, f: Fleet, events: FleetEvents, lang: str, first: bool) -> None:
    """Refresh with each outcome (an unknown one too), then a bulk renewal of the soon
    car and the revoked one; at the first size also a renewal whose response is lost
    (the retry finds it already started). Each message is read in ``lang``."""
    s, message = f.s, page.get_by_test_id("message")
    soon = s.vids["soon"]
    prefix = "刷新 {}：" if lang == "zh-CN" else "Refresh {}: "
    for outcome, word in REFRESHED[lang].items():
        events.refresh_outcome = outcome
        await page.get_by_test_id(f"refresh-{soon}").click()
        await expect(message).to_have_text(prefix.format(soon) + word)
        assert await visible_problems(page, lang, f.allowed()) == []
    chosen = sorted([soon, f.revoked])
    outcomes = ["started" if vid == soon else "vehicle_revoked" for vid in chosen]

    async def select() -> None:
        for vid in chosen:
            await page.locator(f'tr[data-vid="{vid}"] input[type=checkbox]').check()

    renew = page.get_by_test_id("renew")
    if first:

        async def lose_response(route: Route) -> None:
            await route.fetch()  # the cloud starts the renewal; its answer never arrives
            await route.abort()

        await select()
        await page.route("**/renewals", lose_response)
        await renew.click()
        await expect(message).to_have_text(NOT_SENT[lang])
        assert await visible_problems(page, lang, f.allowed()) == []
        await page.unroute("**/renewals", lose_response)
        await renew.click()  # the same request again: nothing starts twice
        again = ["already_started" if o == "started" else o for o in outcomes]
        await expect(message).to_have_text(renewal_message(lang, again))
        assert await visible_problems(page, lang, f.allowed()) == []
    await select()
    await renew.click()
    await expect(message).to_have_text(renewal_message(lang, outcomes))
    await expect(renew).to_be_disabled()


def shape(table: Any) -> Any:
    """The keys of a nested table (and the length of its lists)."""
    if isinstance(table, dict):
        return {k: shape(v) for k, v in table.items()}
    return len(table) if isinstance(table, list) else type(table).__name__


def leaves(table: Any, path: str = "") -> list[tuple[str, str]]:
    """Every text of a nested table with its dotted path."""
    if isinstance(table, dict):
        return [leaf for k, v in table.items() for leaf in leaves(v, f"{path}.{k}".lstrip("."))]
    if isinstance(table, list):
        return [leaf for i, v in enumerate(table) for leaf in leaves(v, f"{path}.{i}")]
    return [(path, table)]


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))
