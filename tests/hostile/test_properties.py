"""Property tests of the contract's parsers: for arbitrary bytes and for mutations of valid
envelopes and bodies (bytes flipped, keys inserted or repeated, types changed, values
nested), ``envelope.parse``/``open_with`` and ``messages.decode`` either give a valid parse
or raise a ProtocolError subclass whose ``code`` is in ERROR_CODES (the same code each time
for the same input); ``strict.loads`` gives a value or ``strict.Invalid``. Never another
exception. Example counts come from the hypothesis profile (tests/hostile/conftest.py)."""

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.protocol import envelope, messages, strict, topics
from agent.protocol.errors import ProtocolError
from agent.protocol.keys import generate_private_key, kid_for
from agent.protocol.messages import ERROR_CODES

from .conftest import TallyFactory
from .figures import Tally

GROUP = "parsers (hypothesis)"
T = TypeVar("T")

VID: Final = "vaaaaaaaaaaaaaaa1"
NOW: Final = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
CAR_KEY: Final = generate_private_key()
CLOUD_KEY: Final = generate_private_key()
CAR: Final = envelope.Signer(CAR_KEY)
CLOUD: Final = envelope.Signer(CLOUD_KEY)
UP: Final = topics.up(VID, "status")
DOWN: Final = topics.down(VID, "policy")
KEYS: Final = {
    kid_for(CAR_KEY.public_key()): CAR_KEY.public_key(),
    kid_for(CLOUD_KEY.public_key()): CLOUD_KEY.public_key(),
}
INTENT: Final = "0123456789abcdef" * 2

_QUOTE = messages.Quote(
    quote_id="q_picc_1",
    insurer_code="PICC",
    insurer_name="中国人保财险",
    start=date(2027, 1, 1),
    end=date(2027, 12, 31),
    ctpl="855.00",
    floating_rate="-0.10",
    vehicle_vessel_tax="360.00",
    total="1215.00",
    expires_at=NOW + timedelta(days=1),
    start_rule="midnight",
    rate_basis="A2",
    claims_phone="95518",
)
BODIES: Final[dict[str, messages.AnyBody]] = {
    "status.request": messages.StatusRequest(vid=VID, seq=7),
    "policy.state": messages.PolicyState(
        vid=VID,
        seq=3,
        version=2,
        issued_at=NOW,
        fresh_until=NOW + timedelta(days=1),
        reply_to=7,
        status="expiring",
        insurer_code="PICC",
        insurer_name="中国人保财险",
        policy_no_masked="PDZA****1234",
        coverage_start=date(2026, 1, 1),
        coverage_end=date(2026, 12, 31),
        source="national",
        verified_at=NOW,
        plate_masked="沪A·****8",
        claims_phone="95518",
        vin_digest="ab" * 32,
    ),
    "error": messages.ErrorReply(vid=VID, seq=4, reply_to=7, code="replay", message="old"),
    "renewal.request": messages.RenewalRequest(
        vid=VID, seq=8, intent_id=INTENT, action="accept", quote_id="q_picc_1"
    ),
    "vehicle.event": messages.VehicleEvent(
        vid=VID, seq=9, intent_id=INTENT, event="prompt_shown", at=NOW, detail="d30"
    ),
    "intent.receipt": messages.IntentReceipt(
        vid=VID, seq=5, reply_to=8, intent_id=INTENT, issued_at=NOW
    ),
    "renewal.update": messages.RenewalUpdate(
        vid=VID,
        seq=6,
        issued_at=NOW,
        renewal_id="r_1",
        intent_id=INTENT,
        stage="quotes",
        quotes=(_QUOTE,),
        amount="1215.00",
        message="两家报价",
        retry_after_s=60,
        reason="rate_limited",
    ),
}
"""One valid body of every type of contract v1."""
BODY_BYTES: Final = {name: messages.encode(body) for name, body in BODIES.items()}

JSON: Final = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            2**53 + 1,
            2**64,
            -(2**63),
            10**400,
            "",
            "\u0000",
            "\ud800",
            VID,
            VID.upper(),
            "2026-02-30",
            "2026-12-01T04:00:00",
            "ES256",
            "none",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value, with the edges that matter here."""
TOKENS: Final = [
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b"\\",
    b",",
    b":",
    b"\\u0000",
    b"\\ud800",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b'"seq":1,',
    b"\xff",
    b"\xc0\xaf",
    b" ",
]


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, set, inserted, deleted, repeated or cut."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not out:
            out.extend(draw(st.binary(min_size=1, max_size=16)))
            continue
        i = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "repeat", "cut"]))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[i] = draw(st.integers(0, 255))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=16) | st.sampled_from(TOKENS))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 8))]
        elif op == "repeat":
            out[i:i] = out[i : i + draw(st.integers(1, 64))]
        else:
            del out[i:]
    return bytes(out)


def _nest(value: object, depth: int, in_array: bool) -> object:
    for _ in range(depth):
        value = [value] if in_array else {"n": value}
    return value


@st.composite
def json_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """The JSON object ``data`` with keys inserted, removed or repeated, values of another
    type, values nested, or the whole text wrapped."""
    obj: dict[str, Any] = json.loads(data)
    repeat: tuple[str, object] | None = None
    for _ in range(draw(st.integers(1, 3))):
        keys = sorted(obj)
        op = draw(st.sampled_from(["insert", "retype", "remove", "nest", "repeat"]))
        if op == "insert" or not keys:
            obj[draw(st.text(max_size=10))] = draw(JSON)
        elif op == "retype":
            obj[draw(st.sampled_from(keys))] = draw(JSON)
        elif op == "remove":
            del obj[draw(st.sampled_from(keys))]
        elif op == "nest":
            key = draw(st.sampled_from(keys))
            obj[key] = _nest(obj[key], draw(st.integers(1, 40)), draw(st.booleans()))
        else:
            key = draw(st.sampled_from(keys))
            repeat = (key, draw(st.just(obj[key]) | JSON))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    if repeat is not None:
        key, value = repeat
        text = (
            text[:-1]
            + ("," if len(text) > 2 else "")
            + json.dumps(key)
            + ":"
            + json.dumps(value)
            + "}"
        )
    wrap = draw(st.integers(0, 3)) * draw(st.sampled_from([1, 10, 400]))
    return ("[" * wrap + text + "]" * wrap).encode("utf-8", "surrogatepass")


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return byte_mutations(data) | json_mutations(data)


def typed(row: Tally, call: Callable[[], T]) -> T | None:
    """Run ``call``: its result (counted valid), or a typed refusal (counted refused) whose
    code is in ERROR_CODES and the same on a second try; anything else fails the test."""
    try:
        result = call()
    except ProtocolError as exc:
        again: str | None = None
        try:
            call()
        except ProtocolError as second:
            again = second.code
        ok = type(exc) is not ProtocolError and exc.code in ERROR_CODES and again == exc.code
        row.record(refused=ok, crashed=not ok, what=f"{type(exc).__name__} {exc.code}/{again}")
        assert ok, f"{type(exc).__name__} with code {exc.code!r} (then {again!r}): {exc}"
        return None
    except Exception as exc:
        row.record(refused=False, crashed=True, what=repr(exc)[:120])
        raise
    row.record_valid()
    return result


def open_and_decode(topic: str, data: bytes) -> messages.AnyBody:
    return messages.decode(envelope.open_with(topic, data, KEYS))


@pytest.fixture
def row(tally: TallyFactory, request: pytest.FixtureRequest) -> Tally:
    doc = (request.function.__doc__ or request.function.__name__).split("\n")[0]
    return tally(doc, group=GROUP, expected="a valid parse, or a typed `code`")


def test_envelope_parse_of_arbitrary_bytes(row: Tally) -> None:
    """envelope.parse: arbitrary bytes"""

    @given(st.binary(max_size=4096) | st.text(max_size=400).map(str.encode))
    def check(data: bytes) -> None:
        typed(row, lambda: envelope.parse(data))

    check()
    row.check()


def test_open_with_of_mutated_envelopes(row: Tally) -> None:
    """envelope.open_with + decode: mutated envelopes"""
    sealed = [
        CAR.seal(UP, BODY_BYTES["status.request"]),
        CLOUD.seal(DOWN, BODY_BYTES["policy.state"]),
    ]

    @given(st.sampled_from(sealed).flatmap(mutations), st.sampled_from([UP, DOWN]))
    def check(data: bytes, topic: str) -> None:
        typed(row, lambda: open_and_decode(topic, data))

    check()
    row.check()


def test_open_with_of_mutated_bodies_under_a_valid_signature(row: Tally) -> None:
    """envelope.open_with + decode: mutated bodies, validly signed"""

    @given(st.sampled_from(sorted(BODY_BYTES)).flatmap(lambda name: mutations(BODY_BYTES[name])))
    def check(body: bytes) -> None:
        if len(body) > envelope.MAX_BODY_BYTES:
            body = body[: envelope.MAX_BODY_BYTES]
        data = CAR.seal(UP, body)
        typed(row, lambda: open_and_decode(UP, data))

    check()
    row.check()


def test_decode_of_arbitrary_bytes(row: Tally) -> None:
    """messages.decode: arbitrary bytes"""

    @given(st.binary(max_size=5000) | JSON.map(lambda v: json.dumps(v).encode()))
    def check(data: bytes) -> None:
        typed(row, lambda: messages.decode(data))

    check()
    row.check()


def test_decode_of_mutated_bodies_of_every_type(row: Tally) -> None:
    """messages.decode: mutated bodies of every type"""

    @given(st.sampled_from(sorted(BODY_BYTES)).flatmap(lambda name: mutations(BODY_BYTES[name])))
    def check(data: bytes) -> None:
        typed(row, lambda: messages.decode(data))

    check()
    row.check()
    assert {type(messages.decode(b)).__name__ for b in BODY_BYTES.values()} == {
        type(b).__name__ for b in BODIES.values()
    }  # every type was a starting point, and each parses as itself


def test_strict_loads_of_arbitrary_and_mutated_text(tally: TallyFactory) -> None:
    """strict.loads: arbitrary bytes and mutated JSON"""
    row = tally(
        "strict.loads: arbitrary bytes and mutated JSON",
        group=GROUP,
        expected="a value, or `strict.Invalid`",
    )
    sources = st.binary(max_size=4096) | st.sampled_from(sorted(BODY_BYTES)).flatmap(
        lambda name: mutations(BODY_BYTES[name])
    )

    @given(sources)
    def check(data: bytes) -> None:
        try:
            strict.loads(data)
        except strict.Invalid:
            row.record(refused=True)
            return
        except Exception as exc:
            row.record(refused=False, crashed=True, what=repr(exc)[:120])
            raise
        row.record_valid()

    check()
    row.check()
