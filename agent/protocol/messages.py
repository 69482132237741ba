"""Message bodies of wire contract v1: strict pydantic models.

Every body carries ``type``, ``vid`` and ``seq`` (a per-sender counter that only
grows). Cloud bodies add ``version`` (per vehicle, only grows), ``issued_at`` and
``fresh_until``. Unknown fields and wrong JSON types are refused; bodies are at
most ``MAX_BODY_BYTES``.
"""

from datetime import date
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .envelope import MAX_BODY_BYTES
from .errors import BodyError

Vid = Annotated[str, Field(pattern=r"^v[0-9a-z]{7,39}$")]
Seq = Annotated[int, Field(ge=1, le=2**53)]
ShortText = Annotated[str, Field(min_length=1, max_length=64)]
PolicyStatus = Literal["active", "expiring", "lapsed", "unknown", "renewal_pending"]
IntentId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
"""An intent's idempotency key: 128 random bits in lowercase hex, chosen by the car."""
RenewalAction = Literal["quote", "accept", "decline", "already_renewed"]
VehicleEventKind = Literal[
    "ignition_on",
    "ignition_off",
    "moving",
    "parked",
    "prompt_shown",
    "prompt_answered",
    "lapsed_while_driving",
    "vin_mismatch",
]
ERROR_CODES: Final = frozenset(
    {
        "bad_topic",
        "bad_envelope",
        "bad_signature",
        "unknown_key",
        "unknown_vehicle",
        "vid_mismatch",
        "replay",
        "bad_body",
        "unsupported_type",
        "no_policy",
        "internal",
    }
)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: str
    vid: Vid
    seq: Seq


class StatusRequest(_Body):
    """car → cloud: send me my current policy state."""

    type: Literal["status.request"] = "status.request"


class PolicyState(_Body):
    """cloud → car: the current signed policy state (retained)."""

    type: Literal["policy.state"] = "policy.state"
    version: Annotated[int, Field(ge=1, le=2**53)]
    issued_at: AwareDatetime
    fresh_until: AwareDatetime
    reply_to: Seq | None = None
    status: PolicyStatus
    insurer_code: ShortText | None = None
    insurer_name: ShortText | None = None
    policy_no_masked: Annotated[str, Field(pattern=r"^[A-Z0-9*]{4,32}$")] | None = None
    coverage_start: date | None = None
    coverage_end: date | None = None
    source: ShortText
    verified_at: AwareDatetime | None = None


class ErrorReply(_Body):
    """cloud → car: a request was rejected; ``code`` is stable, ``message`` for humans."""

    type: Literal["error"] = "error"
    reply_to: Seq | None = None
    code: ShortText
    message: Annotated[str, Field(max_length=256)]


class RenewalRequest(_Body):
    """car → cloud (an intent): quote, accept (naming a quote), decline, already renewed."""

    type: Literal["renewal.request"] = "renewal.request"
    intent_id: IntentId
    action: RenewalAction
    quote_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None


class VehicleEvent(_Body):
    """car → cloud (an intent): something the fleet should know happened in the car.

    ``at`` is the car's trusted time when it happened, None when it had none.
    """

    type: Literal["vehicle.event"] = "vehicle.event"
    intent_id: IntentId
    event: VehicleEventKind
    at: AwareDatetime | None = None
    detail: Annotated[str, Field(max_length=128)] | None = None


class IntentReceipt(_Body):
    """cloud → car: the intent ``intent_id`` is durably recorded (once, however often sent).

    A PUBACK only says the broker took a message; this says the cloud acted on it.
    """

    type: Literal["intent.receipt"] = "intent.receipt"
    reply_to: Seq
    intent_id: IntentId
    issued_at: AwareDatetime


Intent = RenewalRequest | VehicleEvent
AnyBody = StatusRequest | PolicyState | ErrorReply | RenewalRequest | VehicleEvent | IntentReceipt
Body = Annotated[AnyBody, Field(discriminator="type")]
_BODY: Final[TypeAdapter[AnyBody]] = TypeAdapter(Body)


def encode(body: _Body) -> bytes:
    """The exact JSON bytes of ``body`` (fields in declaration order, no spaces)."""
    data = body.__pydantic_serializer__.to_json(body)
    if len(data) > MAX_BODY_BYTES:
        raise BodyError(f"body of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    return data


def _first_error(exc: ValidationError) -> dict[str, Any]:
    return dict(exc.errors(include_url=False, include_input=False)[0])


def decode(data: bytes) -> AnyBody:
    """Parse verified body bytes; raise BodyError (code ``unsupported_type`` for unknown types)."""
    if len(data) > MAX_BODY_BYTES:
        raise BodyError(f"body of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        return _BODY.validate_json(data)
    except ValidationError as exc:
        err = _first_error(exc)
        where = ".".join(str(p) for p in err.get("loc", ()))
        code = "unsupported_type" if err.get("type") == "union_tag_invalid" else "bad_body"
        raise BodyError(f"{where or 'body'}: {err.get('msg', 'invalid')}", code=code) from None
