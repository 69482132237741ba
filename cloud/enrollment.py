"""Enrollment's pure core: tokens, request checks, and the HTTP API's models.

The checks follow docs/enrollment.md in order; each failure raises ``Refused`` with
its stable code. Nothing here does I/O; tokens and ids come from ``secrets``.
"""

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.protocol.envelope import MAX_ENVELOPE_BYTES
from agent.protocol.keys import PublicKey, b64url
from agent.protocol.topics import PREFIX, VID_RE

from .errors import Refused
from .pki import new_vid

Vid = Annotated[str, Field(pattern=f"^{VID_RE.pattern}$")]
Seq = Annotated[int, Field(ge=1, le=2**53)]

MAX_REQUEST_BYTES: Final = 16 * 1024
OPERATOR_PREFIX: Final = "op_"
CLAIM_PREFIX: Final = "cl_"
TOKEN_BYTES: Final = 32
FLEET_ID_RE: Final = re.compile(r"f[a-z2-7]{16}")
VIN_RE: Final = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"
MAX_CSR_CHARS: Final = 8192


# ---- tokens and ids -----------------------------------------------------------


def new_token(prefix: str) -> str:
    """A fresh bearer token: ``prefix`` and 32 random bytes in base64url."""
    return prefix + b64url(secrets.token_bytes(TOKEN_BYTES))


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value, None unless well formed."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token


def token_digest(token: str) -> bytes:
    """SHA-256 of a token: the only form the store keeps."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def digests_match(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two digests."""
    return hmac.compare_digest(a, b)


def new_fleet_id() -> str:
    """A fresh opaque fleet id: ``f`` and 16 random base32 characters."""
    return "f" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(16))


def assign_vid() -> str:
    """A fresh vid for an enrolling vehicle: random, never derived from its VIN."""
    return new_vid()


def renew_topic(vid: str) -> str:
    """The topic a renewal envelope is signed for."""
    return f"{PREFIX}/{vid}/renew"


# ---- what the store returns -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetRow:
    """A fleet as stored."""

    fleet_id: str
    name: str
    operator_digest: bytes


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A claim token as stored (by digest)."""

    fleet_id: str
    expires_at: datetime
    used_at: datetime | None


@dataclass(frozen=True, slots=True)
class VehicleRow:
    """A vehicle's enrollment state as stored."""

    vid: str
    fleet_id: str | None
    revoked_at: datetime | None
    renew_seq: int
    vin: str | None = None


# ---- request and response bodies -------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class FleetCreate(_Request):
    """POST /v1/fleets."""

    name: Annotated[str, Field(min_length=1, max_length=64)]


class FleetCreated(BaseModel):
    """Answer to POST /v1/fleets; the operator token is shown this once."""

    fleet_id: str
    operator_token: str


class ClaimsCreate(_Request):
    """POST /v1/fleets/{fleet_id}/claims."""

    count: Annotated[int, Field(ge=1, le=1000)]
    expires_in_s: Annotated[int, Field(ge=60, le=7_776_000)]


class ClaimsCreated(BaseModel):
    """Answer to POST /v1/fleets/{fleet_id}/claims."""

    claim_tokens: list[str]
    expires_at: AwareDatetime


class EnrollRequest(_Request):
    """POST /v1/enroll; the VIN's form is checked after the claim and CSR, in contract order."""

    claim_token: Annotated[str, Field(min_length=1, max_length=256)]
    csr_pem: Annotated[str, Field(min_length=1, max_length=MAX_CSR_CHARS)]
    vin: Annotated[str, Field(max_length=64)] | None = None
    fleet_id: Annotated[str, Field(max_length=64)] | None = None


class Enrollment(BaseModel):
    """Answer to enroll and renew."""

    vid: str
    certificate_pem: str
    ca_chain_pem: str
    not_after: AwareDatetime
    broker_host: str
    broker_port: int
    keyset: str


class RenewRequest(_Request):
    """POST /v1/renew: the envelope as sealed (a JSON string), or as a JSON object."""

    envelope: Annotated[str, Field(max_length=MAX_ENVELOPE_BYTES)] | dict[str, Any]


class RenewalBody(_Request):
    """The signed body of a renewal (verified bytes, parsed strictly)."""

    type: Literal["cert.renewal"]
    vid: Vid
    seq: Seq
    csr_pem: Annotated[str, Field(min_length=1, max_length=MAX_CSR_CHARS)]


class RevokeRequest(_Request):
    """POST /v1/vehicles/{vid}/revoke: an empty object."""


class Revoked(BaseModel):
    """Answer to a revocation."""

    vid: str
    revoked_at: AwareDatetime


class KeySetAnswer(BaseModel):
    """Answer to GET /v1/keyset."""

    keyset: str


# ---- checks, in contract order ------------------------------------------------------


def check_claim(claim: ClaimRow | None, now: datetime, fleet_id: str | None) -> ClaimRow:
    """The claim if it can enroll now (into ``fleet_id`` when given); else Refused."""
    if claim is None:
        raise Refused(404, "claim_unknown", "no such claim token")
    if claim.used_at is not None:
        raise Refused(409, "claim_used", "this claim token was already used")
    if claim.expires_at <= now:
        raise Refused(410, "claim_expired", "this claim token has expired")
    if fleet_id is not None and fleet_id != claim.fleet_id:
        raise Refused(403, "claim_wrong_fleet", "this claim token belongs to another fleet")
    return claim


def check_csr(pem: str) -> PublicKey:
    """The P-256 public key of a signed CSR with an empty subject; else Refused."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode("utf-8", "surrogatepass"))
        signed = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Refused(422, "csr_invalid", "csr_pem is not a PEM certificate request") from None
    if not signed:
        raise Refused(422, "csr_invalid", "the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise Refused(422, "csr_key_type", "the CSR's key must be EC P-256")
    if len(csr.subject) != 0:
        raise Refused(422, "csr_subject_not_allowed", "the CSR's subject must be empty")
    return key


def check_vin(vin: str | None) -> str | None:
    """``vin`` if absent or 17 characters of the VIN alphabet; else Refused (never echoed)."""
    if vin is not None and VIN_RE.fullmatch(vin) is None:
        raise Refused(422, "vin_invalid", "vin must be 17 characters of the VIN alphabet")
    return vin


def check_vid(vid: str) -> str:
    """``vid`` if well formed; else Refused."""
    if VID_RE.fullmatch(vid) is None:
        raise Refused(422, "vid_invalid", "not a well-formed vehicle id")
    return vid


def check_fleet_id(fleet_id: str) -> str:
    """``fleet_id`` if well formed; else Refused."""
    if FLEET_ID_RE.fullmatch(fleet_id) is None:
        raise Refused(422, "fleet_id_invalid", "not a well-formed fleet id")
    return fleet_id


def envelope_bytes(envelope: str | dict[str, Any]) -> bytes:
    """The envelope's bytes: as sent when a string, compact JSON when an object."""
    if isinstance(envelope, str):
        return envelope.encode("utf-8", "surrogatepass")
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8", "surrogatepass")


def claimed_vid(body: bytes) -> str:
    """The vid a not yet verified renewal body names, to find the key to verify it with."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(422, "bad_body", "the envelope's body is not JSON") from None
    vid = obj.get("vid") if isinstance(obj, dict) else None
    if not isinstance(vid, str):
        raise Refused(422, "bad_body", "the envelope's body names no vid")
    return check_vid(vid)


def check_renewal(body: bytes, vehicle: VehicleRow) -> RenewalBody:
    """The verified renewal body of ``vehicle`` if strict-valid and its seq grows; else Refused."""
    if vehicle.revoked_at is not None:
        raise Refused(403, "revoked", "this vehicle is revoked")
    try:
        renewal = RenewalBody.model_validate_json(body)
    except ValidationError as exc:
        raise Refused(422, "bad_body", first_error(exc)) from None
    if renewal.vid != vehicle.vid:
        raise Refused(422, "vid_mismatch", "the body's vid is not the signer's")
    if renewal.seq <= vehicle.renew_seq:
        raise Refused(409, "replay", f"seq {renewal.seq} is not above {vehicle.renew_seq}")
    return renewal


def first_error(exc: ValidationError) -> str:
    """A short description of a validation error's first problem, never echoing input."""
    err = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where or 'body'}: {err.get('msg', 'invalid')}"[:256]
