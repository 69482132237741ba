"""What the head unit says, in zh-CN and en. Pure.

Every text is built from verified fields only: the insurer, the end date (24:00 China
time), days left. Policy numbers and plates arrive masked from the cloud and are shown
as they are; nothing here ever sees a VIN.
"""

from datetime import date
from typing import Any, Final, Literal

Lang = Literal["zh-CN", "en"]
LANGS: Final[tuple[Lang, ...]] = ("zh-CN", "en")

_STATUS: Final[dict[str, dict[Lang, str]]] = {
    "covered": {"zh-CN": "交强险有效", "en": "CTPL cover in force"},
    "expiring": {"zh-CN": "交强险即将到期", "en": "CTPL cover ends soon"},
    "lapsed": {"zh-CN": "交强险已脱保", "en": "CTPL cover has lapsed"},
    "unknown": {"zh-CN": "未查到交强险保单", "en": "No CTPL policy found"},
    "unverified": {"zh-CN": "保单状态未验证", "en": "Status unverified"},
    "mismatch": {"zh-CN": "保单与本车不符", "en": "Policy does not match this vehicle"},
}

_BUTTONS: Final[dict[str, dict[Lang, str]]] = {
    "accept": {"zh-CN": "立即续保", "en": "Renew now"},
    "snooze_trip": {"zh-CN": "下次启动提醒", "en": "Next ignition"},
    "snooze_day": {"zh-CN": "明天提醒", "en": "Tomorrow"},
    "dismiss": {"zh-CN": "知道了", "en": "Dismiss"},
    "already_renewed": {"zh-CN": "已在别处续保", "en": "Already renewed"},
}

CARD_LABELS: Final[dict[Lang, dict[str, str]]] = {
    "zh-CN": {
        "title": "交强险电子保单",
        "policy_no": "保单号",
        "plate": "号牌号码",
        "period": "保险期间",
        "insurer": "保险公司",
        "claims_phone": "报案电话",
        "verified_at": "核验时间",
    },
    "en": {
        "title": "CTPL e-policy",
        "policy_no": "Policy no.",
        "plate": "Plate",
        "period": "Period",
        "insurer": "Insurer",
        "claims_phone": "Claims hotline",
        "verified_at": "Verified",
    },
}


def end_text(end: date, lang: Lang) -> str:
    """When cover ends: 24:00 China time of ``end``."""
    if lang == "zh-CN":
        return f"{end.year}年{end.month}月{end.day}日24时"
    return f"{end.isoformat()} 24:00 China time"


def period_text(start: date, end: date, lang: Lang) -> str:
    """The policy period as the card shows it (00:00 of the start to 24:00 of the end)."""
    if lang == "zh-CN":
        return f"{start.year}年{start.month}月{start.day}日0时起至{end_text(end, lang)}止"
    return f"{start.isoformat()} 00:00 to {end_text(end, lang)}"


def status_text(
    status: str, lang: Lang, *, days_left: int | None = None, end: date | None = None
) -> dict[str, str]:
    """The headline for a head status (or ``unverified`` / ``mismatch``) and one detail line."""
    headline = _STATUS[status][lang]
    detail = ""
    if status in ("covered", "expiring") and end is not None and days_left is not None:
        detail = (
            f"保障至{end_text(end, lang)}，剩余{days_left}天"
            if lang == "zh-CN"
            else f"Covered until {end_text(end, lang)}, {days_left} days left"
        )
    elif status == "lapsed" and end is not None:
        detail = (
            f"保障已于{end_text(end, lang)}结束"
            if lang == "zh-CN"
            else f"Cover ended {end_text(end, lang)}"
        )
    return {"headline": headline, "detail": detail}


def prompt_text(
    stage: str, days_left: int, end: date, insurer: str | None, lang: Lang
) -> dict[str, str]:
    """Title, body and button labels of a renewal prompt."""
    who = insurer or ("您的保险公司" if lang == "zh-CN" else "your insurer")
    if stage == "lapsed":
        title = _STATUS["lapsed"][lang]
        body = (
            f"您的交强险（{who}）已于{end_text(end, lang)}到期。未投保不得上路行驶。"
            if lang == "zh-CN"
            else f"Your CTPL policy with {who} ended {end_text(end, lang)}. "
            "Driving uninsured is not allowed."
        )
    elif stage == "d0":
        title = "交强险今天到期" if lang == "zh-CN" else "CTPL cover ends today"
        body = (
            f"您的交强险（{who}）将于今天24时到期，请及时续保。"
            if lang == "zh-CN"
            else f"Your CTPL policy with {who} ends today at 24:00 China time. Renew now."
        )
    else:
        title = _STATUS["expiring"][lang]
        body = (
            f"您的交强险（{who}）将于{end_text(end, lang)}到期，还剩{days_left}天。"
            if lang == "zh-CN"
            else f"Your CTPL policy with {who} ends {end_text(end, lang)}: {days_left} days left."
        )
    return {"title": title, "body": body} | {k: v[lang] for k, v in _BUTTONS.items()}


def card_text(card: dict[str, Any], lang: Lang) -> dict[str, str]:
    """The e-policy card's lines: label → value, from the card's verified fields."""
    labels = CARD_LABELS[lang]
    lines = {"title": labels["title"]}
    for key in ("policy_no", "plate", "insurer", "claims_phone"):
        if card.get(key):
            lines[labels[key]] = str(card[key])
    if card.get("start") and card.get("end"):
        start, end = date.fromisoformat(card["start"]), date.fromisoformat(card["end"])
        lines[labels["period"]] = period_text(start, end, lang)
    return lines


_RENEWAL: Final[dict[str, dict[Lang, str]]] = {
    "quoting": {"zh-CN": "正在询价…", "en": "Getting quotes…"},
    "quotes": {"zh-CN": "请选择续保方案", "en": "Choose a quote"},
    "binding": {"zh-CN": "正在向保险公司下单…", "en": "Placing the order…"},
    "declined": {"zh-CN": "已取消续保", "en": "Renewal declined"},
    "awaiting_payment": {"zh-CN": "请用手机扫码支付", "en": "Scan with your phone to pay"},
    "issued": {"zh-CN": "续保成功", "en": "Renewed"},
    "checking": {"zh-CN": "正在核实续保信息…", "en": "Checking the sources…"},
    "renewed_elsewhere": {"zh-CN": "已确认在别处续保", "en": "Renewal elsewhere confirmed"},
    "not_renewed": {"zh-CN": "未查到新的保单", "en": "No new policy found yet"},
    "failed": {"zh-CN": "续保未完成", "en": "Renewal did not complete"},
}


def renewal_text(
    stage: str, lang: Lang, *, amount: str | None = None, new_end: date | None = None
) -> dict[str, str]:
    """Headline and detail for a renewal update."""
    headline = _RENEWAL.get(stage, _RENEWAL["failed"])[lang]
    detail = ""
    if stage == "awaiting_payment" and amount is not None:
        detail = f"应付 {amount} 元" if lang == "zh-CN" else f"Amount due: CNY {amount}"
    elif stage in ("issued", "renewed_elsewhere") and new_end is not None:
        detail = (
            f"新保单保障至{end_text(new_end, lang)}"
            if lang == "zh-CN"
            else f"New cover until {end_text(new_end, lang)}"
        )
    return {"headline": headline, "detail": detail}
