"""Fleet alerts, pure: which state raises which alert, once; the retry schedule; signatures."""

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.protocol import calendar, messages
from agent.protocol.messages import VehicleEvent
from cloud import alerts as al
from cloud.alert_delivery import sign, verify_alert
from cloud.fleet_view import VehicleSummary
from cloud.handler import IntentRow

NOW = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
TODAY = calendar.china_date(NOW)
FLEET = "fabcdefghijklmnop"


def car(
    vid: str = "vcar0000000000001",
    days: int | None = 5,
    *,
    status: str | None = None,
    link: str = "online",
    next_end: date | None = None,
) -> VehicleSummary:
    end = None if days is None else TODAY + timedelta(days=days)
    if status is None:
        status = "unknown" if days is None else "lapsed" if days < 0 else "expiring"
    return VehicleSummary(
        vid=vid, status=status, insurer_code="PICC", coverage_end=end, days_left=days,
        next_coverage_end=next_end, link=link,  # type: ignore[arg-type]
        last_seen=None if link == "unknown" else NOW - timedelta(hours=3), data_age_s=60.0,
    )  # fmt: skip


def event(kind: str, vid: str = "vcar0000000000001", intent: str = "1" * 32) -> al.FleetEvent:
    body = VehicleEvent(vid=vid, seq=7, intent_id=intent, event=kind, at=NOW)  # type: ignore[arg-type]
    return vid, body, intent


def kinds(rows: list[al.AlertRow]) -> list[str]:
    return sorted(a.kind for a in rows)


@pytest.mark.parametrize(
    ("summary", "renewing", "expected"),
    [
        (car(days=8), set(), []),
        (car(days=7), set(), ["expiring_no_renewal"]),
        (car(days=0), set(), ["expiring_no_renewal"]),
        (car(days=-1), set(), []),  # lapsed and online: the car says so itself
        (car(days=7), {"vcar0000000000001"}, []),  # an open renewal flow suppresses
        (car(days=3, status="renewal_pending"), set(), []),
        (car(days=3, next_end=TODAY + timedelta(days=368)), set(), []),  # next term bought
        (car(days=3, status="revoked"), set(), []),
        (car(days=None), set(), []),  # no policy known: nothing to say about its end
        (car(days=7, link="offline"), set(), ["expiring_no_renewal", "offline_and_expiring"]),
        (car(days=8, link="offline"), set(), []),
        (car(days=-4, link="unknown"), set(), ["offline_and_expiring"]),
        (car(days=2, link="offline"), {"vcar0000000000001"}, ["offline_and_expiring"]),
        (car(days=2, link="offline", next_end=TODAY + timedelta(days=367)), set(), []),
    ],
)
def test_state_alerts_and_their_boundaries(
    summary: VehicleSummary, renewing: set[str], expected: list[str]
) -> None:
    assert kinds(al.derive(FLEET, [summary], [], renewing, NOW)) == expected


def test_car_events_raise_their_alerts_and_other_events_none() -> None:
    events = [
        event("lapsed_while_driving", intent="a" * 32),
        event("vin_mismatch", intent="b" * 32),
        event("prompt_shown", intent="c" * 32),
        event("moving", intent="d" * 32),
    ]
    rows = al.derive(FLEET, [car(days=-2, status="lapsed")], events, set(), NOW)
    assert kinds(rows) == ["lapsed_while_driving", "vin_mismatch"]
    detail = json.loads(rows[0].detail)
    assert detail["event_at"] == NOW.isoformat() and detail["status"] == "lapsed"
    assert all(r.fleet_id == FLEET and r.raised_at == NOW for r in rows)


def test_ids_are_deterministic_and_dedup_by_their_key() -> None:
    once = al.derive(FLEET, [car(days=3, link="offline")], [event("vin_mismatch")], set(), NOW)
    later = NOW + timedelta(minutes=7)
    again = al.derive(FLEET, [car(days=3, link="offline")], [event("vin_mismatch")], set(), later)
    assert [a.alert_id for a in once] == [a.alert_id for a in again]
    assert len({a.alert_id for a in once}) == 3
    # The same event sent twice is one alert; another event (trip) is another.
    twice = al.derive(FLEET, [], [event("lapsed_while_driving")] * 2, set(), NOW)
    assert len({a.alert_id for a in twice}) == 1
    other = al.derive(FLEET, [], [event("lapsed_while_driving", intent="e" * 32)], set(), NOW)
    assert other[0].alert_id != twice[0].alert_id
    # A new term (renewed, then expiring again) is a new alert.
    moved = al.derive(FLEET, [car(days=4, link="offline")], [], set(), NOW)
    assert {a.alert_id for a in moved}.isdisjoint(a.alert_id for a in once)
    assert all(len(a.alert_id) == 32 and int(a.alert_id, 16) >= 0 for a in once)


def test_details_carry_no_personal_data() -> None:
    rows = al.derive(FLEET, [car(days=1, link="offline")], [event("vin_mismatch")], set(), NOW)
    for a in rows:
        doc = json.loads(a.detail)
        assert set(doc) <= {"coverage_end", "days_left", "insurer_code", "link", "last_seen",
                            "event_at", "status"}  # fmt: skip
    body = json.loads(al.webhook_body(rows[0]))
    assert body["alert_id"] == rows[0].alert_id and body["detail"] == json.loads(rows[0].detail)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("d15:accept", "d15:accept"),
        ("end:already_renewed", "end:already_renewed"),
        (None, None),
        ("LSGCAR00000000001", "[redacted]"),
        ("vin=LSGCAR00000000001", "[redacted]"),
        ("沪A12345", "[redacted]"),
        ("x" * 65, "[redacted]"),
    ],
)
def test_car_details_are_shown_only_when_plainly_harmless(
    text: str | None, shown: str | None
) -> None:
    assert al.safe_detail(text) == shown


def test_decode_events_keeps_vehicle_events_only() -> None:
    vid = "vcar0000000000001"
    good = messages.encode(event("vin_mismatch")[1])
    rows = [
        IntentRow(vid, "a" * 32, "vehicle.event", good, 7, NOW),
        IntentRow(vid, "b" * 32, "vehicle.event", b"{not json", 8, NOW),
        IntentRow(vid, "c" * 32, "renewal.request", good, 9, NOW),
    ]
    decoded = al.decode_events(rows)
    assert [(v, e.event, i) for v, e, i in decoded] == [(vid, "vin_mismatch", "a" * 32)]


@pytest.mark.parametrize(
    ("attempts", "u", "delay"),
    [(1, 1.0, 1.0), (2, 1.0, 2.0), (4, 0.5, 4.0), (9, 1.0, 256.0), (10, 1.0, 300.0),
     (12, 0.25, 75.0), (1000, 1.0, 300.0), (3, 0.0, 0.0)],
)  # fmt: skip
def test_retry_delay_is_full_jitter_exponential_and_capped(
    attempts: int, u: float, delay: float
) -> None:
    assert al.retry_delay_s(attempts, 1.0, 300.0, u) == pytest.approx(delay)


def test_signatures_verify_only_the_exact_body_and_a_fresh_timestamp() -> None:
    body = b'{"alert_id":"x"}'
    ts = str(int(NOW.timestamp()))
    sig = sign("s3cret", ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_alert("s3cret", ts, sig, body, now=NOW)
    assert not verify_alert("other", ts, sig, body, now=NOW)
    assert not verify_alert("s3cret", ts, sig, body + b" ", now=NOW)
    assert not verify_alert("s3cret", str(int(ts) + 1), sig, body)
    assert not verify_alert("s3cret", ts, sig, body, now=NOW + timedelta(minutes=6))
    assert not verify_alert("s3cret", None, sig, body)
    assert not verify_alert("s3cret", "12a", sig, body)
