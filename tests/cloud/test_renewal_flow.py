"""The renewal flow as tables: every step, its repeats, and the refusals."""

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.protocol import calendar
from cloud import renewal_flow as rf
from cloud.renewal_flow import FlowError, QuoteOffer, Stage

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
OLD_END = date(2026, 12, 31)
VID = "vaaaaaaaaaaaaaaa1"
ASK, YES, AGAIN = "a" * 32, "b" * 32, "c" * 32


def offer(qid: str, total: str, start: date = date(2027, 1, 1), code: str = "PICC") -> QuoteOffer:
    return QuoteOffer(qid, code, code, start, date(2027, 12, 31), "665.00", "-0.30", "360.00",
                      total, NOW + timedelta(minutes=15))  # fmt: skip


def quoted() -> rf.Flow:
    flow = rf.start(rf.renewal_id_for(ASK), VID, ASK, OLD_END)
    return rf.quotes_ready(flow, [offer("q2", "1100.00", code="PINGAN"), offer("q1", "1025.00")])


def test_quote_accept_bind_pay_issue() -> None:
    flow = quoted()
    assert flow.stage is Stage.QUOTES and [q.quote_id for q in flow.quotes] == ["q1", "q2"]
    flow = rf.accept(flow, YES, "q1", NOW)
    assert (flow.stage, flow.bind_key, flow.insurer_code, flow.amount) == (
        Stage.BINDING, YES, "PICC", "1025.00",
    )  # fmt: skip
    flow = rf.bound(flow, "ord_1", "https://pay.test/ord_1", "1025.00")
    assert flow.stage is Stage.AWAITING_PAYMENT and flow.payment_url == "https://pay.test/ord_1"
    flow = rf.paid(flow, "ord_1", date(2027, 1, 1), date(2027, 12, 31))
    assert (flow.stage, flow.new_end, flow.payment_url) == (Stage.ISSUED, date(2027, 12, 31), None)
    assert flow.history == ("quoting", "quotes", "binding", "awaiting_payment", "issued")


def test_every_step_is_safe_to_repeat() -> None:
    flow = rf.accept(quoted(), YES, "q1", NOW)
    assert rf.accept(flow, YES, "q1", NOW) == flow  # the same consent, re-sent
    assert rf.accept(flow, AGAIN, "q1", NOW) == flow  # the same choice, tapped twice
    flow = rf.bound(flow, "ord_1", "https://pay.test/ord_1", "1025.00")
    assert rf.bound(flow, "ord_2", "https://pay.test/ord_2", "1.00") == flow
    assert rf.accept(flow, YES, "q1", NOW) == flow
    issued = rf.paid(flow, "ord_1", date(2027, 1, 1), date(2027, 12, 31))
    assert rf.paid(issued, "ord_1", date(2027, 1, 1), date(2027, 12, 31)) == issued  # webhook x2
    assert rf.quotes_ready(issued, [offer("q9", "1.00")]) == issued


@pytest.mark.parametrize(
    ("name", "step", "code"),
    [
        ("a quote not offered to this car", lambda f: rf.accept(f, YES, "q_other", NOW),
         "unknown_quote"),
        ("an expired quote", lambda f: rf.accept(f, YES, "q1", NOW + timedelta(hours=1)),
         "quote_expired"),
        ("another quote while binding",
         lambda f: rf.accept(rf.accept(f, YES, "q1", NOW), AGAIN, "q2", NOW),
         "renewal_under_way"),
        ("a webhook for another order", lambda f: rf.paid(
            rf.bound(rf.accept(f, YES, "q1", NOW), "ord_1", "https://p/1", "1.00"),
            "ord_X", date(2027, 1, 1), date(2027, 12, 31)), "unknown_order"),
        ("a webhook before any bind", lambda f: rf.paid(f, "ord_1", date(2027, 1, 1),
                                                        date(2027, 12, 31)), "unknown_order"),
    ],
)  # fmt: skip
def test_refusals(name: str, step: object, code: str) -> None:
    with pytest.raises(FlowError) as info:
        step(quoted())  # type: ignore[operator]
    assert info.value.code == code, name


def test_no_gap_and_no_overlap() -> None:
    flow = rf.start("r_1", VID, ASK, OLD_END)
    assert flow.start_day == date(2027, 1, 1)
    late = rf.quotes_ready(flow, [offer("q1", "1.00", start=date(2027, 1, 2))])
    assert late.stage is Stage.FAILED  # a quote that leaves a day uncovered is not offered
    assert late.reason == "no_gapless_quote"
    flow = rf.bound(rf.accept(quoted(), YES, "q1", NOW), "ord_1", "https://p/1", "1.00")
    overlap = rf.paid(flow, "ord_1", date(2026, 12, 31), date(2027, 12, 30))
    assert overlap.stage is Stage.FAILED and overlap.reason == "overlap"
    assert "not after 2026-12-31" in (overlap.message or "")


def test_a_payment_after_the_old_end_is_issued_from_the_start_the_insurer_gives() -> None:
    """Paid after the old term ended: the insurer cannot backdate, so the new term starts
    later. The driver paid and the policy exists: it is issued, never failed or lost."""
    flow = rf.bound(rf.accept(quoted(), YES, "q1", NOW), "ord_1", "https://p/1", "1.00")
    issued = rf.paid(flow, "ord_1", date(2027, 1, 2), date(2028, 1, 1))
    assert issued.stage is Stage.ISSUED and issued.new_end == date(2028, 1, 1)
    assert issued.new_starts_at == datetime(2027, 1, 2, tzinfo=calendar.CHINA_TZ)


def test_a_lapsed_car_takes_the_earliest_start_any_insurer_allows() -> None:
    lapsed = rf.start("r_1", VID, ASK, date(2026, 11, 20), covered=False)
    assert lapsed.start_day is None and lapsed.old_end == date(2026, 11, 20)
    tomorrow, today = date(2026, 11, 26), date(2026, 11, 25)
    midnight = offer("q1", "1215.00", start=tomorrow)
    on_payment = replace(offer("q2", "1215.00", start=today, code="PINGAN"),
                         start_rule="on_payment")  # fmt: skip
    shown = rf.quotes_ready(lapsed, [midnight, on_payment])
    # The same price everywhere: cover that starts sooner comes first.
    assert shown.stage is Stage.QUOTES and [q.quote_id for q in shown.quotes] == ["q2", "q1"]
    flow = rf.bound(rf.accept(shown, YES, "q2", NOW), "ord_1", "https://p/1", "1215.00")
    at = datetime(2026, 11, 25, 6, 1, tzinfo=UTC)
    issued = rf.paid(flow, "ord_1", today, date(2027, 11, 24), at)
    assert (issued.stage, issued.new_starts_at) == (Stage.ISSUED, at)


def test_never_insured_has_no_old_end_and_no_start_day() -> None:
    flow = rf.start("r_1", VID, ASK, None, covered=True)
    assert (flow.old_end, flow.start_day) == (None, None)
    shown = rf.quotes_ready(flow, [offer("q1", "1310.00", start=date(2026, 11, 26))])
    assert shown.stage is Stage.QUOTES


def test_the_json_round_trip_keeps_every_field_and_reads_old_rows() -> None:
    flow = rf.start("r_1", VID, ASK, date(2026, 11, 20), covered=False)
    flow = rf.quotes_ready(flow, [replace(offer("q2", "855.00", code="PINGAN"),
                                          start_rule="on_payment", rate_basis="A1",
                                          tax_exemption="new_energy")])  # fmt: skip
    flow = rf.bound(rf.accept(flow, YES, "q2", NOW), "o", "https://p/o", "855.00")
    flow = rf.paid(flow, "o", date(2027, 1, 1), date(2027, 12, 31), NOW)
    assert rf.from_json(rf.to_json(flow)) == flow
    old = json.loads(rf.to_json(quoted()))
    for key in ("start_day", "new_starts_at", "reason"):
        del old[key]
    for q in old["quotes"]:
        for key in ("start_rule", "rate_basis", "tax_exemption"):
            del q[key]
    read = rf.from_json(json.dumps(old))
    assert read.start_day == date(2027, 1, 1) and read.quotes[0].start_rule == "midnight"


def test_no_quotes_fails_and_already_renewed_checks_the_sources() -> None:
    assert rf.quotes_ready(rf.start("r_1", VID, ASK, OLD_END), []).stage is Stage.FAILED
    checking = rf.check(quoted(), AGAIN)
    assert checking.stage is Stage.CHECKING and checking.intent_id == AGAIN
    assert rf.checked(checking, date(2027, 12, 31)).stage is Stage.RENEWED_ELSEWHERE
    assert rf.checked(checking, OLD_END).stage is Stage.NOT_RENEWED
    assert rf.checked(checking, None).stage is Stage.NOT_RENEWED


def test_decline_ends_an_open_flow_only() -> None:
    assert rf.decline(quoted(), AGAIN).stage is Stage.DECLINED
    issued = rf.paid(rf.bound(rf.accept(quoted(), YES, "q1", NOW), "o", "https://p/o", "1.00"),
                     "o", date(2027, 1, 1), date(2027, 12, 31))  # fmt: skip
    assert rf.decline(issued, AGAIN) == issued
