"""The request handler's checks, as tables: no broker, no clock, no disk."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from agent.protocol import calendar, envelope, messages, topics
from agent.protocol.keys import generate_private_key, kid_for
from cloud.handler import RequestHandler, VehicleState
from cloud.policy import PolicyRecord, status_of

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
VID = "vaaaaaaaaaaaaaaa1"
OTHER = "vbbbbbbbbbbbbbbb2"
CAR_KEY = generate_private_key()
CAR = envelope.Signer(CAR_KEY)
STRANGER = envelope.Signer(generate_private_key())


def policy(vid: str = VID, end: date = date(2027, 6, 30), **kw: object) -> PolicyRecord:
    fields: dict[str, object] = {
        "vid": vid,
        "insurer_code": "PICC",
        "insurer_name": "中国人保财险",
        "policy_no_masked": "PDZA****1234",
        "coverage_start": end.replace(year=end.year - 1) + timedelta(days=1),
        "coverage_end": end,
        "source": "national",
        "verified_at": NOW - timedelta(hours=1),
    }
    fields.update(kw)
    return PolicyRecord(**fields)  # type: ignore[arg-type]


def make_handler(**policies: PolicyRecord) -> RequestHandler:
    vehicles = {
        VID: VehicleState(kid=CAR.kid, key=CAR_KEY.public_key()),
        OTHER: VehicleState(kid=kid_for(STRANGER_KEY.public_key()), key=STRANGER_KEY.public_key()),
    }
    return RequestHandler(vehicles=vehicles, policies={VID: policy(), **policies})


STRANGER_KEY = generate_private_key()


def request(
    seq: int, vid: str = VID, topic_vid: str = VID, signer: envelope.Signer = CAR
) -> tuple[str, bytes]:
    topic = topics.up(topic_vid, "status")
    return topic, signer.seal(topic, messages.encode(messages.StatusRequest(vid=vid, seq=seq)))


def test_a_signed_request_gets_a_policy_state_replying_to_its_seq() -> None:
    h = make_handler()
    reply = h.handle(*request(7), NOW)
    assert reply is not None and reply.retain and reply.topic == topics.down(VID, "policy")
    body = reply.body
    assert isinstance(body, messages.PolicyState)
    assert (body.vid, body.reply_to, body.version, body.seq) == (VID, 7, 1, 1)
    assert body.status == "active" and body.insurer_code == "PICC"
    assert body.issued_at == NOW and body.fresh_until == NOW + timedelta(days=1)
    assert h.vehicles[VID].last_seq == 7 and h.dirty == {VID}


def tamper(data: bytes) -> bytes:
    env = envelope.parse(data)
    body = env.body.replace(b'"seq":5', b'"seq":6')
    import base64

    b64 = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    old = base64.urlsafe_b64encode(env.body).rstrip(b"=").decode()
    return data.replace(old.encode(), b64.encode())


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("tampered body", lambda: (request(5)[0], tamper(request(5)[1])), "bad_signature"),
        ("wrong key", lambda: request(5, signer=STRANGER), "unknown_key"),
        ("body vid differs from topic vid", lambda: request(5, vid=OTHER), "vid_mismatch"),
        ("not an envelope", lambda: (topics.up(VID, "status"), b"hello"), "bad_envelope"),
        ("oversize", lambda: (topics.up(VID, "status"), b"{" * 9000), "bad_envelope"),
        (
            "request on the renewal topic",
            lambda: (
                topics.up(VID, "renewal"),
                CAR.seal(
                    topics.up(VID, "renewal"),
                    messages.encode(messages.StatusRequest(vid=VID, seq=5)),
                ),
            ),
            "unsupported_type",
        ),
        (
            "body that fails the schema",
            lambda: (
                topics.up(VID, "status"),
                CAR.seal(topics.up(VID, "status"), b'{"type":"status.request","vid":"x","seq":5}'),
            ),
            "bad_body",
        ),
    ],
)
def test_a_bad_request_gets_an_error_and_changes_nothing_but_the_down_seq(
    name: str, make: object, code: str
) -> None:
    h = make_handler()
    h.handle(*request(4), NOW)
    before = (h.vehicles[VID].last_seq, h.vehicles[VID].version)
    topic, payload = make()  # type: ignore[operator]
    reply = h.handle(topic, payload, NOW)
    assert reply is not None and isinstance(reply.body, messages.ErrorReply), name
    assert reply.body.code == code and reply.topic == topics.down(VID, "error") and not reply.retain
    assert (h.vehicles[VID].last_seq, h.vehicles[VID].version) == before
    assert h.counters[f"rejected.{code}"] == 1


def test_a_replayed_or_older_seq_is_refused() -> None:
    h = make_handler()
    first = request(10)
    assert isinstance(h.handle(*first, NOW).body, messages.PolicyState)  # type: ignore[union-attr]
    for again in (first, request(9), request(10)):
        reply = h.handle(*again, NOW)
        assert reply is not None and isinstance(reply.body, messages.ErrorReply)
        assert reply.body.code == "replay" and reply.body.reply_to in (9, 10)
    assert h.vehicles[VID].last_seq == 10


def test_a_payload_signed_for_one_topic_is_refused_on_another() -> None:
    h = make_handler()
    _, payload = request(3)
    reply = h.handle(topics.up(VID, "event"), payload, NOW)
    assert reply is not None and reply.body.code == "bad_signature"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "topic",
    ["ctpl/v1/+/up/status", "ctpl/v1/VBAD/up/status", "other/x", "ctpl/v1/vzzzzzzzzzzz/up/status"],
)
def test_a_bad_topic_or_unknown_vehicle_gets_no_reply(topic: str) -> None:
    h = make_handler()
    assert h.handle(topic, b"{}", NOW) is None
    assert sum(h.counters.values()) == 1


def test_version_grows_only_when_the_content_changes_and_seq_always() -> None:
    h = make_handler()
    states = [h.handle(*request(s), NOW).body for s in (1, 2)]  # type: ignore[union-attr]
    h.policies[VID] = policy(end=date(2028, 6, 30))
    states.append(h.handle(*request(3), NOW).body)  # type: ignore[union-attr]
    assert [(b.version, b.seq) for b in states] == [(1, 1), (1, 2), (2, 3)]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("now", "end", "status"),
    [
        # Coverage ends 24:00 China time = 16:00 UTC on the end date.
        (datetime(2026, 11, 25, 15, 59, 59, tzinfo=UTC), date(2026, 11, 25), "expiring"),
        (datetime(2026, 11, 25, 16, 0, 0, tzinfo=UTC), date(2026, 11, 25), "lapsed"),
        (datetime(2026, 11, 25, 6, 0, tzinfo=UTC), date(2026, 12, 25), "expiring"),
        (datetime(2026, 11, 25, 6, 0, tzinfo=UTC), date(2026, 12, 26), "active"),
    ],
)
def test_status_follows_the_china_calendar(now: datetime, end: date, status: str) -> None:
    h = make_handler(**{VID: policy(end=end)})
    reply = h.handle(*request(1), now)
    assert reply is not None and reply.body.status == status  # type: ignore[union-attr]


def test_a_vehicle_without_a_policy_is_told_unknown_not_lapsed() -> None:
    h = make_handler()
    del h.policies[VID]
    reply = h.handle(*request(1), NOW)
    assert reply is not None and reply.body.status == "unknown"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("now", "start", "starts_at", "status"),
    [
        # A term starting on 26 Nov: 00:00 China time = 16:00 UTC on the 25th.
        (datetime(2026, 11, 25, 15, 59, 59, tzinfo=UTC), date(2026, 11, 26), None, "pending"),
        (datetime(2026, 11, 25, 16, 0, 0, tzinfo=UTC), date(2026, 11, 26), None, "active"),
        # At 00:30 China time the UTC date is the 25th: still the 26th in China, covered.
        (datetime(2026, 11, 25, 16, 30, tzinfo=UTC), date(2026, 11, 26), None, "active"),
        # Bought after a lapse from an insurer that starts cover on payment (18:32 China).
        (datetime(2026, 11, 25, 10, 31, tzinfo=UTC), date(2026, 11, 25),
         datetime(2026, 11, 25, 10, 32, tzinfo=UTC), "pending"),
        (datetime(2026, 11, 25, 10, 32, tzinfo=UTC), date(2026, 11, 25),
         datetime(2026, 11, 25, 10, 32, tzinfo=UTC), "active"),
    ],
)  # fmt: skip
def test_a_term_yet_to_begin_is_pending_until_its_start_instant(
    now: datetime, start: date, starts_at: datetime | None, status: str
) -> None:
    record = policy(end=date(2027, 11, 25), coverage_start=start, starts_at=starts_at)
    reply = make_handler(**{VID: record}).handle(*request(1), now)
    assert reply is not None and isinstance(reply.body, messages.PolicyState)
    assert reply.body.status == status
    begins = starts_at or datetime(start.year, start.month, start.day, tzinfo=calendar.CHINA_TZ)
    # The exact start instant travels while pending, and whenever it is not 00:00.
    told = reply.body.starts_at
    assert told == (begins if status == "pending" or starts_at is not None else None)


def test_the_content_is_told_afresh_at_a_start_instant_within_the_day() -> None:
    """The content cache lasts until 00:00 China time or a term's start, whichever is
    first: a car asking a minute after an on-payment start hears ``active``."""
    at = datetime(2026, 11, 25, 10, 32, tzinfo=UTC)
    h = make_handler(**{VID: policy(end=date(2027, 11, 24), coverage_start=date(2026, 11, 25),
                                    starts_at=at)})  # fmt: skip
    before = h.handle(*request(1), at - timedelta(minutes=1))
    after = h.handle(*request(2), at + timedelta(minutes=1))
    assert before is not None and after is not None
    assert [before.body.status, after.body.status] == ["pending", "active"]  # type: ignore[union-attr]
    assert after.body.version == before.body.version + 1  # type: ignore[union-attr]


def test_a_lapsed_term_stays_lapsed_and_a_renewal_pending_term_is_covered() -> None:
    lapsed = policy(end=date(2026, 11, 20))
    renewed = replace(policy(end=date(2026, 12, 20)), next_end=date(2027, 12, 20))
    assert status_of(lapsed, NOW, 30) == "lapsed"
    assert status_of(renewed, NOW, 30) == "renewal_pending"
    # Once the old term ends the next one is simply in force.
    assert status_of(renewed, datetime(2026, 12, 20, 16, 0, tzinfo=UTC), 30) == "active"
