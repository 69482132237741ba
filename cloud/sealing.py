"""Personal data at rest: sealed in the store under a key that lives outside it.

VINs, plates and fleet webhook secrets are written to the store sealed with AES-256-GCM
(``s1:`` + base64url of a 96-bit random nonce and the ciphertext with its tag; the kind
of value, ``vin``, ``plate`` or ``webhook_secret``, is the associated data, so a value
moved to another column does not open). A VIN is found by a keyed hash (HMAC-SHA256)
instead: equal VINs give equal hashes, and the hash tells nothing without the key. The
two keys are derived (HKDF-SHA256) from one 32-byte data key, read from, in order:

1. the environment variable ``CTPL_DATA_KEY`` (base64url of the 32 bytes);
2. a key file (``data_key_file`` in the cloud config; for a SQLite store without one,
   ``<database>.key`` beside it), created on first use with 32 random bytes, mode 0600
   in a 0700 directory.

A PostgreSQL store has no default key file: it takes the environment or a configured
file, so that every worker uses the same key. Losing the key loses the sealed values.
"""

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import StoreError

KEY_ENV: Final = "CTPL_DATA_KEY"
PREFIX: Final = "s1:"
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
Kind = Literal["vin", "plate", "webhook_secret"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key_text() -> str:
    """A fresh data key as the environment or a key file holds it."""
    return _b64(secrets.token_bytes(KEY_BYTES))


class Sealer:
    """Seals and opens values of one store, and hashes VINs for look-ups."""

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != KEY_BYTES:
            raise StoreError(f"the data key must be {KEY_BYTES} bytes, not {len(data_key)}")

        def derive(info: bytes) -> bytes:
            return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(data_key)

        self._aead = AESGCM(derive(b"ctpl-cloud/1/seal"))
        self._mac = derive(b"ctpl-cloud/1/lookup")

    @classmethod
    def from_text(cls, text: str, where: str) -> "Sealer":
        """A sealer from a key's text (base64url of 32 bytes); StoreError naming ``where``."""
        try:
            key = _unb64(text.strip())
        except (binascii.Error, ValueError):
            raise StoreError(f"{where}: not base64url") from None
        if len(key) != KEY_BYTES:
            raise StoreError(f"{where}: {len(key)} bytes, not {KEY_BYTES}")
        return cls(key)

    @classmethod
    def load(cls, key_file: Path | None) -> "Sealer":
        """The environment's key, else ``key_file``'s (created if missing); StoreError when
        there is neither."""
        text = os.environ.get(KEY_ENV)
        if text:
            return cls.from_text(text, KEY_ENV)
        if key_file is None:
            raise StoreError(
                f"no data key: set {KEY_ENV} or data_key_file (a PostgreSQL store has no "
                "default key file, so that every worker uses the same key)"
            )
        return cls.from_text(_read_or_create(key_file), str(key_file))

    def seal(self, value: str | None, kind: Kind) -> str | None:
        """``value`` sealed for the store (None stays None)."""
        if value is None:
            return None
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return PREFIX + _b64(nonce + self._aead.encrypt(nonce, value.encode(), kind.encode()))

    def open(self, stored: str | None, kind: Kind) -> str | None:
        """A stored value in clear (None stays None); StoreError if it does not open with
        this key. A value written before sealing (no prefix) is returned as it is."""
        if stored is None or not stored.startswith(PREFIX):
            return stored
        try:
            raw = _unb64(stored[len(PREFIX) :])
            clear = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], kind.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise StoreError(
                f"a stored {kind} does not open with this data key (wrong key?)"
            ) from None
        return clear.decode()

    def lookup(self, vin: str | None) -> str | None:
        """The keyed hash a VIN is found by (hex), None for None."""
        if vin is None:
            return None
        return hmac.new(self._mac, vin.strip().upper().encode(), hashlib.sha256).hexdigest()


def is_sealed(stored: str | None) -> bool:
    """Whether a stored value is sealed (else clear: written before sealing)."""
    return stored is not None and stored.startswith(PREFIX)


def _read_or_create(path: Path) -> str:
    """The key file's text, created with a new key (0600, in a 0700 directory) if missing.

    A new key is written to a temporary file and linked into place, so a process that
    finds the file finds it whole, and two processes starting at once share one key.
    """
    try:
        return path.read_text()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot read the data key {path}: {exc}") from exc
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key_text() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: its key
            os.link(tmp, path)
        return path.read_text()
    except OSError as exc:
        raise StoreError(f"cannot create the data key {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
