"""P-256 keys: loading, key ids, and the raw r||s signature form, always low-S.

ECDSA is malleable: if (r, s) verifies, so does (r, n − s). Signatures here are made and
accepted only in low-S form (s ≤ n/2, as Bitcoin's BIP 62/146 and Ethereum's EIP-2 do),
so that a valid message has exactly one valid signature.
"""

import base64
import hashlib
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .errors import SignatureError

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_SCALAR_BYTES = 32
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""n, the order of P-256's base point (SEC 2, secp256r1)."""
_HALF_ORDER: Final = P256_ORDER // 2


def b64url(data: bytes) -> str:
    """Unpadded base64url text of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def kid_for(key: PublicKey) -> str:
    """The key id of ``key``: base64url of the first 16 bytes of SHA-256(SPKI DER)."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64url(hashlib.sha256(spki).digest()[:16])


def generate_private_key() -> PrivateKey:
    """A fresh P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM P-256 private key; raise ValueError for anything else."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not a P-256 private key")
    return key


def load_public_key(pem: bytes) -> PublicKey:
    """Load a PEM P-256 public key, or the public key of a PEM certificate."""
    key: object
    if b"BEGIN CERTIFICATE" in pem:
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 public key")
    return key


def public_pem(key: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo of ``key``."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (store it with mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw(r: int, s: int) -> bytes:
    return r.to_bytes(_SCALAR_BYTES, "big") + s.to_bytes(_SCALAR_BYTES, "big")


def low_s(signature: bytes) -> bytes:
    """The low-S form of a 64-byte r||s signature (itself when s ≤ n/2): for a signer,
    such as a secure element, that does not normalise its signatures."""
    r = int.from_bytes(signature[:_SCALAR_BYTES], "big")
    s = int.from_bytes(signature[_SCALAR_BYTES:], "big")
    return signature if s <= _HALF_ORDER else _raw(r, P256_ORDER - s)


def sign_raw(key: PrivateKey, message: bytes) -> bytes:
    """ES256 signature of ``message`` as 64 bytes r||s, with s ≤ n/2 (low-S)."""
    r, s = decode_dss_signature(key.sign(message, _ECDSA_SHA256))
    return _raw(r, s if s <= _HALF_ORDER else P256_ORDER - s)


def verify_raw(key: PublicKey, signature: bytes, message: bytes) -> None:
    """Raise SignatureError unless ``signature`` (r||s, low-S) is ``key``'s ES256 over
    ``message``."""
    if len(signature) != 2 * _SCALAR_BYTES:
        raise SignatureError("signature is not 64 bytes")
    r = int.from_bytes(signature[:_SCALAR_BYTES], "big")
    s = int.from_bytes(signature[_SCALAR_BYTES:], "big")
    if s > _HALF_ORDER:
        # (r, n − s) would verify too: only one spelling of a signature is accepted.
        raise SignatureError("signature is not in low-S form (s > n/2)")
    try:
        key.verify(encode_dss_signature(r, s), message, _ECDSA_SHA256)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc
