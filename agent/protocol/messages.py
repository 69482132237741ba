"""Message bodies of wire contract v1: strict frozen records (agent/protocol/strict.py).

Every body carries ``type``, ``vid`` and ``seq`` (a per-sender counter that only
grows). Cloud bodies add ``version`` (per vehicle, only grows), ``issued_at`` and
``fresh_until``. Unknown fields and wrong JSON types are refused; bodies are at
most ``MAX_BODY_BYTES``; date-times must carry an offset. Building a body with a value
that breaks its schema raises BodyError; ``dataclasses.replace`` gives a changed copy,
checked the same way.
"""

from dataclasses import MISSING, Field, dataclass, fields
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from . import strict, topics
from .envelope import MAX_BODY_BYTES
from .errors import BodyError
from .strict import Length, Pattern, Range

Vid = Annotated[str, Pattern(topics.VID_RE.pattern)]
Seq = Annotated[int, Range(ge=1, le=2**53)]
ShortText = Annotated[str, Length(min=1, max=64)]
PolicyStatus = Literal["active", "expiring", "lapsed", "unknown", "renewal_pending", "pending"]
"""``pending`` (待生效): the only term starts in the future; uncovered until ``starts_at``."""
IntentId = Annotated[str, Pattern(r"[0-9a-f]{32}")]
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
    "pending_while_driving",
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


_FIELDS: dict[type, tuple[Field[Any], ...]] = {}


def _fields_of(cls: type) -> tuple[Field[Any], ...]:
    found = _FIELDS[cls] = fields(cls)
    return found


@dataclass(frozen=True, kw_only=True, slots=True)
class _Body(strict.Record):
    type: str
    vid: Vid
    seq: Seq

    def __post_init__(self) -> None:
        try:
            strict.check(self)
        except strict.Invalid as exc:
            raise BodyError(f"{self.__class__.__name__}.{exc}") from None

    @classmethod
    def unchecked(cls, **values: Any) -> Self:
        """A body built without the field checks, for a sender's hot path whose values are
        its own, already valid (the cloud's records and clock). The receiver checks every
        body strictly anyway; ``encode`` still bounds the size. Missing fields get their
        defaults; a field with no default must be given (else TypeError)."""
        body = object.__new__(cls)
        for f in _FIELDS.get(cls) or _fields_of(cls):
            if f.name in values:
                object.__setattr__(body, f.name, values[f.name])
            elif f.default is not MISSING:
                object.__setattr__(body, f.name, f.default)
            else:
                raise TypeError(f"{cls.__name__}: {f.name} is required")
        return body


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusRequest(_Body):
    """car → cloud: send me my current policy state."""

    type: Literal["status.request"] = "status.request"


@dataclass(frozen=True, kw_only=True, slots=True)
class PolicyState(_Body):
    """cloud → car: the current signed policy state (retained)."""

    type: Literal["policy.state"] = "policy.state"
    version: Annotated[int, Range(ge=1, le=2**53)]
    issued_at: datetime
    fresh_until: datetime
    reply_to: Seq | None = None
    status: PolicyStatus
    insurer_code: ShortText | None = None
    insurer_name: ShortText | None = None
    policy_no_masked: Annotated[str, Pattern(r"[A-Z0-9*]{4,32}")] | None = None
    coverage_start: date | None = None
    coverage_end: date | None = None
    source: ShortText
    verified_at: datetime | None = None
    plate_masked: Annotated[str, Length(min=2, max=16)] | None = None
    """The plate as the e-policy card shows it, already masked by the cloud (沪A·****8)."""
    claims_phone: Annotated[str, Pattern(r"[0-9+\-]{3,20}")] | None = None
    """The insurer's claims hotline."""
    vin_digest: Annotated[str, Pattern(r"[0-9a-f]{64}")] | None = None
    """``agent.vehicle.vin_digest(vid, VIN)`` of the insured vehicle: the car checks the
    VIN it reads against it without the VIN crossing the broker."""

    next_coverage_end: date | None = None
    """The end of the next term, once one is bought (it starts the day after
    ``coverage_end``): the car is covered without a gap until then."""
    starts_at: datetime | None = None
    """The exact instant cover begins: present while ``pending`` and whenever cover starts
    other than at 00:00 China time of ``coverage_start`` (bought to start on payment)."""
    insurer_address: Annotated[str, Length(min=1, max=64)] | None = None
    """The insurer's registered address, for the e-policy card (regulation Art. 12)."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {
            "plate_masked",
            "claims_phone",
            "vin_digest",
            "next_coverage_end",
            "starts_at",
            "insurer_address",
        }
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorReply(_Body):
    """cloud → car: a request was rejected; ``code`` is stable, ``message`` for humans."""

    type: Literal["error"] = "error"
    reply_to: Seq | None = None
    code: ShortText
    message: Annotated[str, Length(max=256)]


@dataclass(frozen=True, kw_only=True, slots=True)
class RenewalRequest(_Body):
    """car → cloud (an intent): quote, accept (naming a quote), decline, already renewed."""

    type: Literal["renewal.request"] = "renewal.request"
    intent_id: IntentId
    action: RenewalAction
    quote_id: Annotated[str, Pattern(r"[A-Za-z0-9_-]{1,64}")] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class VehicleEvent(_Body):
    """car → cloud (an intent): something the fleet should know happened in the car.

    ``at`` is the car's trusted time when it happened, None when it had none.
    """

    type: Literal["vehicle.event"] = "vehicle.event"
    intent_id: IntentId
    event: VehicleEventKind
    at: datetime | None = None
    detail: Annotated[str, Length(max=128)] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class IntentReceipt(_Body):
    """cloud → car: the intent ``intent_id`` is durably recorded (once, however often sent).

    A PUBACK only says the broker took a message; this says the cloud acted on it.
    """

    type: Literal["intent.receipt"] = "intent.receipt"
    reply_to: Seq
    intent_id: IntentId
    issued_at: datetime


Money = Annotated[str, Pattern(r"-?[0-9]{1,7}\.[0-9]{2}")]
"""An amount in CNY as a decimal string with two places (never a float)."""
RenewalStage = Literal[
    "quoting",
    "quotes",
    "binding",
    "awaiting_payment",
    "issued",
    "checking",
    "renewed_elsewhere",
    "not_renewed",
    "declined",
    "failed",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Quote(strict.Record):
    """One insurer's offer for the next term, as the driver compares them."""

    quote_id: Annotated[str, Pattern(r"[A-Za-z0-9_-]{1,64}")]
    insurer_code: ShortText
    insurer_name: ShortText
    start: date
    end: date
    ctpl: Money
    """The CTPL premium: base × (1 + floating rate)."""
    floating_rate: Annotated[str, Pattern(r"-?[0-9]\.[0-9]{2}")]
    vehicle_vessel_tax: Money
    total: Money
    expires_at: datetime
    start_rule: Literal["midnight", "on_payment"] | None = None
    """When cover begins: 00:00 China time of ``start`` (None or ``midnight``), or on
    payment (``on_payment``: the insurer starts cover when the order is paid)."""
    rate_basis: Annotated[str, Pattern(r"A[1-6]|new")] | None = None
    """The row of the region's floating-rate scheme applied (``new``: first insurance)."""
    tax_exemption: Literal["new_energy"] | None = None
    """Why ``vehicle_vessel_tax`` is 0 (a new-energy vehicle is exempt)."""
    claims_phone: Annotated[str, Pattern(r"[0-9+\-]{3,20}")] | None = None
    """The insurer's claims hotline: the price is the same everywhere, service is not."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"start_rule", "rate_basis", "tax_exemption", "claims_phone"}
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class RenewalUpdate(_Body):
    """cloud → car: where a renewal stands (quotes, a payment link, the result).

    ``renewal_id`` names the flow; ``intent_id`` the car's request it answers, if any.
    The payment link is for the driver's phone (a QR code): the head unit never handles
    payment credentials.
    """

    type: Literal["renewal.update"] = "renewal.update"
    issued_at: datetime
    renewal_id: Annotated[str, Pattern(r"[A-Za-z0-9_-]{1,64}")]
    intent_id: IntentId | None = None
    stage: RenewalStage
    quotes: Annotated[tuple[Quote, ...], Length(max=5)] = ()
    payment_url: Annotated[str, Pattern(r"https?://[\x21-\x7e]{1,300}")] | None = None
    amount: Money | None = None
    new_end: date | None = None
    message: Annotated[str, Length(max=256)] | None = None
    new_starts_at: datetime | None = None
    """The instant the new term begins, once issued (until then the car may be uncovered)."""
    reason: Annotated[str, Pattern(r"[a-z_]{1,48}")] | None = None
    """A stable code for a ``failed`` or ``not_renewed`` stage (the head unit words it)."""
    retry_after_s: Annotated[int, Range(ge=1, le=86400)] | None = None
    """With ``reason`` ``rate_limited``: after how many seconds a new request is taken."""

    omit_when_none: ClassVar[frozenset[str]] = frozenset(
        {"new_starts_at", "reason", "retry_after_s"}
    )


Intent = RenewalRequest | VehicleEvent
AnyBody = (
    StatusRequest
    | PolicyState
    | ErrorReply
    | RenewalRequest
    | VehicleEvent
    | IntentReceipt
    | RenewalUpdate
)
_BY_TYPE: Final[dict[str, type[AnyBody]]] = {
    str(cls.__dataclass_fields__["type"].default): cls
    for cls in (
        StatusRequest,
        PolicyState,
        ErrorReply,
        RenewalRequest,
        VehicleEvent,
        IntentReceipt,
        RenewalUpdate,
    )
}


def encode(body: _Body) -> bytes:
    """The exact JSON bytes of ``body`` (fields in declaration order, no spaces)."""
    data = strict.dumps(body)
    if len(data) > MAX_BODY_BYTES:
        raise BodyError(f"body of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    return data


def decode(data: bytes) -> AnyBody:
    """Parse verified body bytes; raise BodyError (code ``unsupported_type`` for unknown types)."""
    if len(data) > MAX_BODY_BYTES:
        raise BodyError(f"body of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        obj = strict.loads(data)
    except strict.Invalid as exc:
        raise BodyError(f"body: {exc}") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise BodyError("body: should be an object with a type")
    tag = obj["type"]
    if tag == "status.request" and len(obj) == 3:
        # The hottest body, checked by hand to the same rules as StatusRequest's fields
        # (anything unusual takes the general path below, for its exact error).
        vid, seq = obj.get("vid"), obj.get("seq")
        if (
            type(seq) is int
            and 1 <= seq <= 2**53
            and type(vid) is str
            and topics.VID_RE.fullmatch(vid) is not None
        ):
            return StatusRequest.unchecked(vid=vid, seq=seq)
    cls = _BY_TYPE.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise BodyError("type: not a body type of contract v1", code="unsupported_type")
    try:
        return strict.build(cls, obj)
    except strict.Invalid as exc:
        raise BodyError(f"{cls.__name__}.{exc}") from None
