"""Head-unit texts in zh-CN and en: built from verified fields, masked numbers as given."""

from datetime import date

import pytest

from agent import texts

END = date(2026, 12, 31)


@pytest.mark.parametrize(
    ("status", "lang", "headline", "detail"),
    [
        ("covered", "zh-CN", "交强险有效", "保障至2026年12月31日24时，剩余36天"),
        ("covered", "en", "CTPL cover in force",
         "Covered until 2026-12-31 24:00 China time, 36 days left"),
        ("expiring", "zh-CN", "交强险即将到期", "保障至2026年12月31日24时，剩余36天"),
        ("lapsed", "en", "CTPL cover has lapsed", "Cover ended 2026-12-31 24:00 China time"),
        ("unverified", "zh-CN", "保单状态未验证", ""),
        ("mismatch", "en", "Policy does not match this vehicle", ""),
    ],
)  # fmt: skip
def test_status_texts(status: str, lang: texts.Lang, headline: str, detail: str) -> None:
    assert texts.status_text(status, lang, days_left=36, end=END) == {
        "headline": headline,
        "detail": detail,
    }


@pytest.mark.parametrize(
    ("stage", "days", "lang", "title", "in_body"),
    [
        ("d30", 30, "zh-CN", "交强险即将到期", "将于2026年12月31日24时到期，还剩30天"),
        ("d7", 7, "en", "CTPL cover ends soon",
         "PICC P&C ends 2026-12-31 24:00 China time: 7 days"),
        ("d0", 0, "zh-CN", "交强险今天到期", "今天24时到期"),
        ("lapsed", -3, "en", "CTPL cover has lapsed", "Driving uninsured is not allowed"),
    ],
)  # fmt: skip
def test_prompt_texts_name_insurer_end_and_days(
    stage: str, days: int, lang: texts.Lang, title: str, in_body: str
) -> None:
    shown = texts.prompt_text(stage, days, END, "PICC P&C", lang)
    assert shown["title"] == title and in_body in shown["body"]
    assert set(shown) >= {"accept", "snooze_trip", "snooze_day", "dismiss", "already_renewed"}


def test_the_card_shows_masked_numbers_as_given_and_the_period_in_china_time() -> None:
    card = {"policy_no": "PDZA****1234", "plate": "沪A·****5", "start": "2026-01-01",
            "end": "2026-12-31", "insurer": "PICC P&C", "claims_phone": "95518"}  # fmt: skip
    zh = texts.card_text(card, "zh-CN")
    assert zh["保单号"] == "PDZA****1234" and zh["号牌号码"] == "沪A·****5"
    assert zh["保险期间"] == "2026年1月1日0时起至2026年12月31日24时止"
    en = texts.card_text(card, "en")
    assert en["Period"] == "2026-01-01 00:00 to 2026-12-31 24:00 China time"
    assert en["Claims hotline"] == "95518" and en["title"] == "CTPL e-policy"
