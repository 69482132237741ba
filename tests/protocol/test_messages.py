"""Message bodies: strict schemas, exact bytes, stable error codes."""

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from agent.protocol import messages
from agent.protocol.envelope import MAX_BODY_BYTES
from agent.protocol.errors import BodyError, ProtocolError
from agent.protocol.messages import ErrorReply, PolicyState, StatusRequest

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


def test_non_ascii_text_is_utf8_not_escaped() -> None:
    assert "中国人民财产保险".encode() in messages.encode(POLICY)
    assert b"\\u" not in messages.encode(POLICY)


def test_decode_accepts_equivalent_json_but_only_the_signed_bytes_are_canonical() -> None:
    spaced = b'{ "seq": 41, "vid": "vabcdefgh2345678", "type": "status.request" }'
    assert messages.decode(spaced) == STATUS
    assert messages.encode(messages.decode(spaced)) == STATUS_BYTES != spaced


def test_models_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        STATUS.seq = 42  # type: ignore[misc]


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
    ["renewal.update", "vehicle.events", "intent.receipts", "online", "STATUS.REQUEST", "", 5],
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


def test_oversize_body_is_refused_before_parsing() -> None:
    padded = STATUS_BYTES[:-1] + b" " * (MAX_BODY_BYTES - len(STATUS_BYTES)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    assert messages.decode(padded) == STATUS
    with pytest.raises(BodyError, match="exceeds"):
        messages.decode(padded[:-1] + b" }")


def test_oversize_body_is_refused_on_encode() -> None:
    huge = ErrorReply.model_construct(vid=VID, seq=1, code="internal", message="x" * MAX_BODY_BYTES)
    with pytest.raises(BodyError, match="exceeds"):
        messages.encode(huge)


def test_error_reply_message_is_bounded_by_schema() -> None:
    with pytest.raises(pydantic.ValidationError):
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
