"""Head-unit texts in zh-CN and en: built from verified fields, masked numbers as given,
times in China time, and the wording a native reader expects."""

import re
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from agent import texts
from agent.protocol.messages import Quote

END = date(2026, 12, 31)
AT = datetime(2026, 12, 4, 16, 0, tzinfo=UTC)  # 00:00 on 5 Dec in China
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


@pytest.mark.parametrize(
    ("status", "lang", "days", "headline", "detail"),
    [
        ("covered", "zh-CN", 36, "交强险有效", "保障至2026年12月31日24时，还剩36天"),
        ("covered", "en", 36, "CTPL cover in force",
         "Covered until 24:00 on 31 Dec 2026, 36 days left"),
        ("expiring", "zh-CN", 36, "交强险即将到期", "保障至2026年12月31日24时，还剩36天"),
        ("expiring", "zh-CN", 0, "交强险即将到期", "今天24时到期"),
        ("expiring", "zh-CN", 1, "交强险即将到期", "明天24时到期"),
        ("expiring", "en", 0, "CTPL cover ends soon", "Ends today at 24:00"),
        ("lapsed", "zh-CN", -3, "交强险已脱保",
         "已于2026年12月31日24时到期，未投保上路将被扣车并处罚款"),
        ("lapsed", "en", -3, "CTPL cover has lapsed",
         "Cover ended at 24:00 on 31 Dec 2026. Driving uninsured: the car is detained and "
         "you are fined."),
        ("unverified", "zh-CN", None, "暂无法确认保单状态", "正在向云端核验，请稍候"),
        ("mismatch", "en", None, "Policy does not match this vehicle",
         "Contact your fleet operator"),
    ],
)  # fmt: skip
def test_status_texts(
    status: str, lang: texts.Lang, days: int | None, headline: str, detail: str
) -> None:
    assert texts.status_text(status, lang, days_left=days, end=END) == {
        "headline": headline,
        "detail": detail,
    }


def test_pending_says_when_cover_starts_and_not_to_drive_before() -> None:
    zh = texts.status_text("pending", "zh-CN", days_left=365, end=END, starts_at=AT)
    assert zh == {
        "headline": "交强险待生效",
        "detail": "新保单自2026年12月5日0时起生效，生效前请勿上路",
    }
    en = texts.status_text("pending", "en", days_left=365, end=END, starts_at=AT)
    assert en["detail"] == "The new policy starts at 00:00 on 5 Dec 2026. Do not drive before then."
    on_payment = datetime(2026, 12, 3, 10, 32, tzinfo=UTC)  # 18:32 in China
    assert (
        "2026年12月3日18时32分起生效"
        in texts.status_text("pending", "zh-CN", end=END, starts_at=on_payment)["detail"]
    )


def test_unknown_with_a_known_term_is_unconfirmed_not_no_policy() -> None:
    assert texts.status_text("unknown", "zh-CN")["headline"] == "未查到交强险保单"
    assert texts.status_text("unknown", "zh-CN", end=END)["headline"] == "暂无法确认保单状态"


def test_instants_are_china_time_whatever_the_zone_given() -> None:
    new_york = datetime(2026, 12, 4, 11, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert texts.instant_text(new_york, "zh-CN") == "2026年12月5日0时"
    assert texts.instant_text(new_york, "en") == "00:00 on 5 Dec 2026"
    # 00:30 China time is still the previous day in UTC: the China date counts.
    assert texts.instant_text(datetime(2026, 12, 4, 16, 30, tzinfo=UTC), "zh-CN") == (
        "2026年12月5日0时30分"
    )


@pytest.mark.parametrize(
    ("stage", "days", "lang", "title", "in_body"),
    [
        ("d30", 30, "zh-CN", "交强险即将到期", "将于2026年12月31日24时到期，还剩30天"),
        ("d7", 7, "en", "CTPL cover ends soon", "PICC P&C ends at 24:00 on 31 Dec 2026: 7 days"),
        ("d0", 0, "zh-CN", "交强险今天24时到期", "今天24时到期"),
        ("lapsed", -3, "zh-CN", "交强险已脱保", "未投保上路将被扣车，并处应缴保费2倍的罚款"),
        ("lapsed", -3, "en", "CTPL cover has lapsed", "fined twice the premium"),
    ],
)  # fmt: skip
def test_prompt_texts_name_insurer_end_and_days(
    stage: str, days: int, lang: texts.Lang, title: str, in_body: str
) -> None:
    shown = texts.prompt_text(stage, days, END, "PICC P&C", lang)
    assert shown["title"] == title and in_body in shown["body"]
    assert set(shown) >= {"accept", "snooze_trip", "snooze_day", "dismiss", "already_renewed"}


def test_the_pending_prompt_names_the_start() -> None:
    shown = texts.prompt_text("pending", 365, END, "中国人保财险", "zh-CN", starts_at=AT)
    assert shown["title"] == "交强险待生效"
    assert shown["body"] == (
        "您在中国人保财险投保的新保单自2026年12月5日0时起生效。生效前车辆没有交强险保障，请勿上路。"
    )


def test_button_labels_read_as_agreed() -> None:
    zh = texts.prompt_text("d15", 10, END, None, "zh-CN")
    assert (zh["snooze_trip"], zh["already_renewed"], zh["dismiss"]) == (
        "下次启动时提醒", "已在其他渠道续保", "知道了",
    )  # fmt: skip


def test_the_card_shows_what_a_policy_must_show_in_china_time() -> None:
    card = {"policy_no": "PDZA****1234", "plate": "沪A·****5", "start": "2026-01-01",
            "end": "2026-12-31", "insurer": "中国人保财险",
            "insurer_address": "北京市朝阳区建国门外大街2号院2号楼", "claims_phone": "95518",
            "verified_at": "2026-12-03T10:20:00+00:00"}  # fmt: skip
    zh = texts.card_text(card, "zh-CN")
    assert list(zh) == ["title", "保单号", "号牌号码", "保险期间", "保险公司", "保险公司地址",
                        "报案电话", "最近核验"]  # fmt: skip
    assert zh["保单号"] == "PDZA****1234" and zh["号牌号码"] == "沪A·****5"
    assert zh["保险期间"] == "2026年1月1日0时起至2026年12月31日24时止"
    assert zh["最近核验"] == "2026年12月3日18时20分"
    en = texts.card_text(card, "en")
    assert en["Period"] == "00:00 on 1 Jan 2026 to 24:00 on 31 Dec 2026"
    assert en["Claims hotline"] == "95518" and en["title"] == "CTPL e-policy"
    assert en["Last verified"] == "18:20 on 3 Dec 2026"
    started = card | {"starts_at": "2026-01-01T10:32:00+00:00", "start": "2026-01-01"}
    assert texts.card_text(started, "zh-CN")["保险期间"] == (
        "2026年1月1日18时32分起至2026年12月31日24时止"
    )


def quote(**changes: object) -> Quote:
    base: dict[str, object] = dict(
        quote_id="q1", insurer_code="PICC", insurer_name="中国人保财险", start=date(2027, 1, 1),
        end=date(2027, 12, 31), ctpl="855.00", floating_rate="-0.10",
        vehicle_vessel_tax="360.00", total="1215.00", expires_at=AT, rate_basis="A1",
        claims_phone="95518",
    )  # fmt: skip
    return Quote(**(base | changes))  # type: ignore[arg-type]


def test_a_quote_reads_premium_plus_tax_equals_total_with_its_service() -> None:
    zh = texts.quote_text(quote(), "zh-CN")
    assert zh == {
        "insurer": "中国人保财险",
        "service": "报案电话 95518",
        "starts": "自2027年1月1日0时起生效",
        "price": "交强险855.00元 + 车船税360.00元 = 合计1215.00元",
        "rate": "费率下浮10%（上一个年度未发生有责任道路交通事故）",
    }
    en = texts.quote_text(quote(), "en")
    assert en["price"] == "CTPL 855.00 + vehicle tax 360.00 = CNY 1215.00"


def test_a_new_energy_quote_shows_the_tax_as_zero_with_the_reason() -> None:
    q = quote(vehicle_vessel_tax="0.00", total="855.00", tax_exemption="new_energy")
    assert texts.quote_text(q, "zh-CN")["price"] == (
        "交强险855.00元 + 车船税0.00元（新能源汽车免征） = 合计855.00元"
    )


def test_a_quote_that_starts_on_payment_says_so() -> None:
    assert texts.quote_text(quote(start_rule="on_payment"), "zh-CN")["starts"] == "支付后立即生效"


@pytest.mark.parametrize(
    ("rate", "basis", "zh"),
    [
        ("-0.30", "A1", "费率下浮30%（上一个年度未发生有责任道路交通事故）"),
        ("0.00", "A4", "费率不浮动（上一个年度发生一次有责任不涉及死亡的道路交通事故）"),
        ("0.30", "A6", "费率上浮30%（上一个年度发生有责任道路交通死亡事故）"),
        ("0.00", "new", "费率不浮动（首次投保）"),
        ("0.10", None, "费率上浮10%"),
    ],
)
def test_rate_texts(rate: str, basis: str | None, zh: str) -> None:
    assert texts.rate_text(rate, basis, "zh-CN") == zh


def test_renewal_success_says_when_the_new_term_starts() -> None:
    shown = texts.renewal_text("issued", "zh-CN", new_end=date(2027, 12, 4), new_starts_at=AT)
    assert shown == {
        "headline": "续保成功",
        "detail": "新保单自2026年12月5日0时起生效，保障至2027年12月4日24时",
    }


def test_the_quotes_screen_says_the_price_is_the_same_everywhere() -> None:
    detail = texts.renewal_text("quotes", "zh-CN")["detail"]
    assert "各保险公司保费相同" in detail and "按服务选择" in detail


@pytest.mark.parametrize(
    "reason",
    ["no_quotes", "no_gapless_quote", "vehicle_facts_unavailable", "vehicle_unknown",
     "vehicle_kind_unsupported", "region_unsupported", "tax_table_missing", "quote_expired",
     "unknown_quote", "renewal_under_way", "insurer_refused", "not_found", "timeout",
     "something_new", None],
)  # fmt: skip
def test_a_failure_is_worded_never_shown_as_its_code(reason: str | None) -> None:
    for lang in texts.LANGS:
        detail = texts.renewal_text("failed", lang, reason=reason)["detail"]
        assert detail and (reason is None or reason not in detail)
    assert not LATIN_WORD.search(texts.renewal_text("failed", "zh-CN", reason=reason)["detail"])


def test_no_latin_words_in_any_chinese_text() -> None:
    """Every zh-CN text the head unit builds, in every state, reads without English."""
    made: list[str] = []
    for status in ("covered", "expiring", "lapsed", "pending", "unknown", "unverified",
                   "mismatch"):  # fmt: skip
        made += texts.status_text(status, "zh-CN", days_left=3, end=END, starts_at=AT).values()
    for stage in ("d30", "d15", "d7", "d3", "d1", "d0", "lapsed", "pending"):
        made += texts.prompt_text(stage, 3, END, "中国人保财险", "zh-CN", starts_at=AT).values()
    for stage in ("quoting", "quotes", "binding", "awaiting_payment", "issued", "checking",
                  "renewed_elsewhere", "not_renewed", "declined", "failed"):  # fmt: skip
        made += texts.renewal_text(stage, "zh-CN", amount="1215.00", new_end=END,
                                   new_starts_at=AT, reason="no_quotes").values()  # fmt: skip
    made += texts.quote_text(quote(tax_exemption="new_energy"), "zh-CN").values()
    assert made and all(not LATIN_WORD.search(t) for t in made), [
        t for t in made if LATIN_WORD.search(t)
    ]


def test_a_rate_limited_request_says_how_long_to_wait() -> None:
    shown = texts.renewal_text("failed", "zh-CN", reason="rate_limited", retry_after_s=61)
    assert shown["detail"] == "查询过于频繁，请2分钟后再试。"
    assert (
        texts.renewal_text("failed", "en", reason="rate_limited", retry_after_s=1)["detail"]
        == "Too many requests. Please try again in 1 min."
    )
