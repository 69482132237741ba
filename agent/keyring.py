"""The keys the agent trusts: pinned cloud keys, the root key, and the held key set.

The car's own key is loaded through ``keystore``.
"""

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from . import keyset
from .errors import ConfigError, KeySetError
from .protocol.keys import PublicKey, kid_for, load_public_key


def load_root_key(path: Path) -> PublicKey:
    """The pinned root public key that signs key sets; raise ConfigError."""
    try:
        return load_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load the pinned root key: {exc}") from exc


def load_keyset(path: Path, root: PublicKey) -> keyset.KeySet | None:
    """The key set held in ``path`` if it verifies against ``root``; None if there is none.

    Raise ConfigError when the file cannot be read or does not verify.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key set: {exc}") from exc
    try:
        return keyset.verify(data, root)
    except KeySetError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def trusted_keys(
    pinned: dict[str, PublicKey], held: keyset.KeySet | None, now: datetime
) -> dict[str, PublicKey]:
    """The pinned keys plus the held key set's keys whose cut-off is after ``now``. Pure."""
    return pinned if held is None else pinned | held.usable(now)


def load_trust(
    cloud_keys: Iterable[Path], keyset_file: Path | None, root_key: Path | None, now: datetime
) -> tuple[dict[str, PublicKey], keyset.KeySet | None]:
    """The pinned cloud keys and the held key set; ConfigError if none is usable at ``now``."""
    pinned = load_pinned_keys(cloud_keys, allow_none=True)
    held = None
    if keyset_file is not None and root_key is not None:
        held = load_keyset(keyset_file, load_root_key(root_key))
    if not trusted_keys(pinned, held, now):
        raise ConfigError("no usable pinned cloud key: the agent would trust nothing")
    return pinned, held


def load_trusted_keys(
    cloud_keys: Iterable[Path], keyset_file: Path | None, root_key: Path | None, now: datetime
) -> dict[str, PublicKey]:
    """The pinned cloud keys plus the key set's keys usable at ``now``; raise ConfigError."""
    return trusted_keys(*load_trust(cloud_keys, keyset_file, root_key, now), now)


def load_pinned_keys(paths: Iterable[Path], *, allow_none: bool = False) -> dict[str, PublicKey]:
    """The pinned cloud signing keys by kid, from PEM public keys or certificates."""
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            key = load_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot load a pinned cloud key: {exc}") from exc
        keys[kid_for(key)] = key
    if not keys and not allow_none:
        raise ConfigError("no pinned cloud key: the agent would trust nothing")
    return keys
