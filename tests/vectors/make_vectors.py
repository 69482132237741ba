"""Write tests/vectors/envelope_v1.json, the golden vectors of the v1 signed envelope.

Run once, by hand, from the repository root::

    .venv/bin/python tests/vectors/make_vectors.py

The vectors are meant to stay fixed: both the agent and the cloud check them
(tests/protocol/test_golden_vectors.py and the cloud's own test). ECDSA
signatures are randomized, so signing again would write different signatures
for the same bodies; the script therefore refuses to overwrite the file unless
given ``--force``, and a forced rewrite should be a deliberate contract change.
Even then it keeps each envelope already in the file that still opens under the
current rules (same topic, same body, low-S), so a rewrite changes only what the
contract changed.

Every vector also carries its high-S twin: the same envelope with the signature's s
replaced by n − s. It is a valid ECDSA signature of the same bytes, and the contract
refuses it (``bad_signature``): a signature has one spelling only.

The key is a published TEST-ONLY key, derived from a fixed scalar; no PEM
private key is stored anywhere.
"""

import argparse
import hashlib
import json
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from agent.protocol import envelope, keys, messages, topics
from agent.protocol.envelope import Signer, signing_input
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import PolicyState, StatusRequest

VECTORS_FILE: Final = Path(__file__).resolve().parent / "envelope_v1.json"
TEST_SCALAR_HEX: Final = "6458b3da274db335d97ba64d13d7697222d3b4a9be023cd547be7004f9ad42c9"
"""SHA-256 of b"ctpl golden vectors v1: TEST ONLY, never a real key"."""
VID: Final = "vgoldenvectorcar1"
OTHER_VID: Final = "vgoldenvectorcar2"
CHINA: Final = timezone(timedelta(hours=8))


def vector_key() -> ec.EllipticCurvePrivateKey:
    """The published test-only key of the vectors."""
    return ec.derive_private_key(int(TEST_SCALAR_HEX, 16), ec.SECP256R1())


def bodies() -> list[tuple[str, str, str, StatusRequest | PolicyState]]:
    """(name, direction, topic, body) of every vector."""
    status = StatusRequest(vid=VID, seq=41)
    policy = PolicyState(
        vid=VID,
        seq=1002,
        version=7,
        issued_at=datetime(2025, 6, 30, 8, 0, 0, tzinfo=UTC),
        fresh_until=datetime(2025, 7, 1, 16, 0, 0, tzinfo=CHINA),
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
    return [
        ("status_request", "car -> cloud", topics.up(VID, "status"), status),
        ("policy_state", "cloud -> car", topics.down(VID, "policy"), policy),
    ]


def high_s_twin(sealed: bytes) -> bytes:
    """``sealed`` with its signature's s replaced by n − s: the other valid ECDSA spelling."""
    env = envelope.parse(sealed)
    r, s = env.sig[:32], int.from_bytes(env.sig[32:], "big")
    twin = r + (keys.P256_ORDER - s).to_bytes(32, "big")
    return sealed.replace(keys.b64url(env.sig).encode(), keys.b64url(twin).encode())


def _kept(old: dict[str, Any] | None, name: str, topic: str, body: bytes) -> bytes | None:
    """The envelope ``old`` holds for vector ``name`` if it still opens to ``body`` on ``topic``."""
    if old is None:
        return None
    vector = next((v for v in old["vectors"] if v["name"] == name), None)
    if vector is None or vector["topic"] != topic:
        return None
    sealed = str(vector["envelope_text"]).encode("ascii")
    key = vector_key().public_key()
    try:
        opened = envelope.open_with(topic, sealed, {keys.kid_for(key): key})
    except ProtocolError:
        return None
    return sealed if opened == body else None


def build(old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole vectors document, keeping the envelopes of ``old`` that still open."""
    key = vector_key()
    signer = Signer(key)
    vectors = []
    for name, direction, topic, model in bodies():
        body = messages.encode(model)
        parsed = topics.parse(topic)
        other_topic = topic.replace(parsed.vid, OTHER_VID)
        sealed = _kept(old, name, topic, body) or signer.seal(topic, body)
        vectors.append(
            {
                "name": name,
                "direction": direction,
                "topic": topic,
                "body_text": body.decode("utf-8"),
                "body_sha256_hex": hashlib.sha256(body).hexdigest(),
                "signing_input_b64url": keys.b64url(signing_input(topic, body)),
                "envelope_text": sealed.decode("ascii"),
                "must_not_verify_on_topic": other_topic,
                "high_s_twin_envelope_text": high_s_twin(sealed).decode("ascii"),
            }
        )
    return {
        "about": [
            "Golden vectors of the CTPL wire contract v1 signed envelope.",
            "Both sides check this file: the agent in tests/protocol/test_golden_vectors.py,"
            " the cloud in its own test. Do not regenerate it casually: signatures are"
            " randomized, so a rewrite changes every envelope_text.",
            "Each vector: body_text is the exact body (UTF-8); envelope_text is the exact"
            " envelope as sent on topic; the envelope's body field is base64url(body_text).",
            "A checker must: parse envelope_text; find the key by kid; verify the signature"
            " for topic; get back exactly body_text; decode it into the message model and"
            " re-encode it to exactly body_text; refuse the envelope on"
            " must_not_verify_on_topic; refuse it after any single-bit change to the body"
            " or the signature; refuse high_s_twin_envelope_text (the same r, s replaced by"
            " n - s: a valid ECDSA signature, but not low-S) with bad_signature.",
            "Made by tests/vectors/make_vectors.py.",
        ],
        "contract": {
            "envelope": '{"v":1,"alg":"ES256","kid":"<kid>","body":"<b64url>","sig":"<b64url>"}',
            "base64url": "RFC 4648 section 5 alphabet, no padding",
            "signing_input": 'b"ctpl/1\\n" + UTF-8 topic + b"\\n" + body bytes',
            "signature": "ECDSA P-256 over SHA-256 of signing_input, as r||s (32+32 bytes),"
            " low-S: s <= n/2 (n the order of P-256); a signature with s > n/2 is refused",
            "kid": "base64url of the first 16 bytes of SHA-256 of the DER SubjectPublicKeyInfo",
        },
        "test_key": {
            "warning": "TEST ONLY. This private key is published here: never trust it anywhere.",
            "curve": "P-256 (secp256r1)",
            "private_scalar_hex": TEST_SCALAR_HEX,
            "derive": "ec.derive_private_key(int(private_scalar_hex, 16), ec.SECP256R1())",
            "public_key_pem": keys.public_pem(key.public_key()).decode("ascii"),
            "kid": signer.kid,
        },
        "vectors": vectors,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite the existing vectors")
    args = parser.parse_args(argv)
    if VECTORS_FILE.exists() and not args.force:
        print(f"{VECTORS_FILE} exists; the vectors are fixed (use --force to rewrite)")
        return 1
    old = json.loads(VECTORS_FILE.read_text(encoding="utf-8")) if VECTORS_FILE.exists() else None
    text = json.dumps(build(old), ensure_ascii=False, indent=2) + "\n"
    VECTORS_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
