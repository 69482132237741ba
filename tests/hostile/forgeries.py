"""Forged envelopes a car can publish on its own ``up/status`` topic, each with the ``error``
code it must get: pure, keys and numbers in, ``Forgery`` values out.

The car is the attacker here: it holds its own key, so it can sign any body bytes it likes;
what it must not get is a body the cloud acts on. Every body carries a ``seq`` the cloud
has not seen, so a forgery that were accepted would move the stored counter.
"""

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.protocol import topics
from agent.protocol.envelope import MAX_ENVELOPE_BYTES, Signer, signing_input
from agent.protocol.keys import (
    P256_ORDER,
    PrivateKey,
    b64url,
    generate_private_key,
    kid_for,
    public_pem,
    sign_raw,
)


@dataclass(frozen=True)
class Forgery:
    """One attempt: the bytes a car publishes, and the code of the ``error`` it must get."""

    variant: str
    payload: bytes
    code: str


@dataclass(frozen=True)
class Forger:
    """Makes forgeries for car ``vid`` holding ``key``; ``other_vid``/``other_key``: another
    registered car (a kid the cloud knows, not this car's)."""

    vid: str
    key: PrivateKey
    other_vid: str
    other_key: PrivateKey

    @property
    def topic(self) -> str:
        return topics.up(self.vid, "status")

    @property
    def kid(self) -> str:
        return kid_for(self.key.public_key())

    def body(self, seq: int, **fields: object) -> bytes:
        """A status request body's exact bytes; ``fields`` replace or add (in order)."""
        values: dict[str, object] = {"type": "status.request", "vid": self.vid, "seq": seq}
        values.update(fields)
        return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()

    def sealed(self, body: bytes) -> bytes:
        """``body`` under this car's genuine signature (any bytes up to 4 KiB)."""
        return Signer(self.key).seal(self.topic, body)

    def envelope(
        self, body: bytes, sig: bytes, *, kid: str | None = None, **fields: object
    ) -> bytes:
        """An envelope with these parts; ``fields`` replace v, alg, kid, body or sig as given."""
        values: dict[str, object] = {
            "v": 1,
            "alg": "ES256",
            "kid": kid or self.kid,
            "body": b64url(body),
            "sig": b64url(sig),
        }
        values.update(fields)
        return json.dumps(values, separators=(",", ":")).encode()

    def genuine(self, seq: int) -> bytes:
        return self.sealed(self.body(seq))

    def signature(self, body: bytes) -> bytes:
        return sign_raw(self.key, signing_input(self.topic, body))


def alg_none(f: Forger, seq: int) -> list[Forgery]:
    body = f.body(seq)
    return [
        Forgery("alg none, empty sig", f.envelope(body, b"", alg="none"), "bad_envelope"),
        Forgery(
            "alg None, genuine sig", f.envelope(body, f.signature(body), alg="None"), "bad_envelope"
        ),
        Forgery("alg NONE", f.envelope(body, b"", alg="NONE"), "bad_envelope"),
        Forgery("alg null", f.envelope(body, b"", alg=None), "bad_envelope"),
        Forgery(
            "no alg field", f.envelope(body, b"").replace(b'"alg":"ES256",', b""), "bad_envelope"
        ),
    ]


def alg_hs256(f: Forger, seq: int) -> list[Forgery]:
    body = f.body(seq)
    message = signing_input(f.topic, body)
    # Key confusion: HMAC keyed with what a verifier holds in the open (public key, kid).
    by_pem = hmac.new(public_pem(f.key.public_key()), message, hashlib.sha256).digest()
    by_kid = hmac.new(f.kid.encode(), message, hashlib.sha256).digest()
    return [
        Forgery(
            "HS256 keyed with the public key PEM",
            f.envelope(body, by_pem, alg="HS256"),
            "bad_envelope",
        ),
        Forgery("HS256 keyed with the kid", f.envelope(body, by_kid, alg="HS256"), "bad_envelope"),
        Forgery(
            "alg es256 (lower case)",
            f.envelope(body, f.signature(body), alg="es256"),
            "bad_envelope",
        ),
        Forgery("alg ES384", f.envelope(body, f.signature(body), alg="ES384"), "bad_envelope"),
    ]


def foreign_kid(f: Forger, seq: int) -> list[Forgery]:
    body = f.body(seq)
    stranger = generate_private_key()
    strange_sig = sign_raw(stranger, signing_input(f.topic, body))
    other_sig = sign_raw(f.other_key, signing_input(f.topic, body))
    return [
        Forgery(
            "a stranger's key and kid",
            f.envelope(body, strange_sig, kid=kid_for(stranger.public_key())),
            "unknown_key",
        ),
        Forgery(
            "another registered car's key and kid",
            f.envelope(body, other_sig, kid=kid_for(f.other_key.public_key())),
            "unknown_key",
        ),
        Forgery(
            "own signature under another car's kid",
            f.envelope(body, f.signature(body), kid=kid_for(f.other_key.public_key())),
            "unknown_key",
        ),
        Forgery(
            "a stranger's signature under own kid", f.envelope(body, strange_sig), "bad_signature"
        ),
        Forgery(
            "kid with a path in it",
            f.envelope(body, f.signature(body), kid="../../keys/x"),
            "bad_envelope",
        ),
        Forgery(
            "kid of 65 characters",
            f.envelope(body, f.signature(body), kid="k" * 65),
            "bad_envelope",
        ),
    ]


def der_signature(f: Forger, seq: int) -> list[Forgery]:
    body = f.body(seq)
    der = f.key.sign(signing_input(f.topic, body), ec.ECDSA(hashes.SHA256()))
    return [
        Forgery("DER signature", f.envelope(body, der), "bad_signature"),
        Forgery("DER signature, 64 bytes cut", f.envelope(body, der[:64]), "bad_signature"),
        Forgery(
            "raw signature with a DER prefix",
            f.envelope(body, b"\x30\x44" + f.signature(body)),
            "bad_signature",
        ),
    ]


def high_s_twin(f: Forger, seq: int) -> list[Forgery]:
    body = f.body(seq)
    sig = f.signature(body)
    r, s = sig[:32], int.from_bytes(sig[32:], "big")
    twin = r + (P256_ORDER - s).to_bytes(32, "big")
    return [
        Forgery("(r, n − s) of a valid signature", f.envelope(body, twin), "bad_signature"),
        Forgery(
            "(r, n): s not below the order",
            f.envelope(body, r + P256_ORDER.to_bytes(32, "big")),
            "bad_signature",
        ),
        Forgery("r = s = 0", f.envelope(body, bytes(64)), "bad_signature"),
    ]


def truncated(f: Forger, seq: int) -> list[Forgery]:
    good = f.genuine(seq)
    env = json.loads(good)
    return [
        Forgery("last byte cut", good[:-1], "bad_envelope"),
        Forgery("cut in half", good[: len(good) // 2], "bad_envelope"),
        Forgery("one byte", good[:1], "bad_envelope"),
        Forgery("empty payload", b"", "bad_envelope"),
        Forgery(
            "signature cut by 3 bytes",
            f.envelope(f.body(seq), f.signature(f.body(seq))[:-3]),
            "bad_signature",
        ),
        Forgery(
            "body cut by 3 bytes, signature kept",
            json.dumps({**env, "body": env["body"][:-4]}, separators=(",", ":")).encode(),
            "bad_signature",
        ),
    ]


def oversize(f: Forger, seq: int) -> list[Forgery]:
    good = f.genuine(seq)
    big_body = f.body(seq, pad="x" * 4200)
    return [
        Forgery(
            "valid envelope + 8 KiB of JSON whitespace",
            good[:-1] + b" " * MAX_ENVELOPE_BYTES + b"}",
            "bad_envelope",
        ),
        Forgery("60 KiB of 'A'", b"A" * 60 * 1024, "bad_envelope"),
        Forgery(
            "a 4.2 KiB body under a genuine signature",
            f.envelope(big_body, f.signature(big_body)),
            "bad_envelope",
        ),
        Forgery(
            "8 KiB + 1 of envelope",
            good + b" " * (MAX_ENVELOPE_BYTES + 1 - len(good)),
            "bad_envelope",
        ),
    ]


def deep_nesting(f: Forger, seq: int) -> list[Forgery]:
    deep_body = f.body(seq)[:-1] + b',"x":' + b"[" * 1990 + b"]" * 1990 + b"}"
    return [
        Forgery("3,000 arrays deep", b"[" * 3000 + b"]" * 3000, "bad_envelope"),
        Forgery("3,000 objects deep", b'{"a":' * 3000 + b"1" + b"}" * 3000, "bad_envelope"),
        Forgery(
            "envelope field nested 3,000 deep",
            f.genuine(seq)[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
            "bad_envelope",
        ),
        Forgery("unclosed 3,000 deep", b"[" * 3000, "bad_envelope"),
        Forgery("body 1,990 deep under a genuine signature", f.sealed(deep_body), "bad_body"),
    ]


def duplicate_key(f: Forger, seq: int) -> list[Forgery]:
    good = f.genuine(seq)
    body = f.body(seq)
    return [
        Forgery('envelope "sig" twice', good[:-1] + b',"sig":"AAAA"}', "bad_envelope"),
        Forgery(
            'envelope "body" twice (last valid)',
            good.replace(b'{"v":1,', b'{"v":1,"body":"e30",', 1),
            "bad_envelope",
        ),
        Forgery(
            'envelope "s\\u0069g" spelling', good[:-1] + b',"s\\u0069g":"AAAA"}', "bad_envelope"
        ),
        Forgery(
            'body "seq" twice', f.sealed(body[:-1] + f',"seq":{seq + 1000}}}'.encode()), "bad_body"
        ),
        Forgery(
            'body "s\\u0065q" spelling',
            f.sealed(body[:-1] + f',"s\\u0065q":{seq}}}'.encode()),
            "bad_body",
        ),
        Forgery(
            'body "vid" twice (own, then another car\'s)',
            f.sealed(body[:-1] + f',"vid":"{f.other_vid}"}}'.encode()),
            "bad_body",
        ),
    ]


def nan_infinity(f: Forger, seq: int) -> list[Forgery]:
    def with_seq(text: str) -> bytes:
        return f.sealed(f.body(seq).replace(f'"seq":{seq}'.encode(), f'"seq":{text}'.encode()))

    return [
        Forgery("body seq NaN", with_seq("NaN"), "bad_body"),
        Forgery("body seq Infinity", with_seq("Infinity"), "bad_body"),
        Forgery("body seq -Infinity", with_seq("-Infinity"), "bad_body"),
        Forgery("body seq 1e400 (a float: inf)", with_seq("1e400"), "bad_body"),
        Forgery("envelope v NaN", f.genuine(seq).replace(b'"v":1', b'"v":NaN'), "bad_envelope"),
        Forgery(
            "envelope v Infinity", f.genuine(seq).replace(b'"v":1', b'"v":Infinity'), "bad_envelope"
        ),
    ]


def huge_integers(f: Forger, seq: int) -> list[Forgery]:
    def with_seq(text: str) -> bytes:
        return f.sealed(f.body(seq).replace(f'"seq":{seq}'.encode(), f'"seq":{text}'.encode()))

    return [
        Forgery("seq 2**64", with_seq(str(2**64)), "bad_body"),
        Forgery("seq 10**400", with_seq("1" + "0" * 400), "bad_body"),
        Forgery("seq of 4,000 digits", with_seq("9" * 4000), "bad_body"),
        Forgery("seq 2**53 + 1", with_seq(str(2**53 + 1)), "bad_body"),
        Forgery("seq -1", with_seq("-1"), "bad_body"),
        Forgery("seq 1.0", with_seq(f"{seq}.0"), "bad_body"),
        Forgery("seq true", with_seq("true"), "bad_body"),
        Forgery('seq "7" (text)', with_seq(f'"{seq}"'), "bad_body"),
        Forgery(
            "envelope v 10**400",
            f.genuine(seq).replace(b'"v":1', b'"v":1' + b"0" * 400),
            "bad_envelope",
        ),
    ]


def non_utf8(f: Forger, seq: int) -> list[Forgery]:
    good = f.genuine(seq)
    return [
        Forgery("\\xff\\xfe\\xfd", b"\xff\xfe\xfd", "bad_envelope"),
        Forgery("genuine envelope in UTF-16", good.decode().encode("utf-16"), "bad_envelope"),
        Forgery("genuine envelope behind a UTF-8 BOM", b"\xef\xbb\xbf" + good, "bad_envelope"),
        Forgery("overlong '{' (\\xc0\\xbb)", b"\xc0\xbb" + good[1:], "bad_envelope"),
        Forgery(
            "kid with a broken UTF-8 sequence",
            good.replace(f.kid.encode(), b"\xc3\x28", 1),
            "bad_envelope",
        ),
        Forgery(
            "body with \\xff bytes, genuinely signed",
            f.sealed(f.body(seq).replace(f.vid.encode(), b"\xff\xfe" + f.vid.encode())),
            "bad_body",
        ),
        Forgery(
            "body with a lone surrogate escape, genuinely signed",
            f.sealed(f.body(seq).replace(f.vid.encode(), f.vid.encode() + b"\\ud800")),
            "bad_body",
        ),
    ]


_HOMOGLYPHS: Final = {
    "a": "а",
    "c": "с",
    "e": "е",
    "o": "о",
    "p": "р",
    "x": "х",
    "y": "у",
    "i": "і",
    "j": "ј",
    "s": "ѕ",
    "d": "ԁ",
}
"""Latin letters and the Cyrillic letters drawn the same."""
_DIGIT_LOOKS: Final = {
    "o": "0",
    "l": "1",
    "i": "1",
    "s": "5",
    "z": "2",
    "b": "6",
    "g": "9",
    "q": "9",
    "t": "7",
    "a": "4",
    "e": "3",
}
"""Letters and the digits read as them: a lookalike that is still a well-formed vid."""


def cyrillic(vid: str) -> str:
    """``vid`` with every letter that has a Cyrillic twin replaced (or its ``v`` by Greek ν)."""
    out = "".join(_HOMOGLYPHS.get(ch, ch) for ch in vid)
    return out if out != vid else "ν" + vid[1:]


def digit_lookalike(vid: str) -> str:
    """``vid`` with its first letter that reads as a digit replaced by it (still well formed)."""
    for i, ch in enumerate(vid[1:], 1):
        if ch in _DIGIT_LOOKS:
            return vid[:i] + _DIGIT_LOOKS[ch] + vid[i + 1 :]
    return vid[:-1] + ("2" if vid[-1] != "2" else "3")


def lookalike_vid(f: Forger, seq: int) -> list[Forgery]:
    def with_vid(vid: str) -> bytes:
        return f.sealed(f.body(seq, vid=vid))

    return [
        Forgery("Cyrillic letters", with_vid(cyrillic(f.vid)), "bad_body"),
        Forgery("trailing space", with_vid(f.vid + " "), "bad_body"),
        Forgery("trailing newline", with_vid(f.vid + "\n"), "bad_body"),
        Forgery("leading zero-width space", with_vid("\u200b" + f.vid), "bad_body"),
        Forgery("upper case", with_vid(f.vid.upper()), "bad_body"),
        Forgery("fullwidth v", with_vid("\uff56" + f.vid[1:]), "bad_body"),
        Forgery(
            "a digit read as a letter (well formed)",
            with_vid(digit_lookalike(f.vid)),
            "vid_mismatch",
        ),
        Forgery("another car's vid", with_vid(f.other_vid), "vid_mismatch"),
    ]


def wrong_body_type(f: Forger, seq: int) -> list[Forgery]:
    return [
        Forgery(
            "a cloud body type (policy.state)",
            f.sealed(f.body(seq, type="policy.state", version=99, status="active")),
            "bad_body",
        ),
        Forgery(
            "a renewal request on up/status",
            f.sealed(f.body(seq, type="renewal.request", intent_id="a" * 32, action="quote")),
            "unsupported_type",
        ),
        Forgery(
            "an unknown type", f.sealed(f.body(seq, type="status.request2")), "unsupported_type"
        ),
        Forgery("an unknown field", f.sealed(f.body(seq, admin=True)), "bad_body"),
        Forgery("an array body", f.sealed(b'["status.request"]'), "bad_body"),
    ]


ATTACKS: Final[dict[str, tuple[Callable[[Forger, int], list[Forgery]], str]]] = {
    "alg none": (alg_none, "bad_envelope"),
    "alg HS256 (and other algs)": (alg_hs256, "bad_envelope"),
    "a foreign kid": (foreign_kid, "unknown_key (bad_envelope if malformed)"),
    "a DER signature": (der_signature, "bad_signature"),
    "the high-S twin of a valid signature": (high_s_twin, "bad_signature"),
    "a truncated envelope": (truncated, "bad_envelope (bad_signature when a part is cut)"),
    "an oversize envelope (> 8 KiB)": (oversize, "bad_envelope"),
    "deep nesting (3,000)": (deep_nesting, "bad_envelope; bad_body under a valid signature"),
    "a duplicate key (envelope and signed body)": (duplicate_key, "bad_envelope / bad_body"),
    "NaN / Infinity": (nan_infinity, "bad_body / bad_envelope"),
    "huge integers (seq 2**64, 10**400)": (huge_integers, "bad_body / bad_envelope"),
    "non-UTF-8 bytes": (non_utf8, "bad_envelope / bad_body"),
    "a lookalike vid in the body": (lookalike_vid, "bad_body; vid_mismatch if well formed"),
    "a body type or field the topic does not take": (
        wrong_body_type,
        "bad_body / unsupported_type",
    ),
}
"""Each attack row: the forgeries it tries and the refusal expected, as the table says it."""
