"""Enrollment and renewal rules (docs/enrollment.md), pure: requests built, answers judged.

The cloud's ``Enrollment`` answer is trusted only after it verifies: the certificate
is for our key, its CN is the returned vid (well formed), it is directly issued by a
CA certificate of the returned chain, and the key set verifies against the pinned root.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from . import keyset
from .errors import CloudRefusedError, KeySetError, MalformedAnswerError, VerificationError
from .protocol import strict, topics
from .protocol.errors import TopicError
from .protocol.keys import PublicKey
from .protocol.strict import Length, Range

ENROLL_PATH: Final = "/v1/enroll"
RENEW_PATH: Final = "/v1/renew"
RENEWAL_TYPE: Final = "cert.renewal"
MAX_ANSWER_BYTES: Final = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class EnrollmentAnswer(strict.Record):
    """The cloud's ``Enrollment`` object; fields the agent does not use are ignored."""

    # Ignored, not refused: an HTTP answer may grow, and everything used is verified.
    ignore_unknown: ClassVar[bool] = True

    vid: Annotated[str, Length(max=64)]
    certificate_pem: Annotated[str, Length(min=1, max=16384)]
    ca_chain_pem: Annotated[str, Length(min=1, max=32768)]
    not_after: datetime
    broker_host: Annotated[str, Length(min=1, max=253)]
    broker_port: Annotated[int, Range(ge=1, le=65535)]
    keyset: Annotated[str, Length(min=1, max=16384)]


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified enrollment or renewal: what the car installs."""

    vid: str
    certificate_pem: bytes
    ca_chain_pem: bytes
    not_before: datetime
    not_after: datetime
    broker_host: str
    broker_port: int
    keyset: keyset.KeySet | None
    """The verified key set, or None when no root key was given to check it against."""


def check_cloud_url(url: str) -> str:
    """``url`` without a trailing slash if it is an https URL with a host; else ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"cloud URL must be https://host[:port][/path], not {url[:80]!r}")
    return url.rstrip("/")


def enroll_request(
    claim_token: str, csr_pem: bytes, *, vin: str | None = None, fleet_id: str | None = None
) -> dict[str, str]:
    """The JSON body of ``POST /v1/enroll``; optional fields only when given."""
    body = {"claim_token": claim_token, "csr_pem": csr_pem.decode("ascii")}
    if vin is not None:
        body["vin"] = vin
    if fleet_id is not None:
        body["fleet_id"] = fleet_id
    return body


def renew_topic(vid: str) -> str:
    """The topic a renewal envelope is signed for."""
    return f"{topics.PREFIX}/{topics.check_vid(vid)}/renew"


def renewal_body(vid: str, seq: int, csr_pem: bytes) -> bytes:
    """The ``cert.renewal`` body bytes to seal with the current key."""
    body = {"type": RENEWAL_TYPE, "vid": vid, "seq": seq, "csr_pem": csr_pem.decode("ascii")}
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def needs_renewal(cert_not_before: datetime, cert_not_after: datetime, now: datetime) -> bool:
    """True when less than a third of the certificate's life is left at ``now``."""
    life = cert_not_after - cert_not_before
    return life <= timedelta(0) or cert_not_after - now < life / 3


def refusal(status: int, content: bytes) -> CloudRefusedError:
    """The error for an error answer, with the ``{"error": {"code", "message"}}`` code if any."""
    try:
        error = json.loads(content)["error"]
        code = error["code"]
        if not isinstance(code, str) or not code:
            raise TypeError("no code")
        message = str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = f"http_{status}", content[:120].decode("utf-8", "replace")
    # One line, whatever the server sent.
    return CloudRefusedError(status, code[:64], " ".join(message.split())[:256] or "no message")


def _answer(content: bytes) -> EnrollmentAnswer:
    if len(content) > MAX_ANSWER_BYTES:
        raise MalformedAnswerError(f"answer of {len(content)} bytes is too large")
    try:
        return strict.build(EnrollmentAnswer, strict.loads(content))
    except strict.Invalid as exc:
        raise MalformedAnswerError(f"malformed answer: {exc}") from None


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _check_chain(cert: x509.Certificate, chain: list[x509.Certificate]) -> None:
    for ca in chain:
        if ca.subject != cert.issuer:
            continue
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            continue
        if not constraints.ca:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise VerificationError("certificate is not issued by a CA of the returned chain")


def verify_answer(
    content: bytes,
    public_key: PublicKey,
    root: PublicKey | None,
    *,
    expected_vid: str | None = None,
) -> Identity:
    """The Identity in an ``Enrollment`` answer, verified for ``public_key``.

    Raise MalformedAnswerError or VerificationError. The key set must verify against
    ``root``; whether it is newer than a held one is the caller's to judge.
    """
    answer = _answer(content)
    try:
        cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode("ascii"))
        chain = x509.load_pem_x509_certificates(answer.ca_chain_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise MalformedAnswerError(f"malformed certificate or CA chain: {exc}") from None
    if _spki(cert.public_key()) != _spki(public_key):
        raise VerificationError("the certificate is not for this gateway's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != answer.vid:
        raise VerificationError("the certificate's CN is not the returned vid")
    try:
        topics.check_vid(answer.vid)
    except TopicError as exc:
        raise VerificationError(f"returned vid: {exc}") from None
    if expected_vid is not None and answer.vid != expected_vid:
        raise VerificationError(f"renewed certificate is for {answer.vid}, not {expected_vid}")
    _check_chain(cert, chain)
    verified = None
    if root is not None:
        try:
            verified = keyset.verify(answer.keyset.encode("utf-8"), root)
        except KeySetError as exc:
            raise VerificationError(str(exc)) from exc
    return Identity(
        vid=answer.vid,
        certificate_pem=answer.certificate_pem.encode("ascii"),
        ca_chain_pem=answer.ca_chain_pem.encode("ascii"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        broker_host=answer.broker_host,
        broker_port=answer.broker_port,
        keyset=verified,
    )
