"""The agent's check of tests/vectors/envelope_v1.json (the cloud checks the same file).

The models below are written out independently of the vectors file: the current
code must turn these values into exactly the bytes that were signed.
"""

import base64
import hashlib
import importlib.util
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from agent.protocol import envelope, keys, messages, topics
from agent.protocol.errors import ProtocolError, SignatureError
from agent.protocol.messages import PolicyState, StatusRequest

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order of P-256's base point (SEC 2, secp256r1), written out here independently."""
VECTORS_FILE = Path(__file__).resolve().parent.parent / "vectors" / "envelope_v1.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
BY_NAME: dict[str, dict[str, str]] = {v["name"]: v for v in VECTORS["vectors"]}

EXPECTED_MODELS: dict[str, StatusRequest | PolicyState] = {
    "status_request": StatusRequest(vid="vgoldenvectorcar1", seq=41),
    "policy_state": PolicyState(
        vid="vgoldenvectorcar1",
        seq=1002,
        version=7,
        issued_at=datetime(2025, 6, 30, 8, 0, 0, tzinfo=UTC),
        fresh_until=datetime(2025, 7, 1, 16, 0, 0, tzinfo=timezone(timedelta(hours=8))),
        reply_to=41,
        status="expiring",
        insurer_code="PICC",
        insurer_name="中国人民财产保险",
        policy_no_masked="PDZA2024****1234",
        coverage_start=date(2024, 7, 16),
        coverage_end=date(2025, 7, 15),
        source="national_platform",
        verified_at=datetime(2025, 6, 30, 7, 59, 30, tzinfo=UTC),
    ),
}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_key() -> ec.EllipticCurvePublicKey:
    scalar = int(VECTORS["test_key"]["private_scalar_hex"], 16)
    return ec.derive_private_key(scalar, ec.SECP256R1()).public_key()


def _trusted() -> dict[str, keys.PublicKey]:
    return {VECTORS["test_key"]["kid"]: _public_key()}


def _flips(data: bytes) -> list[bytes]:
    out = []
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(flipped))
    return out


def test_the_file_holds_both_vectors_and_no_private_pem() -> None:
    assert set(BY_NAME) == set(EXPECTED_MODELS)
    assert "PRIVATE KEY" not in VECTORS_FILE.read_text(encoding="utf-8")
    assert "TEST ONLY" in VECTORS["test_key"]["warning"]


def test_the_test_key_matches_its_public_pem_and_kid() -> None:
    public = _public_key()
    pem = VECTORS["test_key"]["public_key_pem"].encode()
    assert keys.public_pem(public) == pem
    assert keys.load_public_key(pem).public_numbers() == public.public_numbers()
    assert keys.kid_for(public) == VECTORS["test_key"]["kid"]


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_verifies_and_gives_the_exact_body(name: str) -> None:
    vector = BY_NAME[name]
    data = vector["envelope_text"].encode("ascii")
    body = vector["body_text"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == vector["body_sha256_hex"]

    env = envelope.parse(data)
    assert env.kid == VECTORS["test_key"]["kid"]
    assert env.body == body
    assert env.verify(vector["topic"], _public_key()) == body
    assert envelope.open_with(vector["topic"], data, _trusted()) == body


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_signing_input_is_prefix_topic_body(name: str) -> None:
    vector = BY_NAME[name]
    body = vector["body_text"].encode("utf-8")
    message = envelope.signing_input(vector["topic"], body)
    assert message == _unb64(vector["signing_input_b64url"])
    assert message == b"ctpl/1\n" + vector["topic"].encode() + b"\n" + body
    keys.verify_raw(_public_key(), envelope.parse(vector["envelope_text"].encode()).sig, message)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_body_re_encodes_identically_from_the_model(name: str) -> None:
    vector = BY_NAME[name]
    body = vector["body_text"].encode("utf-8")
    expected = EXPECTED_MODELS[name]
    assert messages.encode(expected) == body
    decoded = messages.decode(body)
    assert decoded == expected
    assert messages.encode(decoded) == body


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_topic_is_a_v1_topic_for_the_bodys_vid(name: str) -> None:
    vector = BY_NAME[name]
    parsed = topics.parse(vector["topic"])
    assert parsed.vid == EXPECTED_MODELS[name].vid
    assert parsed.direction == ("up" if vector["direction"] == "car -> cloud" else "down")


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_does_not_verify_on_another_vehicles_topic(name: str) -> None:
    vector = BY_NAME[name]
    other = vector["must_not_verify_on_topic"]
    assert other != vector["topic"]
    topics.parse(other)
    with pytest.raises(SignatureError):
        envelope.open_with(other, vector["envelope_text"].encode(), _trusted())


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_every_one_bit_change_to_body_or_signature_fails(name: str) -> None:
    vector = BY_NAME[name]
    env = envelope.parse(vector["envelope_text"].encode())
    public = _public_key()
    for body in _flips(env.body):
        with pytest.raises(SignatureError):
            envelope.Envelope(env.kid, body, env.sig).verify(vector["topic"], public)
    for sig in _flips(env.sig):
        with pytest.raises(SignatureError):
            envelope.Envelope(env.kid, env.body, sig).verify(vector["topic"], public)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_every_one_bit_change_to_the_envelope_text_is_refused(name: str) -> None:
    vector = BY_NAME[name]
    data = vector["envelope_text"].encode("ascii")
    accepted = []
    for i, flipped in enumerate(_flips(data)):
        try:
            envelope.open_with(vector["topic"], flipped, _trusted())
        except ProtocolError:
            continue
        accepted.append((i // 8, chr(data[i // 8]), chr(flipped[i // 8])))
    assert accepted == [], "bit flips that still opened: (offset, was, now)"


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_vector_signature_is_low_s(name: str) -> None:
    sig = envelope.parse(BY_NAME[name]["envelope_text"].encode()).sig
    assert 0 < int.from_bytes(sig[32:], "big") <= P256_N // 2


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_the_high_s_twin_verifies_as_ecdsa_but_is_refused_with_bad_signature(name: str) -> None:
    vector = BY_NAME[name]
    good = envelope.parse(vector["envelope_text"].encode())
    twin_text = vector["high_s_twin_envelope_text"].encode()
    twin = envelope.parse(twin_text)
    r, s = (int.from_bytes(good.sig[i : i + 32], "big") for i in (0, 32))
    assert (twin.kid, twin.body) == (good.kid, good.body)
    assert twin.sig == r.to_bytes(32, "big") + (P256_N - s).to_bytes(32, "big")
    # The twin is a valid ECDSA signature of the same bytes (malleability) ...
    message = envelope.signing_input(vector["topic"], twin.body)
    twin_s = P256_N - s
    _public_key().verify(encode_dss_signature(r, twin_s), message, ec.ECDSA(hashes.SHA256()))
    # ... and the contract refuses it: one message, one signature.
    with pytest.raises(SignatureError) as info:
        envelope.open_with(vector["topic"], twin_text, _trusted())
    assert info.value.code == "bad_signature"


def _make_vectors() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_vectors", VECTORS_FILE.parent / "make_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_file_is_what_make_vectors_writes_keeping_its_signatures() -> None:
    assert _make_vectors().build(VECTORS) == VECTORS
