"""The head-unit page in real headless Chromium, end to end against a real Agent.

Each test runs an Agent (simulated bus, its own Mosquitto with TLS and ACL) that the
FakeCloud verifies with a state ten days from its end, so the d15 prompt is due, and
drives the page as a driver would: taps, a car that moves, an ignition cycle, a cut
network. Screenshots go to var/screenshots/ (git-ignored).
"""

import asyncio
import struct
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from agent import reminders, texts
from agent.protocol import envelope, messages, topics
from agent.protocol.errors import SignatureError
from agent.protocol.keys import kid_for
from agent.protocol.messages import RenewalRequest, VehicleEvent
from tests.agent.conftest import eventually

from .conftest import SMALL, WIDE, Car, Screen, open_screen

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
MIN_TOUCH_PX = 64


def headline(status: str, lang: texts.Lang) -> str:
    return texts.status_text(status, lang)["headline"]


async def test_the_prompt_shows_parked_hides_moving_and_each_stage_shows_once(
    car: Car, screen: Screen
) -> None:
    page = screen.page
    prompt = page.get_by_test_id("prompt")
    moving = page.get_by_test_id("moving")
    await expect(prompt).to_be_visible()
    await expect(prompt).to_have_attribute("data-stage", "d15")
    await expect(page.get_by_test_id("prompt-title")).to_have_text(headline("expiring", "zh-CN"))
    await expect(page.get_by_test_id("status")).to_have_attribute("data-status", "expiring")

    car.bus.speed_kmh = 40
    await expect(moving).to_have_attribute("data-moving", "true")
    await expect(prompt).to_be_hidden()
    assert car.snapshot()["prompt"] is None

    car.bus.speed_kmh = 0
    await expect(moving).to_have_attribute("data-moving", "false")
    # Decided again once parked: the stage was shown on this trip, so no prompt.
    await eventually(
        lambda: car.agent.head_unit.decisions[-1:] == [reminders.Quiet("prompted")],
        "the parked decision",
    )
    await page.wait_for_timeout(300)  # several bus polls, and a pushed snapshot if any
    await expect(prompt).to_be_hidden()
    assert car.snapshot()["prompt"] is None


async def test_renew_now_sends_a_signed_quote_request(car: Car, screen: Screen) -> None:
    page = screen.page
    await expect(page.get_by_test_id("answer-accept")).to_have_text(
        texts.prompt_text("d15", 10, date.today(), None, "zh-CN")["accept"]
    )
    await page.get_by_test_id("answer-accept").click()
    await expect(page.get_by_test_id("prompt")).to_be_hidden()

    topic, payload = await car.cloud.next("renewal")
    assert topic == f"ctpl/v1/{car.vid}/up/renewal" == topics.up(car.vid, "renewal")
    keys = {kid_for(car.car_key): car.car_key}
    request = messages.decode(envelope.open_with(topic, payload, keys))
    assert isinstance(request, RenewalRequest)
    assert (request.action, request.vid, request.quote_id) == ("quote", car.vid, None)
    with pytest.raises(SignatureError):  # signed for its topic: not valid on another
        envelope.open_with(topics.up(car.vid, "event"), payload, keys)
    # The answer itself reached the fleet too.
    while True:
        topic, payload = await car.cloud.next("event")
        event = messages.decode(envelope.open_with(topic, payload, keys))
        assert isinstance(event, VehicleEvent)
        if event.event == "prompt_answered":
            break
    assert event.detail == "d15:accept"


async def test_next_ignition_snoozes_until_the_ignition_cycles(car: Car, screen: Screen) -> None:
    page = screen.page
    prompt = page.get_by_test_id("prompt")
    await expect(prompt).to_be_visible()
    first = await prompt.get_attribute("data-prompt-id")
    await page.get_by_test_id("answer-snooze_trip").click()
    await expect(prompt).to_be_hidden()
    await page.wait_for_timeout(300)
    await expect(prompt).to_be_hidden()
    assert car.snapshot()["vehicle"]["trip"] == 1

    car.bus.ignition_on = False
    await eventually(lambda: car.snapshot()["vehicle"]["ignition_on"] is False, "ignition off")
    await expect(page.get_by_test_id("moving")).to_have_attribute("data-ignition", "off")
    await expect(prompt).to_be_hidden()
    car.bus.ignition_on = True
    await expect(prompt).to_be_visible()
    await expect(prompt).not_to_have_attribute("data-prompt-id", first or "")
    assert car.snapshot()["vehicle"]["trip"] == 2


async def test_the_card_shows_offline_and_from_a_reload_with_the_network_cut(
    car: Car, screen: Screen
) -> None:
    page = screen.page
    card = page.get_by_test_id("card")
    state = car.agent.state
    assert state is not None and state.coverage_start and state.coverage_end
    period = texts.period_text(state.coverage_start, state.coverage_end, "zh-CN")
    labels = texts.CARD_LABELS["zh-CN"]

    async def card_complete() -> None:
        await expect(card).to_be_visible()
        await expect(page.get_by_test_id("card-title")).to_have_text(labels["title"])
        for shown in (
            "PDZA****1234",
            "沪A·****8",
            "PICC P&C",
            "95518",
            period,
            labels["policy_no"],
            labels["plate"],
            labels["period"],
            labels["insurer"],
            labels["claims_phone"],
        ):
            await expect(card).to_contain_text(shown)

    await card_complete()  # beside the prompt on a wide screen
    online = page.get_by_test_id("online")
    await expect(online).to_have_attribute("data-online", "true")

    await asyncio.to_thread(car.broker.stop)
    await eventually(lambda: not car.agent.connected, "the link down")
    await expect(online).to_have_attribute("data-online", "false")  # pushed, no reload
    await page.reload()
    await card_complete()
    await expect(online).to_have_attribute("data-online", "false")
    await expect(online).to_have_text("离线")
    await expect(page.get_by_test_id("status-headline")).to_have_text(headline("expiring", "zh-CN"))
    await expect(page.get_by_test_id("stale")).to_be_hidden()  # the gateway itself is up


async def test_the_language_toggle_switches_every_text(car: Car, screen: Screen) -> None:
    page = screen.page
    toggle = page.get_by_test_id("lang-toggle")
    en = texts.prompt_text("d15", 10, date.today(), None, "en")
    zh = texts.prompt_text("d15", 10, date.today(), None, "zh-CN")
    await expect(page.get_by_test_id("status-headline")).to_have_text(headline("expiring", "zh-CN"))
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_test_id("answer-accept")).to_have_text(zh["accept"])

    await toggle.click()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_test_id("status-headline")).to_have_text(headline("expiring", "en"))
    await expect(page.get_by_test_id("prompt-title")).to_have_text(en["title"])
    for answer in reminders.ANSWERS:
        await expect(page.get_by_test_id(f"answer-{answer}")).to_have_text(en[answer])
    await expect(page.get_by_test_id("card-title")).to_have_text("CTPL e-policy")
    await expect(page.get_by_test_id("online")).to_have_text("Online")
    await expect(page.get_by_test_id("moving")).to_have_text("Stopped")
    await expect(page.get_by_test_id("status-detail")).to_contain_text("10 days left")
    await expect(toggle).to_have_text("中文")

    await toggle.click()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    await expect(page.get_by_test_id("prompt-title")).to_have_text(zh["title"])
    await expect(page.get_by_test_id("answer-dismiss")).to_have_text(zh["dismiss"])
    await expect(page.get_by_test_id("status-detail")).to_contain_text("还剩10天")


async def test_the_page_polls_when_events_fail_and_keeps_the_last_state_unreachable(
    browser: Browser, car: Car
) -> None:
    context = await browser.new_context(viewport={"width": WIDE[0], "height": WIDE[1]})
    try:
        page = await context.new_page()
        await page.route("**/api/events", lambda route: route.abort())
        await page.goto(car.url)
        await expect(page.get_by_test_id("prompt")).to_be_visible()
        car.bus.speed_kmh = 30  # seen by polling /api/state alone
        await expect(page.get_by_test_id("moving")).to_have_attribute("data-moving", "true")
        await expect(page.get_by_test_id("prompt")).to_be_hidden()

        await page.route("**/api/state", lambda route: route.abort())
        stale = page.get_by_test_id("stale")
        await expect(stale).to_be_visible(timeout=8000)
        await expect(stale).to_contain_text("无法连接网关")
        await expect(stale).to_contain_text("最后更新")
        await expect(page.get_by_test_id("card")).to_be_visible()
        await expect(page.get_by_test_id("status-headline")).to_have_text(
            headline("expiring", "zh-CN")
        )
    finally:
        await context.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def check_layout(screen: Screen, size: tuple[int, int]) -> None:
    """Every visible button is a large touch target on screen; nothing scrolls."""
    page = screen.page
    for button in await page.get_by_role("button").all():
        if not await button.is_visible():
            continue
        box = await button.bounding_box()
        assert box is not None
        name = await button.get_attribute("data-testid")
        assert box["height"] >= MIN_TOUCH_PX, f"{name} is {box['height']} px tall at {size}"
        assert box["x"] >= 0 and box["x"] + box["width"] <= size[0], f"{name} off screen"
        assert box["y"] >= 0 and box["y"] + box["height"] <= size[1], f"{name} off screen"
    scroll = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    assert scroll == [size[0], size[1]], f"the page scrolls at {size}: {scroll}"


async def test_screenshots_at_both_head_unit_sizes(browser: Browser, car: Car) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    screens = {size: await open_screen(browser, car.url, size) for size in (SMALL, WIDE)}
    saved: list[Path] = []
    try:
        for size, screen in screens.items():
            page = screen.page
            await expect(page.get_by_test_id("prompt")).to_be_visible()
            await check_layout(screen, size)
            await page.get_by_test_id("lang-toggle").click()  # the CI machine has no CJK font
            await expect(page.get_by_test_id("answer-accept")).to_have_text("Renew now")
            await check_layout(screen, size)
            path = SCREENSHOTS / f"head-unit-{size[0]}x{size[1]}.png"
            await page.screenshot(path=str(path))
            saved.append(path)
        await screens[SMALL].page.get_by_test_id("answer-dismiss").click()
        for size, screen in screens.items():
            page = screen.page
            await expect(page.get_by_test_id("prompt")).to_be_hidden()
            await expect(page.get_by_test_id("card")).to_be_visible()
            await check_layout(screen, size)
            path = SCREENSHOTS / f"head-unit-{size[0]}x{size[1]}-card.png"
            await page.screenshot(path=str(path))
            saved.append(path)
        for screen in screens.values():
            assert not screen.unexpected(), screen.problems
    finally:
        for screen in screens.values():
            await screen.context.close()
    for path in saved:
        assert path.stat().st_size > 10_000, f"{path} is nearly empty"
        size = SMALL if "800x480" in path.name else WIDE
        assert png_size(path) == size
        print(f"screenshot: {path}")


async def test_quotes_are_compared_a_tap_sends_the_consent_and_payment_shows_a_qr_code(
    car: Car, screen: Screen
) -> None:
    page = screen.page
    await page.get_by_test_id("answer-accept").click()
    await car.cloud.next("renewal")  # the quote request
    now = datetime.now(UTC)
    end = car.agent.state.coverage_end if car.agent.state else None
    assert end is not None
    offers = tuple(
        messages.Quote(
            quote_id=qid, insurer_code=code, insurer_name=name, start=end + timedelta(days=1),
            end=end.replace(year=end.year + 1), ctpl=ctpl, floating_rate="-0.30",
            vehicle_vessel_tax="360.00", total=total, expires_at=now + timedelta(minutes=15),
        )
        for qid, code, name, ctpl, total in (
            ("q_picc", "PICC", "中国人保财险", "665.00", "1025.00"),
            ("q_pingan", "PINGAN", "平安产险", "665.00", "1025.00"),
        )
    )  # fmt: skip
    car.cloud.seq += 1
    car.cloud._publish("renewal", messages.RenewalUpdate(
        vid=car.vid, seq=car.cloud.seq, issued_at=now, renewal_id="r_1", stage="quotes",
        quotes=offers))  # fmt: skip
    await expect(page.get_by_test_id("renewal")).to_be_visible()
    await expect(page.get_by_test_id("quote-q_pingan")).to_contain_text("1025.00")
    await page.get_by_test_id("quote-q_pingan").click()
    topic, payload = await car.cloud.next("renewal")
    keys = {kid_for(car.car_key): car.car_key}
    consent = messages.decode(envelope.open_with(topic, payload, keys))
    assert isinstance(consent, RenewalRequest)
    assert (consent.action, consent.quote_id) == ("accept", "q_pingan")
    car.cloud.seq += 1
    car.cloud._publish("renewal", messages.RenewalUpdate(
        vid=car.vid, seq=car.cloud.seq, issued_at=now, renewal_id="r_1",
        stage="awaiting_payment", payment_url="https://pay.pingan.test/pay/ord_1",
        amount="1025.00"))  # fmt: skip
    qr = page.get_by_test_id("payment-qr")
    await expect(qr).to_be_visible()
    assert (await qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    await expect(page.get_by_test_id("renewal-detail")).to_contain_text("1025.00")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "head-unit-payment-1280x720.png"
    await page.screenshot(path=str(shot))
    print(f"\npayment screenshot: {shot}")
