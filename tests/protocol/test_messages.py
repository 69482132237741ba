"""Message bodies: strict schemas, exact bytes, stable error codes."""

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from agent.protocol import envelope, keys, messages
from agent.protocol.envelope import MAX_BODY_BYTES, Signer
from agent.protocol.errors import BodyError, ProtocolError
from agent.protocol.messages import (
    ErrorReply,
    PolicyState,
    Quote,
    RenewalUpdate,
    StatusRequest,
)

VID = "vabcdefgh2345678"
CHINA = timezone(timedelta(hours=8))

STATUS = StatusRequest(vid=VID, seq=41)
STATUS_BYTES = b'{"type":"status.request","vid":"vabcdefgh2345678","seq":41}'

POLICY = PolicyState(
    vid=VID,
    seq=1002,
    version=7,
    issued_at=datetime(2025, 6, 30, 8, 0, tzinfo=UTC),
    fresh_until=datetime(2025, 7, 1, 16, 0, tzinfo=CHINA),
    reply_to=41,
    status="expiring",
    insurer_code="PICC",
    insurer_name="中国人民财产保险",
    policy_no_masked="PDZA2024****1234",
    coverage_start=date(2024, 7, 16),
    coverage_end=date(2025, 7, 15),
    source="national_platform",
    verified_at=datetime(2025, 6, 30, 7, 59, 30, tzinfo=UTC),
)
POLICY_BYTES = (
    '{"type":"policy.state","vid":"vabcdefgh2345678","seq":1002,"version":7,'
    '"issued_at":"2025-06-30T08:00:00Z","fresh_until":"2025-07-01T16:00:00+08:00",'
    '"reply_to":41,"status":"expiring","insurer_code":"PICC","insurer_name":"中国人民财产保险",'
    '"policy_no_masked":"PDZA2024****1234","coverage_start":"2024-07-16",'
    '"coverage_end":"2025-07-15","source":"national_platform",'
    '"verified_at":"2025-06-30T07:59:30Z"}'
).encode()

ERROR = ErrorReply(vid=VID, seq=1003, reply_to=42, code="replay", message="seq 42 already seen")
ERROR_BYTES = (
    b'{"type":"error","vid":"vabcdefgh2345678","seq":1003,"reply_to":42,'
    b'"code":"replay","message":"seq 42 already seen"}'
)


_DROP = object()
"""Marks a field to leave out of a crafted body."""


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _status(**changes: Any) -> bytes:
    obj: dict[str, Any] = {"type": "status.request", "vid": VID, "seq": 1}
    obj.update(changes)
    return _json({k: v for k, v in obj.items() if v is not _DROP})


def _policy(**changes: Any) -> bytes:
    obj = json.loads(POLICY_BYTES)
    obj.update(changes)
    return _json({k: v for k, v in obj.items() if v is not _DROP})


# ---- exact bytes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data"),
    [(STATUS, STATUS_BYTES), (POLICY, POLICY_BYTES), (ERROR, ERROR_BYTES)],
    ids=["status.request", "policy.state", "error"],
)
def test_encode_gives_exact_bytes_and_decode_gives_the_model_back(
    model: messages.StatusRequest | PolicyState | ErrorReply, data: bytes
) -> None:
    assert messages.encode(model) == data
    decoded = messages.decode(data)
    assert decoded == model
    assert type(decoded) is type(model)
    assert messages.encode(decoded) == data


def test_optional_fields_are_written_as_null_not_left_out() -> None:
    minimal = PolicyState(
        vid=VID,
        seq=1,
        version=1,
        issued_at=datetime(2025, 1, 1, tzinfo=UTC),
        fresh_until=datetime(2025, 1, 2, tzinfo=UTC),
        status="unknown",
        source="none",
    )
    data = messages.encode(minimal)
    assert b'"reply_to":null' in data
    assert b'"coverage_end":null' in data
    assert messages.decode(data) == minimal
    assert messages.encode(messages.decode(data)) == data


def test_card_fields_added_later_are_left_out_while_unset_and_round_trip_when_set() -> None:
    # States without them keep their earlier bytes (the golden vectors hold).
    assert b"plate_masked" not in POLICY_BYTES and messages.encode(POLICY) == POLICY_BYTES
    card = dataclasses.replace(
        POLICY, plate_masked="沪A·****8", claims_phone="95518", vin_digest="ab" * 32
    )
    data = messages.encode(card)
    assert data.endswith(b'"plate_masked":"\xe6\xb2\xaaA\xc2\xb7****8","claims_phone":"95518",'
                         b'"vin_digest":"' + b"ab" * 32 + b'"}')  # fmt: skip
    assert messages.decode(data) == card
    for field, bad in [
        ("claims_phone", "call us"),
        ("vin_digest", "AB" * 32),
        ("plate_masked", ""),
    ]:
        with pytest.raises(BodyError):
            messages.decode(_policy(**{field: bad}))


def test_non_ascii_text_is_utf8_not_escaped() -> None:
    assert "中国人民财产保险".encode() in messages.encode(POLICY)
    assert b"\\u" not in messages.encode(POLICY)


def test_decode_accepts_equivalent_json_but_only_the_signed_bytes_are_canonical() -> None:
    spaced = b'{ "seq": 41, "vid": "vabcdefgh2345678", "type": "status.request" }'
    assert messages.decode(spaced) == STATUS
    assert messages.encode(messages.decode(spaced)) == STATUS_BYTES != spaced


def test_models_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        STATUS.seq = 42  # type: ignore[misc]


def test_a_changed_copy_is_checked_like_a_new_body() -> None:
    assert dataclasses.replace(STATUS, seq=42) == StatusRequest(vid=VID, seq=42)
    with pytest.raises(BodyError, match="seq"):
        dataclasses.replace(STATUS, seq=0)


def test_bodies_compare_by_value_and_instant() -> None:
    same = dataclasses.replace(POLICY, issued_at=POLICY.issued_at.astimezone(CHINA))
    assert same == POLICY and hash(same) == hash(POLICY)
    assert messages.encode(same) != messages.encode(POLICY)
    assert StatusRequest(vid=VID, seq=41) != ErrorReply(vid=VID, seq=41, code="x", message="")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", True),
        ("seq", 1.0),
        ("seq", "1"),
        ("vid", VID + "\n"),
        ("issued_at", datetime(2025, 6, 30, 8, 0)),
        ("issued_at", "2025-06-30T08:00:00Z"),
        ("issued_at", date(2025, 6, 30)),
        ("coverage_end", datetime(2025, 7, 15, tzinfo=UTC)),
        ("coverage_end", "2025-07-15"),
        ("status", "ACTIVE"),
        ("type", "error"),
        ("insurer_name", "\ud800"),
        ("source", None),
    ],
)
def test_building_a_body_checks_it_as_strictly_as_decoding(field: str, value: object) -> None:
    with pytest.raises(BodyError, match=field) as info:
        dataclasses.replace(POLICY, **{field: value})
    assert info.value.code == "bad_body"


# ---- date-times and dates on the wire -----------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2025-06-30T08:00:00Z", "2025-06-30T08:00:00Z"),
        ("2025-06-30T08:00:00+00:00", "2025-06-30T08:00:00Z"),
        ("2025-06-30T08:00:00-00:00", "2025-06-30T08:00:00Z"),
        ("2025-06-30t08:00:00z", "2025-06-30T08:00:00Z"),
        ("2025-06-30 08:00:00Z", "2025-06-30T08:00:00Z"),
        ("2025-06-30T08:00Z", "2025-06-30T08:00:00Z"),
        ("2025-06-30T08:00:00.5+08:00", "2025-06-30T08:00:00.500000+08:00"),
        ("2025-06-30T08:00:00,25Z", "2025-06-30T08:00:00.250000Z"),
        ("2025-06-30T08:00:00.1234567899Z", "2025-06-30T08:00:00.123456Z"),
        ("2025-06-30T08:00:00.000000Z", "2025-06-30T08:00:00Z"),
        ("2025-06-30T08:00:00+0800", "2025-06-30T08:00:00+08:00"),
        ("2025-06-30T08:00:00-03:30", "2025-06-30T08:00:00-03:30"),
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
        ("2024-02-29T23:59:59+23:59", "2024-02-29T23:59:59+23:59"),
    ],
)
def test_date_times_are_read_in_rfc_3339_forms_and_written_one_way(
    text: str, canonical: str
) -> None:
    body = messages.decode(_policy(issued_at=text))
    assert isinstance(body, PolicyState)
    assert json.loads(messages.encode(body))["issued_at"] == canonical


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-30T08:00:00",
        "2025-06-30",
        "2025-06-30T08Z",
        "2025-06-30T08:00:60Z",
        "2025-06-30T24:00:00Z",
        "2025-02-29T08:00:00Z",
        "0000-01-01T00:00:00Z",
        "20250630T080000Z",
        "2025-06-30T08:00:00+08",
        "2025-06-30T08:00:00+24:00",
        "2025-06-30T08:00:00+08:60",
        "2025-06-30T08:00:00.Z",
        "2025-06-30T08:00:00UTC",
        " 2025-06-30T08:00:00Z",
        "2025-06-30T08:00:00Z\n",
        "２０２５-06-30T08:00:00Z",
        "1751270400",
    ],
)
def test_other_date_time_texts_are_refused(text: str) -> None:
    with pytest.raises(BodyError, match="issued_at"):
        messages.decode(_policy(issued_at=text))


@pytest.mark.parametrize(
    ("offset", "written"),
    [(timedelta(0), "Z"), (timedelta(seconds=30), "+00:00"), (timedelta(seconds=-90), "-00:01")],
)
def test_offsets_are_written_in_whole_minutes(offset: timedelta, written: str) -> None:
    body = dataclasses.replace(POLICY, issued_at=datetime(2025, 1, 1, tzinfo=timezone(offset)))
    assert json.loads(messages.encode(body))["issued_at"] == "2025-01-01T00:00:00" + written


# ---- strictness ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_status(extra=1), id="unknown-field"),
        pytest.param(_status(extra=None), id="unknown-null-field"),
        pytest.param(_status(VID=VID), id="field-name-case"),
        pytest.param(_policy(owner_name="张三"), id="policy-unknown-field"),
        pytest.param(_policy(vin="LSGCAR00000000001"), id="policy-with-vin"),
    ],
)
def test_unknown_fields_are_refused(data: bytes) -> None:
    with pytest.raises(BodyError) as info:
        messages.decode(data)
    assert info.value.code == "bad_body"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_status(seq="1"), id="seq-string"),
        pytest.param(_status(seq=1.0), id="seq-float"),
        pytest.param(b'{"type":"status.request","vid":"vabcdefgh2345678","seq":1e0}', id="seq-exp"),
        pytest.param(_status(seq=True), id="seq-bool"),
        pytest.param(_status(seq=None), id="seq-null"),
        pytest.param(_status(seq=[1]), id="seq-list"),
        pytest.param(_status(seq=0), id="seq-zero"),
        pytest.param(_status(seq=-1), id="seq-negative"),
        pytest.param(_status(seq=2**53 + 1), id="seq-too-big"),
        pytest.param(_status(seq=_DROP), id="seq-missing"),
        pytest.param(_status(vid=_DROP), id="vid-missing"),
        pytest.param(_status(vid=12345678), id="vid-number"),
        pytest.param(_status(vid=VID.upper()), id="vid-uppercase"),
        pytest.param(_status(vid="LSGCAR00000000001"), id="vid-is-a-vin"),
        pytest.param(_status(vid="ctpl-cloud"), id="vid-is-cloud"),
        pytest.param(_status(type=_DROP), id="type-missing"),
        pytest.param(_policy(version="7"), id="version-string"),
        pytest.param(_policy(version=0), id="version-zero"),
        pytest.param(_policy(issued_at=1751270400), id="issued-at-number"),
        pytest.param(_policy(issued_at="2025-06-30T08:00:00"), id="issued-at-naive"),
        pytest.param(_policy(issued_at="30/06/2025"), id="issued-at-garbage"),
        pytest.param(_policy(fresh_until=_DROP), id="fresh-until-missing"),
        pytest.param(_policy(status="expired"), id="status-unknown"),
        pytest.param(_policy(status="ACTIVE"), id="status-uppercase"),
        pytest.param(_policy(coverage_end="2025-02-30"), id="date-impossible"),
        pytest.param(_policy(coverage_end="2025-7-15"), id="date-unpadded"),
        pytest.param(_policy(coverage_end=20250715), id="date-number"),
        pytest.param(_policy(policy_no_masked="pdza2024****1234"), id="policy-no-lowercase"),
        pytest.param(_policy(policy_no_masked="PDZA"[:3]), id="policy-no-too-short"),
        pytest.param(_policy(insurer_code=""), id="insurer-code-empty"),
        pytest.param(_policy(insurer_name="x" * 65), id="insurer-name-too-long"),
        pytest.param(_policy(source=None), id="source-null"),
        pytest.param(_policy(reply_to="41"), id="reply-to-string"),
    ],
)
def test_wrong_json_types_and_values_are_refused(data: bytes) -> None:
    with pytest.raises(BodyError) as info:
        messages.decode(data)
    assert info.value.code == "bad_body"


@pytest.mark.parametrize(
    "type_",
    ["renewal.updates", "vehicle.events", "intent.receipts", "online", "STATUS.REQUEST", "", 5],
)
def test_unknown_type_is_unsupported_type(type_: object) -> None:
    with pytest.raises(BodyError) as info:
        messages.decode(_status(type=type_))
    assert info.value.code == "unsupported_type"


@pytest.mark.parametrize(
    "data",
    [b"", b"nope", b"\xff\xfe", b"[]", b"1", b'"status.request"', b"null", b'{"type":'],
    ids=["empty", "text", "not-utf8", "array", "number", "string", "null", "truncated"],
)
def test_bytes_that_are_not_a_json_object_are_refused(data: bytes) -> None:
    with pytest.raises(BodyError) as info:
        messages.decode(data)
    assert info.value.code == "bad_body"


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + STATUS_BYTES,
        ERROR_BYTES.replace(b"seq 42", b"\\ud800"),
        ERROR_BYTES.replace(b"seq 42", b"\\udc00\\ud800"),
        _status(extra=[]).replace(b"[]", b"[" * 2000 + b"]" * 2000),
        STATUS_BYTES + b" x",
        STATUS_BYTES[:-1] + b",}",
    ],
    ids=["utf8-bom", "lone-surrogate", "reversed-surrogates", "deep-nesting", "trailing", "comma"],
)
def test_text_that_is_not_strict_json_is_refused(data: bytes) -> None:
    with pytest.raises(BodyError) as info:
        messages.decode(data)
    assert info.value.code == "bad_body"


def test_escapes_are_read() -> None:
    pair = messages.decode(ERROR_BYTES.replace(b"seq 42", b"\\ud83d\\ude00"))
    assert isinstance(pair, ErrorReply) and pair.message == "\U0001f600 already seen"


@pytest.mark.parametrize(
    "data",
    [
        STATUS_BYTES[:-1] + b',"seq":7}',
        STATUS_BYTES[:-1] + b',"s\\u0065q":7}',
        POLICY_BYTES[:-1] + b',"status":"active"}',
        b'{"type":"status.request","type":"status.request","vid":"vabcdefgh2345678","seq":1}',
    ],
    ids=["seq-twice", "seq-escaped", "policy-status-twice", "type-twice"],
)
def test_a_key_repeated_in_a_body_is_refused_with_bad_body(data: bytes) -> None:
    # json.loads lets the last one win: a signer and a reader could disagree on the value.
    with pytest.raises(BodyError, match="repeated") as info:
        messages.decode(data)
    assert info.value.code == "bad_body"


def test_a_key_repeated_inside_a_nested_record_is_refused() -> None:
    update = RenewalUpdate(
        vid=VID,
        seq=5,
        issued_at=datetime(2025, 6, 30, 8, 0, tzinfo=UTC),
        renewal_id="r1",
        stage="quotes",
        quotes=(
            Quote(
                quote_id="q1",
                insurer_code="PICC",
                insurer_name="PICC",
                start=date(2025, 7, 16),
                end=date(2026, 7, 15),
                ctpl="950.00",
                floating_rate="0.00",
                vehicle_vessel_tax="360.00",
                total="1310.00",
                expires_at=datetime(2025, 7, 1, tzinfo=UTC),
            ),
        ),
    )
    data = messages.encode(update)
    assert messages.decode(data) == update
    twice = data.replace(b'"total":"1310.00"', b'"total":"1.00","total":"1310.00"')
    with pytest.raises(BodyError, match="repeated") as info:
        messages.decode(twice)
    assert info.value.code == "bad_body"


@pytest.mark.parametrize("depth", [9, 50, 2000])
def test_a_deep_body_after_a_valid_signature_is_bad_body_never_recursion_error(
    depth: int,
) -> None:
    key = keys.generate_private_key()
    topic = f"ctpl/v1/{VID}/up/status"
    body = _status(extra=[]).replace(b"[]", b"[" * depth + b"]" * depth)
    assert len(body) <= MAX_BODY_BYTES
    opened = envelope.open_with(
        topic, Signer(key).seal(topic, body), {Signer(key).kid: key.public_key()}
    )
    assert opened == body  # the signature is good: the body itself is what is refused
    with pytest.raises(BodyError, match="nested deeper than 8") as info:
        messages.decode(opened)
    assert info.value.code == "bad_body"


def test_oversize_body_is_refused_before_parsing() -> None:
    padded = STATUS_BYTES[:-1] + b" " * (MAX_BODY_BYTES - len(STATUS_BYTES)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    assert messages.decode(padded) == STATUS
    with pytest.raises(BodyError, match="exceeds"):
        messages.decode(padded[:-1] + b" }")


def test_oversize_body_is_refused_on_encode() -> None:
    # No valid body is this large: build one past the checks.
    huge = object.__new__(ErrorReply)
    fields = {"type": "error", "vid": VID, "seq": 1, "reply_to": None, "code": "internal"}
    for name, value in (fields | {"message": "x" * MAX_BODY_BYTES}).items():
        object.__setattr__(huge, name, value)
    with pytest.raises(BodyError, match="exceeds"):
        messages.encode(huge)


def test_error_reply_message_is_bounded_by_schema() -> None:
    with pytest.raises(BodyError, match="message"):
        ErrorReply(vid=VID, seq=1, code="internal", message="x" * 257)


def test_error_messages_do_not_echo_the_input() -> None:
    secret = "LSGCAR00000000001"
    with pytest.raises(BodyError) as info:
        messages.decode(_status(vid=secret))
    assert secret not in str(info.value)


# ---- error codes -----------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["bad_topic", "bad_envelope", "bad_signature", "unknown_key", "bad_body", "unsupported_type"],
)
def test_every_code_the_contract_raises_is_a_wire_error_code(code: str) -> None:
    assert code in messages.ERROR_CODES


def test_body_error_is_a_protocol_error_with_code() -> None:
    err = BodyError("x", code="unsupported_type")
    assert isinstance(err, ProtocolError)
    assert err.code == "unsupported_type"
    assert BodyError("x").code == "bad_body"


def test_an_unchecked_body_is_the_same_body_when_its_values_are_valid() -> None:
    values = {f: getattr(POLICY, f) for f in POLICY.__dataclass_fields__}
    fast = PolicyState.unchecked(**values)
    assert fast == POLICY and messages.encode(fast) == POLICY_BYTES
    assert PolicyState.unchecked(**{k: v for k, v in values.items() if k != "type"}) == POLICY
    with pytest.raises(TypeError):
        PolicyState.unchecked(vid=VID)  # seq, version, … have no default
