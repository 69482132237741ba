"""The car's private key behind a small seam, so that a secure element can hold it.

Enrollment, renewal and message signing reach the key only through ``KeyStore``:
its public key, ``sign(data) -> r||s``, a CSR over it, and ``save`` to make it the
car's key. ``FileKeyStore`` is the file fallback (PEM, mode 0600 from creation).

The seam for a secure element (ATECC608, a TPM) or a PKCS#11 token: implement the
four methods with the key kept in the chip; ``save`` records which slot or label
holds it; ``csr_pem`` encodes the CertificationRequestInfo itself and has the chip
sign it (cryptography's CSR builder needs a software key); pass a ``KeyFactory``
that makes keys in the chip to enrollment and renewal. The mTLS handshake (``link``)
still loads ``key_file`` through OpenSSL: with a chip, point it at an OpenSSL
provider (pkcs11/tpm2) URI instead; that lies outside this module.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import ConfigError
from .protocol.envelope import MAX_BODY_BYTES, signing_input
from .protocol.errors import EnvelopeError
from .protocol.keys import (
    PrivateKey,
    PublicKey,
    b64url,
    generate_private_key,
    kid_for,
    load_private_key,
    low_s,
    private_pem,
    sign_raw,
)

log = logging.getLogger(__name__)


class KeyStore(Protocol):
    """One P-256 key that signs but need not reveal itself."""

    def public_key(self) -> PublicKey:
        """The public half."""
        ...

    def sign(self, data: bytes) -> bytes:
        """ES256 signature of ``data`` as 64 bytes r||s."""
        ...

    def csr_pem(self) -> bytes:
        """A PEM CSR over this key with an empty subject (the cloud names the car)."""
        ...

    def save(self, path: Path) -> None:
        """Persist the key (or its slot reference) at ``path``, new and durable; never overwrite."""
        ...


KeyFactory = Callable[[], KeyStore]
"""Makes a fresh key: ``FileKeyStore.generate`` or a secure element's own."""


class FileKeyStore:
    """A software P-256 key, kept in a PEM file of mode 0600."""

    __slots__ = ("_key",)

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> Self:
        """A fresh key, in memory until ``save``."""
        return cls(generate_private_key())

    @classmethod
    def load(cls, path: Path) -> Self:
        """The key in ``path``; raise ConfigError. Warn when others may read the file."""
        try:
            key = load_private_key(path)
            mode = path.stat().st_mode
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: cannot load the car's private key: {exc}") from exc
        if mode & 0o077:
            log.warning("%s: the car's private key is readable by others (mode %o)", path, mode)
        return cls(key)

    def public_key(self) -> PublicKey:
        """The public half."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """ES256 signature of ``data`` as 64 bytes r||s."""
        return sign_raw(self._key, data)

    def csr_pem(self) -> bytes:
        """A PEM CSR over this key with an empty subject, signed with SHA-256."""
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        return csr.sign(self._key, hashes.SHA256()).public_bytes(Encoding.PEM)

    def save(self, path: Path) -> None:
        """Write the PEM to a new file, mode 0600 from creation, fsynced; raise OSError."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem(self._key))
            f.flush()
            os.fsync(f.fileno())


class KeySigner:
    """Seals envelopes with a KeyStore's key: the same envelope as ``protocol.envelope.Signer``."""

    __slots__ = ("_keys", "kid")

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        self.kid = kid_for(keys.public_key())

    def seal(self, topic: str, body: bytes) -> bytes:
        """The envelope bytes carrying ``body`` signed for ``topic``."""
        if len(body) > MAX_BODY_BYTES:
            raise EnvelopeError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        # Low-S whatever the key store gives (a secure element may not normalise): the
        # receivers refuse the high-S twin of a signature (malleability).
        sig = low_s(self._keys.sign(signing_input(topic, body)))
        return (
            f'{{"v":1,"alg":"ES256","kid":"{self.kid}",'
            f'"body":"{b64url(body)}","sig":"{b64url(sig)}"}}'
        ).encode("ascii")
