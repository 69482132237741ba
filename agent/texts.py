"""What the head unit says, in zh-CN (the first language) and en. Pure.

Every text is built from verified fields only: the insurer's name (never its code), the
start and end instants in China time, days left, the quotes' lines. Policy numbers and
plates arrive masked from the cloud and are shown as they are; nothing here ever sees a
VIN. Times are China time whatever the gateway's zone: cover ends at 24:00 of the end
date and starts at 00:00 of the start date, or at the exact instant a term bought to
start on payment names.
"""

from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal, Protocol

from .protocol.calendar import CHINA_TZ

Lang = Literal["zh-CN", "en"]
LANGS: Final[tuple[Lang, ...]] = ("zh-CN", "en")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                  "Dec")  # fmt: skip

_STATUS: Final[dict[str, dict[Lang, str]]] = {
    "covered": {"zh-CN": "交强险有效", "en": "CTPL cover in force"},
    "expiring": {"zh-CN": "交强险即将到期", "en": "CTPL cover ends soon"},
    "lapsed": {"zh-CN": "交强险已脱保", "en": "CTPL cover has lapsed"},
    "pending": {"zh-CN": "交强险待生效", "en": "CTPL cover not yet in force"},
    "unknown": {"zh-CN": "未查到交强险保单", "en": "No CTPL policy found"},
    "unconfirmed": {"zh-CN": "暂无法确认保单状态", "en": "Policy status cannot be confirmed"},
    "unverified": {"zh-CN": "暂无法确认保单状态", "en": "Policy status cannot be confirmed"},
    "mismatch": {"zh-CN": "保单与本车不符", "en": "Policy does not match this vehicle"},
}
"""Headlines by head status; ``unconfirmed``: ``unknown`` for a car whose term is known
(the sources could not confirm it just now)."""

_BUTTONS: Final[dict[str, dict[Lang, str]]] = {
    "accept": {"zh-CN": "立即续保", "en": "Renew now"},
    "snooze_trip": {"zh-CN": "下次启动时提醒", "en": "Remind me next start"},
    "snooze_day": {"zh-CN": "明天提醒", "en": "Remind me tomorrow"},
    "dismiss": {"zh-CN": "知道了", "en": "OK"},
    "already_renewed": {"zh-CN": "已在其他渠道续保", "en": "Already renewed elsewhere"},
}

CARD_LABELS: Final[dict[Lang, dict[str, str]]] = {
    "zh-CN": {
        "title": "交强险电子保单",
        "policy_no": "保单号",
        "plate": "号牌号码",
        "period": "保险期间",
        "insurer": "保险公司",
        "insurer_address": "保险公司地址",
        "claims_phone": "报案电话",
        "verified_at": "最近核验",
    },
    "en": {
        "title": "CTPL e-policy",
        "policy_no": "Policy no.",
        "plate": "Plate",
        "period": "Period",
        "insurer": "Insurer",
        "insurer_address": "Insurer's address",
        "claims_phone": "Claims hotline",
        "verified_at": "Last verified",
    },
}
"""The e-policy card's rows: what a policy must show (regulation Art. 12), and when the
car last verified it."""

_ROWS: Final[dict[str, dict[Lang, str]]] = {
    "A1": {"zh-CN": "上一个年度未发生有责任道路交通事故",
           "en": "no at-fault accident last year"},
    "A2": {"zh-CN": "上两个年度未发生有责任道路交通事故",
           "en": "no at-fault accident in the last two years"},
    "A3": {"zh-CN": "上三个及以上年度未发生有责任道路交通事故",
           "en": "no at-fault accident in three years or more"},
    "A4": {"zh-CN": "上一个年度发生一次有责任不涉及死亡的道路交通事故",
           "en": "one at-fault accident last year"},
    "A5": {"zh-CN": "上一个年度发生两次及以上有责任道路交通事故",
           "en": "two or more at-fault accidents last year"},
    "A6": {"zh-CN": "上一个年度发生有责任道路交通死亡事故",
           "en": "an at-fault fatal accident last year"},
    "new": {"zh-CN": "首次投保", "en": "first insurance"},
}  # fmt: skip
"""The rows of the 2020 floating-rate schemes, as the driver's claims record stands."""

_RENEWAL: Final[dict[str, dict[Lang, str]]] = {
    "quoting": {"zh-CN": "正在询价…", "en": "Getting quotes…"},
    "quotes": {"zh-CN": "请选择保险公司", "en": "Choose an insurer"},
    "binding": {"zh-CN": "正在向保险公司下单…", "en": "Placing the order…"},
    "declined": {"zh-CN": "已取消续保", "en": "Renewal cancelled"},
    "awaiting_payment": {"zh-CN": "请用手机扫码支付", "en": "Scan with your phone to pay"},
    "issued": {"zh-CN": "续保成功", "en": "Renewed"},
    "checking": {"zh-CN": "正在核实续保信息…", "en": "Checking with the insurers…"},
    "renewed_elsewhere": {"zh-CN": "已确认在其他渠道续保", "en": "Renewal elsewhere confirmed"},
    "not_renewed": {"zh-CN": "暂未查到新保单", "en": "No new policy found yet"},
    "failed": {"zh-CN": "续保未完成", "en": "Renewal not completed"},
}

_REASONS: Final[dict[str, dict[Lang, str]]] = {
    "no_quotes": {"zh-CN": "暂时无法获取报价，请稍后再试。",
                  "en": "No insurer could quote just now. Please try again later."},
    "no_gapless_quote": {"zh-CN": "暂无能与现有保单衔接的报价，请稍后再试。",
                         "en": "No quote follows on from your current cover. Try again later."},
    "vehicle_facts_unavailable": {"zh-CN": "暂时无法查询车辆信息，请稍后再试。",
                                  "en": "The vehicle's record cannot be read just now. "
                                        "Try again later."},
    "vehicle_unknown": {"zh-CN": "未查到本车的登记信息，请联系车队管理员。",
                        "en": "This vehicle's registration was not found. "
                              "Contact your fleet operator."},
    "vehicle_kind_unsupported": {"zh-CN": "本车车型暂不支持在车上续保，请直接联系保险公司办理。",
                                 "en": "This kind of vehicle cannot be renewed from the car. "
                                       "Please renew with an insurer."},
    "region_unsupported": {"zh-CN": "本车登记地暂不支持在车上续保，请直接联系保险公司办理。",
                           "en": "Vehicles registered in this region cannot be renewed from "
                                 "the car yet. Please renew with an insurer."},
    "tax_table_missing": {"zh-CN": "本车登记地暂不支持在车上续保，请直接联系保险公司办理。",
                          "en": "Vehicles registered in this region cannot be renewed from "
                                "the car yet. Please renew with an insurer."},
    "quote_expired": {"zh-CN": "报价已过期，请重新询价。",
                      "en": "The quote has expired. Please ask for new quotes."},
    "unknown_quote": {"zh-CN": "该报价已失效，请重新询价。",
                      "en": "That quote is no longer valid. Please ask for new quotes."},
    "renewal_under_way": {"zh-CN": "已有一笔续保正在办理。",
                          "en": "A renewal is already under way."},
    "insurer_refused": {"zh-CN": "保险公司未能出单，请重新询价。",
                        "en": "The insurer could not issue the policy. "
                              "Please ask for new quotes."},
    "rate_limited": {"zh-CN": "查询过于频繁，请过几分钟再试。",
                     "en": "Too many requests. Please try again in a few minutes."},
    "not_found": {"zh-CN": "如刚在其他渠道续保，信息同步可能需要一些时间，请稍后再试。",
                  "en": "A renewal made elsewhere can take a while to show. Try again later."},
}  # fmt: skip
"""Why a renewal did not complete, by the stable ``reason`` code; any other code reads
as the fallback below, never as the code itself."""
_REASON_FALLBACK: Final[dict[Lang, str]] = {
    "zh-CN": "请稍后再试，或直接联系保险公司办理。",
    "en": "Please try again later, or renew with an insurer.",
}


class QuoteLike(Protocol):
    """What ``quote_text`` reads of a quote (``messages.Quote``)."""

    @property
    def insurer_name(self) -> str: ...
    @property
    def start(self) -> date: ...
    @property
    def start_rule(self) -> str | None: ...
    @property
    def ctpl(self) -> str: ...
    @property
    def vehicle_vessel_tax(self) -> str: ...
    @property
    def tax_exemption(self) -> str | None: ...
    @property
    def total(self) -> str: ...
    @property
    def claims_phone(self) -> str | None: ...
    @property
    def floating_rate(self) -> str: ...
    @property
    def rate_basis(self) -> str | None: ...


def day_text(day: date, lang: Lang) -> str:
    """A calendar date: ``2026年12月5日`` / ``5 Dec 2026``."""
    if lang == "zh-CN":
        return f"{day.year}年{day.month}月{day.day}日"
    return f"{day.day} {_MONTHS[day.month - 1]} {day.year}"


def instant_text(at: datetime, lang: Lang) -> str:
    """An instant in China time: ``2026年12月5日0时``, ``2026年12月3日18时32分`` /
    ``00:00 on 5 Dec 2026``."""
    local = at.astimezone(CHINA_TZ)
    if lang == "zh-CN":
        minutes = f"{local.minute}分" if local.minute else ""
        return f"{day_text(local.date(), lang)}{local.hour}时{minutes}"
    return f"{local.hour:02d}:{local.minute:02d} on {day_text(local.date(), lang)}"


def end_text(end: date, lang: Lang) -> str:
    """When cover ends: 24:00 China time of ``end``."""
    if lang == "zh-CN":
        return f"{day_text(end, lang)}24时"
    return f"24:00 on {day_text(end, lang)}"


def start_text(start: date, starts_at: datetime | None, lang: Lang) -> str:
    """When cover starts: the exact instant if the term names one, else 00:00 of ``start``."""
    if starts_at is not None:
        return instant_text(starts_at, lang)
    return f"{day_text(start, lang)}0时" if lang == "zh-CN" else f"00:00 on {day_text(start, lang)}"


def period_text(start: date, end: date, lang: Lang, starts_at: datetime | None = None) -> str:
    """The policy period as the card shows it (from its start instant to 24:00 of the end)."""
    begins = start_text(start, starts_at, lang)
    if lang == "zh-CN":
        return f"{begins}起至{end_text(end, lang)}止"
    return f"{begins} to {end_text(end, lang)}"


def _ends_in(days_left: int, end: date, lang: Lang) -> str:
    """``今天24时到期`` on the end day, else the end and the days left."""
    if lang == "zh-CN":
        if days_left == 0:
            return "今天24时到期"
        if days_left == 1:
            return "明天24时到期"
        return f"保障至{end_text(end, lang)}，还剩{days_left}天"
    if days_left == 0:
        return "Ends today at 24:00"
    if days_left == 1:
        return "Ends tomorrow at 24:00"
    return f"Covered until {end_text(end, lang)}, {days_left} days left"


def status_text(
    status: str,
    lang: Lang,
    *,
    days_left: int | None = None,
    end: date | None = None,
    starts_at: datetime | None = None,
) -> dict[str, str]:
    """The headline for a head status (or ``unverified`` / ``mismatch``) and one detail line."""
    if status == "unknown" and end is not None:
        status = "unconfirmed"
    headline = _STATUS[status][lang]
    zh = lang == "zh-CN"
    detail = ""
    if status in ("covered", "expiring") and end is not None and days_left is not None:
        detail = _ends_in(days_left, end, lang)
    elif status == "lapsed" and end is not None:
        detail = (
            f"已于{end_text(end, lang)}到期，未投保上路将被扣车并处罚款"
            if zh
            else f"Cover ended at {end_text(end, lang)}. Driving uninsured: the car is "
            "detained and you are fined."
        )
    elif status == "pending" and starts_at is not None:
        detail = (
            f"新保单自{instant_text(starts_at, lang)}起生效，生效前请勿上路"
            if zh
            else f"The new policy starts at {instant_text(starts_at, lang)}. "
            "Do not drive before then."
        )
    elif status in ("unverified", "unconfirmed"):
        detail = "正在向云端核验，请稍候" if zh else "Waiting for the cloud to confirm"
    elif status == "unknown":
        detail = "未投保的车辆不得上路行驶" if zh else "An uninsured car must not be driven"
    elif status == "mismatch":
        detail = "请联系车队管理员" if zh else "Contact your fleet operator"
    return {"headline": headline, "detail": detail}


def prompt_text(
    stage: str,
    days_left: int,
    end: date,
    insurer: str | None,
    lang: Lang,
    *,
    starts_at: datetime | None = None,
) -> dict[str, str]:
    """Title, body and button labels of a prompt for ``stage``."""
    zh = lang == "zh-CN"
    who = insurer or ("您的保险公司" if zh else "your insurer")
    if stage == "lapsed":
        title = _STATUS["lapsed"][lang]
        body = (
            f"您在{who}投保的交强险已于{end_text(end, lang)}到期。未投保上路将被扣车，"
            "并处应缴保费2倍的罚款，请立即续保。"
            if zh
            else f"Your CTPL policy with {who} ended at {end_text(end, lang)}. Driving "
            "uninsured: the car is detained until insured and you are fined twice the "
            "premium. Please renew now."
        )
    elif stage == "pending":
        title = _STATUS["pending"][lang]
        begins = instant_text(starts_at, lang) if starts_at is not None else ""
        body = (
            f"您在{who}投保的新保单自{begins}起生效。生效前车辆没有交强险保障，请勿上路。"
            if zh
            else f"Your new policy with {who} starts at {begins}. Until then the car is "
            "uninsured: do not drive it."
        )
    elif stage == "d0":
        title = "交强险今天24时到期" if zh else "CTPL cover ends today at 24:00"
        body = (
            f"您在{who}投保的交强险将于今天24时到期，请及时续保。"
            if zh
            else f"Your CTPL policy with {who} ends today at 24:00. Please renew now."
        )
    else:
        title = _STATUS["expiring"][lang]
        body = (
            f"您在{who}投保的交强险将于{end_text(end, lang)}到期，还剩{days_left}天，请及时续保。"
            if zh
            else f"Your CTPL policy with {who} ends at {end_text(end, lang)}: "
            f"{days_left} days left. Please renew."
        )
    return {"title": title, "body": body} | {k: v[lang] for k, v in _BUTTONS.items()}


def card_text(card: dict[str, Any], lang: Lang) -> dict[str, str]:
    """The e-policy card's lines: label → value, from the card's verified fields."""
    labels = CARD_LABELS[lang]
    lines = {"title": labels["title"]}
    for key in ("policy_no", "plate"):
        if card.get(key):
            lines[labels[key]] = str(card[key])
    if card.get("start") and card.get("end"):
        start, end = date.fromisoformat(card["start"]), date.fromisoformat(card["end"])
        starts_at = datetime.fromisoformat(card["starts_at"]) if card.get("starts_at") else None
        lines[labels["period"]] = period_text(start, end, lang, starts_at)
    for key in ("insurer", "insurer_address", "claims_phone"):
        if card.get(key):
            lines[labels[key]] = str(card[key])
    if card.get("verified_at"):
        lines[labels["verified_at"]] = instant_text(
            datetime.fromisoformat(card["verified_at"]), lang
        )
    return lines


def _money(amount: str, lang: Lang) -> str:
    return f"{amount}元" if lang == "zh-CN" else f"CNY {amount}"


def rate_text(floating_rate: str, basis: str | None, lang: Lang) -> str:
    """The floating rate and why: ``下浮10%（上一个年度未发生有责任道路交通事故）``."""
    try:
        percent = int((Decimal(floating_rate) * 100).to_integral_value())
    except (InvalidOperation, ValueError):
        return ""
    why = _ROWS.get(basis or "", {}).get(lang)
    if lang == "zh-CN":
        moved = "不浮动" if percent == 0 else f"{'下' if percent < 0 else '上'}浮{abs(percent)}%"
        return f"费率{moved}（{why}）" if why else f"费率{moved}"
    moved = "no adjustment" if percent == 0 else f"{percent:+d}%"
    return f"Rate {moved} ({why})" if why else f"Rate {moved}"


def quote_text(q: QuoteLike, lang: Lang) -> dict[str, str]:
    """One quote's lines: the insurer and its service, when cover starts, the price as
    premium + tax = total (a new-energy car's tax shown as 0 with the reason), the rate."""
    zh = lang == "zh-CN"
    if q.start_rule == "on_payment":
        starts = "支付后立即生效" if zh else "Cover starts on payment"
    else:
        begins = start_text(q.start, None, lang)
        starts = f"自{begins}起生效" if zh else f"Cover from {begins}"
    exempt = q.tax_exemption == "new_energy"
    if zh:
        note = "（新能源汽车免征）" if exempt else ""
        price = (f"交强险{_money(q.ctpl, lang)} + 车船税{_money(q.vehicle_vessel_tax, lang)}"
                 f"{note} = 合计{_money(q.total, lang)}")  # fmt: skip
        service = f"报案电话 {q.claims_phone}" if q.claims_phone else ""
    else:
        note = " (new energy: exempt)" if exempt else ""
        price = (f"CTPL {q.ctpl} + vehicle tax {q.vehicle_vessel_tax}{note} = "
                 f"{_money(q.total, lang)}")  # fmt: skip
        service = f"Claims hotline {q.claims_phone}" if q.claims_phone else ""
    return {
        "insurer": q.insurer_name,
        "service": service,
        "starts": starts,
        "price": price,
        "rate": rate_text(q.floating_rate, q.rate_basis, lang),
    }


def renewal_text(
    stage: str,
    lang: Lang,
    *,
    amount: str | None = None,
    new_end: date | None = None,
    new_starts_at: datetime | None = None,
    reason: str | None = None,
    retry_after_s: int | None = None,
) -> dict[str, str]:
    """Headline and detail for a renewal update (a failure's detail worded from its reason;
    ``rate_limited`` with the minutes to wait when given)."""
    zh = lang == "zh-CN"
    headline = _RENEWAL.get(stage, _RENEWAL["failed"])[lang]
    detail = ""
    if stage == "quotes":
        detail = (
            "交强险条款和费率全国统一，各保险公司保费相同，可按服务选择。"
            if zh
            else "CTPL costs the same at every insurer: choose on service."
        )
    elif stage == "awaiting_payment" and amount is not None:
        detail = f"应付{amount}元" if zh else f"Amount due: CNY {amount}"
    elif stage == "issued" and new_starts_at is not None:
        begins = instant_text(new_starts_at, lang)
        until = f"，保障至{end_text(new_end, lang)}" if new_end is not None and zh else ""
        detail = (
            f"新保单自{begins}起生效{until}"
            if zh
            else f"The new policy starts at {begins}"
            + (f" and covers you until {end_text(new_end, lang)}" if new_end else "")
        )
    elif stage in ("issued", "renewed_elsewhere") and new_end is not None:
        detail = (
            f"新保单保障至{end_text(new_end, lang)}"
            if zh
            else f"New cover until {end_text(new_end, lang)}"
        )
    elif stage == "failed" and reason == "rate_limited" and retry_after_s is not None:
        minutes = max(1, -(-retry_after_s // 60))
        detail = (
            f"查询过于频繁，请{minutes}分钟后再试。"
            if zh
            else f"Too many requests. Please try again in {minutes} min."
        )
    elif stage in ("failed", "not_renewed"):
        detail = _REASONS.get(reason or "", _REASON_FALLBACK)[lang]
    return {"headline": headline, "detail": detail}
