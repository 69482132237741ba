"""The signed envelope of wire contract v1.

``{"v":1,"alg":"ES256","kid":"…","body":"<base64url body bytes>","sig":"<base64url r||s>"}``

The signature covers ``b"ctpl/1\\n" + topic + b"\\n" + body_bytes``, so an envelope
cannot be replayed onto another topic or vehicle. Receivers verify the exact body
bytes first and parse them only afterwards. Signatures are low-S (keys.py): the one
other valid spelling of each, (r, n − s), is refused, so one message has one envelope.
"""

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Final

from . import strict
from .errors import EnvelopeError, SignatureError
from .keys import PrivateKey, PublicKey, b64url, kid_for, sign_raw, verify_raw

MAX_BODY_BYTES: Final = 4096
MAX_ENVELOPE_BYTES: Final = 8192
_KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_FIELDS: Final = frozenset({"v", "alg", "kid", "body", "sig"})
_DECODER: Final = json.JSONDecoder(object_pairs_hook=strict.unique_keys)


def signing_input(topic: str, body: bytes) -> bytes:
    """The exact bytes an envelope's signature covers."""
    return b"ctpl/1\n" + topic.encode("utf-8") + b"\n" + body


@dataclass(frozen=True, slots=True)
class Envelope:
    """A well-formed but not yet verified envelope."""

    kid: str
    body: bytes
    sig: bytes

    def verify(self, topic: str, key: PublicKey) -> bytes:
        """Return the body bytes if ``key`` signed them for ``topic``; else raise SignatureError."""
        verify_raw(key, self.sig, signing_input(topic, self.body))
        return self.body


class Signer:
    """Seals body bytes into envelopes with one private key."""

    __slots__ = ("_key", "kid")

    def __init__(self, key: PrivateKey) -> None:
        self._key = key
        self.kid = kid_for(key.public_key())

    def seal(self, topic: str, body: bytes) -> bytes:
        """The envelope bytes carrying ``body`` signed for ``topic``."""
        if len(body) > MAX_BODY_BYTES:
            raise EnvelopeError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        sig = sign_raw(self._key, signing_input(topic, body))
        return (
            f'{{"v":1,"alg":"ES256","kid":"{self.kid}",'
            f'"body":"{b64url(body)}","sig":"{b64url(sig)}"}}'
        ).encode("ascii")


def _b64decode(text: object, what: str) -> bytes:
    if not isinstance(text, str) or _B64URL_RE.fullmatch(text) is None:
        raise EnvelopeError(f"{what} is not base64url text")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{what} is not valid base64url") from exc
    # Unused trailing bits must be zero, so that one envelope has exactly one spelling.
    if b64url(raw) != text:
        raise EnvelopeError(f"{what} is not canonical base64url")
    return raw


def parse(data: bytes) -> Envelope:
    """Check an envelope's form (size, fields, encodings); raise EnvelopeError if bad."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    # One envelope, one meaning: a repeated key is refused, and so is nesting past
    # strict.MAX_JSON_DEPTH (read before the recursive parser runs).
    if strict.too_deep(data):
        raise EnvelopeError(f"envelope nested deeper than {strict.MAX_JSON_DEPTH}")
    try:
        obj = _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # Invalid, JSON, UTF-8 errors are ValueErrors
        raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.keys() != _FIELDS:
        raise EnvelopeError("envelope must have exactly v, alg, kid, body, sig")
    # Exactly the integer 1: JSON 1.0 and true compare equal to 1 in Python.
    if type(obj["v"]) is not int or obj["v"] != 1:
        raise EnvelopeError("unsupported envelope version")
    if obj["alg"] != "ES256":
        raise EnvelopeError("unsupported algorithm")
    kid = obj["kid"]
    if not isinstance(kid, str) or _KID_RE.fullmatch(kid) is None:
        raise EnvelopeError("malformed kid")
    body = _b64decode(obj["body"], "body")
    if len(body) > MAX_BODY_BYTES:
        raise EnvelopeError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    sig = _b64decode(obj["sig"], "sig")
    return Envelope(kid=kid, body=body, sig=sig)


def open_with(topic: str, data: bytes, keys: dict[str, PublicKey]) -> bytes:
    """Parse and verify an envelope against the keys trusted by kid; return the body bytes."""
    env = parse(data)
    key = keys.get(env.kid)
    if key is None:
        raise SignatureError(f"unknown kid {env.kid!r}", code="unknown_key")
    return env.verify(topic, key)
