"""The signed envelope: seal, parse, verify; every malformed or forged input refused."""

import base64
import json
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.protocol import envelope, keys, topics
from agent.protocol.envelope import MAX_BODY_BYTES, MAX_ENVELOPE_BYTES, Signer
from agent.protocol.errors import EnvelopeError, ProtocolError, SignatureError, TopicError

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order of P-256's base point (SEC 2, secp256r1), written out here independently."""
VID = "vabcdefgh2345678"
OTHER_VID = "vzyxwvut98765432"
TOPIC = f"ctpl/v1/{VID}/up/status"
BODY = b'{"type":"status.request","vid":"vabcdefgh2345678","seq":41}'

KEY = keys.generate_private_key()
OTHER_KEY = keys.generate_private_key()
SIGNER = Signer(KEY)
KID = keys.kid_for(KEY.public_key())
TRUSTED = {KID: KEY.public_key()}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sealed() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(SIGNER.seal(TOPIC, BODY))
    return obj


def _raw(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _with(**changes: Any) -> bytes:
    obj = _sealed()
    obj.update(changes)
    return _raw(obj)


def _without(field: str) -> bytes:
    obj = _sealed()
    del obj[field]
    return _raw(obj)


def _high_s_twin(sig: bytes) -> bytes:
    """(r, n − s): the other valid ECDSA signature of the same message."""
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (P256_N - s).to_bytes(32, "big")


def _nested(depth: int) -> bytes:
    """A sealed envelope with a field whose value nests ``depth`` arrays deep."""
    return SIGNER.seal(TOPIC, BODY)[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"


def _flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ---- the good path ---------------------------------------------------------


def test_seal_then_open_gives_the_exact_body_bytes() -> None:
    sealed = SIGNER.seal(TOPIC, BODY)
    assert envelope.open_with(TOPIC, sealed, TRUSTED) == BODY


def test_sealed_envelope_has_the_v1_shape() -> None:
    sealed = SIGNER.seal(TOPIC, BODY)
    obj = json.loads(sealed)
    assert list(obj) == ["v", "alg", "kid", "body", "sig"]
    assert obj["v"] == 1
    assert obj["alg"] == "ES256"
    assert obj["kid"] == KID == SIGNER.kid
    assert _unb64(obj["body"]) == BODY
    assert len(_unb64(obj["sig"])) == 64
    assert "=" not in obj["body"] + obj["sig"]
    assert b" " not in sealed


def test_parse_then_verify_gives_the_body() -> None:
    env = envelope.parse(SIGNER.seal(TOPIC, BODY))
    assert (env.kid, env.body) == (KID, BODY)
    assert env.verify(TOPIC, KEY.public_key()) == BODY


def test_signature_covers_prefix_topic_and_body() -> None:
    env = envelope.parse(SIGNER.seal(TOPIC, BODY))
    message = b"ctpl/1\n" + TOPIC.encode() + b"\n" + BODY
    assert envelope.signing_input(TOPIC, BODY) == message
    keys.verify_raw(KEY.public_key(), env.sig, message)


def test_empty_and_maximum_bodies_round_trip() -> None:
    for body in (b"", b"x" * MAX_BODY_BYTES):
        sealed = SIGNER.seal(TOPIC, body)
        assert len(sealed) <= MAX_ENVELOPE_BYTES
        assert envelope.open_with(TOPIC, sealed, TRUSTED) == body


def test_seals_are_always_low_s() -> None:
    # Half of raw ECDSA signatures are high-S: 200 seals all low-S fail by chance 2**-200.
    for _ in range(200):
        sig = _unb64(json.loads(SIGNER.seal(TOPIC, BODY))["sig"])
        assert 0 < int.from_bytes(sig[32:], "big") <= P256_N // 2


def test_the_contract_uses_the_order_of_p256() -> None:
    assert keys.P256_ORDER == P256_N


def test_low_s_normalises_only_a_high_s_signature() -> None:
    sig = keys.sign_raw(KEY, envelope.signing_input(TOPIC, BODY))
    twin = _high_s_twin(sig)
    assert keys.low_s(sig) == sig
    assert keys.low_s(twin) == sig


def test_two_seals_of_the_same_body_both_verify() -> None:
    first, second = SIGNER.seal(TOPIC, BODY), SIGNER.seal(TOPIC, BODY)
    assert first != second, "ECDSA signatures are randomized"
    for sealed in (first, second):
        assert envelope.open_with(TOPIC, sealed, TRUSTED) == BODY


# ---- forgeries -------------------------------------------------------------


def test_tampered_body_is_refused() -> None:
    forged = _with(body=_b64(BODY.replace(b'"seq":41', b'"seq":42')))
    with pytest.raises(SignatureError) as info:
        envelope.open_with(TOPIC, forged, TRUSTED)
    assert info.value.code == "bad_signature"


@pytest.mark.parametrize("bit", [0, 7, 255, 256, 511])
def test_tampered_signature_is_refused(bit: int) -> None:
    obj = _sealed()
    forged = _with(sig=_b64(_flip_bit(_unb64(obj["sig"]), bit)))
    with pytest.raises(SignatureError):
        envelope.open_with(TOPIC, forged, TRUSTED)


@pytest.mark.parametrize(
    "sig",
    [b"", b"\x00" * 64, b"\xff" * 64, b"\x00" * 63, b"\x00" * 65, b"\x01" * 72],
    ids=["empty", "zeros", "ones", "63-bytes", "65-bytes", "der-length"],
)
def test_malformed_signatures_are_refused(sig: bytes) -> None:
    with pytest.raises(SignatureError):
        envelope.open_with(TOPIC, _with(sig=_b64(sig)), TRUSTED)


def test_the_high_s_twin_of_a_valid_signature_is_refused_with_bad_signature() -> None:
    sealed = _sealed()
    twin = _high_s_twin(_unb64(sealed["sig"]))
    r, s = (int.from_bytes(twin[i : i + 32], "big") for i in (0, 32))
    # It is a valid ECDSA signature of the same bytes (the malleability) ...
    KEY.public_key().verify(
        encode_dss_signature(r, s),
        envelope.signing_input(TOPIC, BODY),
        ec.ECDSA(hashes.SHA256()),
    )
    # ... which the contract refuses: one message, one signature.
    with pytest.raises(SignatureError) as info:
        envelope.open_with(TOPIC, _with(sig=_b64(twin)), TRUSTED)
    assert info.value.code == "bad_signature"
    with pytest.raises(SignatureError, match="low-S"):
        keys.verify_raw(KEY.public_key(), twin, envelope.signing_input(TOPIC, BODY))


def test_signature_by_another_key_under_the_trusted_kid_is_refused() -> None:
    forged = Signer(OTHER_KEY).seal(TOPIC, BODY)
    obj = json.loads(forged)
    obj["kid"] = KID
    with pytest.raises(SignatureError) as info:
        envelope.open_with(TOPIC, _raw(obj), TRUSTED)
    assert info.value.code == "bad_signature"


def test_wrong_key_for_the_kid_is_refused() -> None:
    with pytest.raises(SignatureError):
        envelope.open_with(TOPIC, SIGNER.seal(TOPIC, BODY), {KID: OTHER_KEY.public_key()})


def test_unknown_kid_is_refused_with_code_unknown_key() -> None:
    sealed = Signer(OTHER_KEY).seal(TOPIC, BODY)
    with pytest.raises(SignatureError) as info:
        envelope.open_with(TOPIC, sealed, TRUSTED)
    assert info.value.code == "unknown_key"


def test_no_trusted_keys_means_unknown_key() -> None:
    with pytest.raises(SignatureError) as info:
        envelope.open_with(TOPIC, SIGNER.seal(TOPIC, BODY), {})
    assert info.value.code == "unknown_key"


@pytest.mark.parametrize(
    "other_topic",
    [
        f"ctpl/v1/{OTHER_VID}/up/status",
        f"ctpl/v1/{VID}/up/renewal",
        f"ctpl/v1/{VID}/up/event",
        f"ctpl/v1/{VID}/down/policy",
        f"ctpl/v1/{VID}/presence",
        f"ctpl/v1/{VID}/up/status/",
        f"ctpl/v1/{VID}/up/statu",
        "",
    ],
)
def test_signature_made_for_another_topic_is_refused(other_topic: str) -> None:
    sealed = SIGNER.seal(TOPIC, BODY)
    with pytest.raises(SignatureError):
        envelope.open_with(other_topic, sealed, TRUSTED)


def test_the_separator_alone_is_ambiguous_so_receivers_parse_the_topic_first() -> None:
    # The signing input cannot tell topic "t" + body "x\ny" from topic "t\nx" + body "y";
    # what makes it unambiguous is that no valid v1 topic holds a newline.
    assert envelope.signing_input("t", b"x\ny") == envelope.signing_input("t\nx", b"y")
    with pytest.raises(TopicError):
        topics.parse(f"{TOPIC}\n{{")


# ---- malformed envelopes ---------------------------------------------------


@pytest.mark.parametrize("field", ["v", "alg", "kid", "body", "sig"])
def test_missing_field_is_refused(field: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        envelope.parse(_without(field))
    assert info.value.code == "bad_envelope"


@pytest.mark.parametrize(
    "extra",
    [{"typ": "JWT"}, {"topic": TOPIC}, {"V": 1}, {"x": None}],
    ids=["typ", "topic", "case", "null"],
)
def test_extra_field_is_refused(extra: dict[str, Any]) -> None:
    obj = _sealed()
    obj.update(extra)
    with pytest.raises(EnvelopeError):
        envelope.parse(_raw(obj))


@pytest.mark.parametrize("v", [0, 2, -1, "1", True, None, [1], 1.5, 1.0], ids=repr)
def test_version_other_than_1_is_refused(v: object) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(_with(v=v))


@pytest.mark.parametrize("text", [b'"v":1.0', b'"v":1e0', b'"v":10E-1', b'"v":true'])
def test_version_must_be_the_json_integer_1(text: bytes) -> None:
    sealed = SIGNER.seal(TOPIC, BODY)
    assert sealed.startswith(b'{"v":1,')
    with pytest.raises(EnvelopeError):
        envelope.parse(sealed.replace(b'"v":1', text, 1))


@pytest.mark.parametrize("alg", ["es256", "ES384", "EdDSA", "HS256", "none", "", None, 256])
def test_algorithm_other_than_es256_is_refused(alg: object) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(_with(alg=alg))


@pytest.mark.parametrize(
    "kid",
    ["", "a" * 65, "kid/with/slash", "kid with space", "kid+", "kid=", "ключ", None, 7, ["k"]],
    ids=repr,
)
def test_malformed_kid_is_refused(kid: object) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(_with(kid=kid))


@pytest.mark.parametrize("field", ["body", "sig"])
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("!!!!", id="punctuation"),
        pytest.param("eyJ9+/==", id="standard-alphabet"),
        pytest.param("eyJ9", id="padding-stripped-ok-control"),
        pytest.param("eyJ9fQ==", id="padded"),
        pytest.param("eyJ9f", id="impossible-length"),
        pytest.param("QR", id="non-canonical-trailing-bits"),
        pytest.param("eyJ9fR", id="non-canonical-trailing-bits-2"),
        pytest.param("ey J9", id="space"),
        pytest.param("eyJ9\n", id="newline"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(["eyJ9"], id="list"),
    ],
)
def test_bad_base64_is_refused(field: str, text: object) -> None:
    data = _with(**{field: text})
    if text == "eyJ9":
        # The control: well-formed base64url parses (and then fails only on the signature).
        env = envelope.parse(data)
        with pytest.raises(SignatureError):
            env.verify(TOPIC, KEY.public_key())
        return
    with pytest.raises(EnvelopeError):
        envelope.parse(data)


@pytest.mark.parametrize("field", ["v", "alg", "kid", "body", "sig"])
def test_a_repeated_field_is_refused_even_when_the_last_value_is_valid(field: str) -> None:
    sealed = SIGNER.seal(TOPIC, BODY)
    head = f'"{field}":'.encode()
    data = sealed.replace(head, head + b'"AAAA",' + head, 1)
    assert json.loads(data) == json.loads(sealed)  # a plain parser lets the last one win
    with pytest.raises(EnvelopeError, match="repeated") as info:
        envelope.open_with(TOPIC, data, TRUSTED)
    assert info.value.code == "bad_envelope"


@pytest.mark.parametrize("depth", [9, 100, 3000])
def test_deep_nesting_is_refused_with_bad_envelope_never_recursion_error(depth: int) -> None:
    data = _nested(depth)
    assert len(data) <= MAX_ENVELOPE_BYTES
    with pytest.raises(EnvelopeError, match="nested deeper than 8") as info:
        envelope.open_with(TOPIC, data, TRUSTED)
    assert info.value.code == "bad_envelope"


def test_deep_nesting_is_refused_however_deep_the_callers_stack() -> None:
    def at_depth(n: int) -> None:
        if n:
            at_depth(n - 1)
        else:
            with pytest.raises(EnvelopeError):
                envelope.parse(b"[" * 3000 + b"]" * 3000)

    at_depth(sys.getrecursionlimit() - 50)


def test_oversize_envelope_is_refused_before_json() -> None:
    data = SIGNER.seal(TOPIC, BODY)
    padded = data[:-1] + b" " * (MAX_ENVELOPE_BYTES - len(data)) + b"}"
    assert len(padded) == MAX_ENVELOPE_BYTES
    assert envelope.open_with(TOPIC, padded, TRUSTED) == BODY
    with pytest.raises(EnvelopeError, match="exceeds"):
        envelope.parse(padded[:-1] + b" }")
    with pytest.raises(EnvelopeError, match="exceeds"):
        envelope.parse(b"[" * 1_000_000)


def test_oversize_body_inside_a_small_envelope_is_refused() -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    data = _with(body=_b64(body))
    assert len(data) < MAX_ENVELOPE_BYTES
    with pytest.raises(EnvelopeError, match="exceeds"):
        envelope.parse(data)


def test_seal_refuses_an_oversize_body() -> None:
    with pytest.raises(EnvelopeError, match="exceeds"):
        SIGNER.seal(TOPIC, b"x" * (MAX_BODY_BYTES + 1))


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\xfd", b"\x00" * 16, b"{", b'{"v":1', b"NaN", b"{}}"],
    ids=["empty", "text", "not-utf8", "nul", "open-brace", "truncated", "nan", "trailing"],
)
def test_non_json_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(data)


@pytest.mark.parametrize(
    "data", [b"[]", b"[1,2]", b"1", b'"envelope"', b"null", b"true", b"{}"], ids=repr
)
def test_json_that_is_not_an_envelope_object_is_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        envelope.parse(data)


def test_errors_form_one_tree() -> None:
    for cls in (EnvelopeError, SignatureError):
        assert issubclass(cls, ProtocolError)
    assert EnvelopeError("x").code == "bad_envelope"
    assert SignatureError("x").code == "bad_signature"
