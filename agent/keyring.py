"""The car's own signing key and the pinned cloud keys, loaded from PEM files."""

import logging
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError
from .protocol.envelope import Signer
from .protocol.keys import PublicKey, kid_for, load_private_key, load_public_key

log = logging.getLogger(__name__)


def load_signer(key_file: Path) -> Signer:
    """A Signer over the car's P-256 private key in ``key_file``; raise ConfigError."""
    try:
        signer = Signer(load_private_key(key_file))
        mode = key_file.stat().st_mode
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{key_file}: cannot load the car's private key: {exc}") from exc
    if mode & 0o077:
        log.warning("%s: the car's private key is readable by others (mode %o)", key_file, mode)
    return signer


def load_pinned_keys(paths: Iterable[Path]) -> dict[str, PublicKey]:
    """The pinned cloud signing keys by kid, from PEM public keys or certificates."""
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            key = load_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot load a pinned cloud key: {exc}") from exc
        keys[kid_for(key)] = key
    if not keys:
        raise ConfigError("no pinned cloud key: the agent would trust nothing")
    return keys
