"""The signing-key ring: the cloud's message-signing keys, newest last, and the key-set version.

The ring lives in a JSON file beside the keys (``signing-keys.json`` in a dev PKI)::

    {"version": 2,
     "keys": [{"kid": "…", "key_file": "cloud-signing.key", "not_after": "2025-06-08T04:00:00Z"},
              {"kid": "…", "key_file": "cloud-signing-<kid>.key", "not_after": null}]}

``key_file`` is a PEM P-256 private key (mode 0600), relative to the ring's directory
unless absolute. The worker signs with the last key (the newest, which has no cut-off);
the key set lists every key with its ``not_after`` under the ring's ``version``. A single
``signing_key_file`` is a ring of one, version 1. ``roll`` is the pure rule; ``roll_file``
makes the key and writes the ring atomically (temp file, fsync, rename, fsync the folder).
"""

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Final, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.protocol.keys import (
    PrivateKey,
    PublicKey,
    generate_private_key,
    kid_for,
    load_private_key,
    private_pem,
)

from .config import CloudConfig
from .errors import ConfigError
from .pki import write_private

RING_FILE: Final = "signing-keys.json"
MAX_KEYS: Final = 16
"""A key set lists at most this many keys (``cloud.keyset.KeySetBody``)."""
DEFAULT_OVERLAP: Final = timedelta(days=7)


class RingEntry(BaseModel):
    """One signing key of the ring: its kid, private key file, and cut-off (None: in service)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kid: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    key_file: Annotated[str, Field(min_length=1, max_length=4096)]
    not_after: AwareDatetime | None


class SigningRing(BaseModel):
    """The ring file's content: the key-set version and the keys, oldest first."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1, le=2**53)]
    keys: Annotated[tuple[RingEntry, ...], Field(min_length=1, max_length=MAX_KEYS)]

    @model_validator(mode="after")
    def _newest_in_service(self) -> Self:
        if self.keys[-1].not_after is not None:
            raise ValueError("the newest key (the last) signs, so it cannot have a cut-off")
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError("a kid is listed twice")
        return self


def roll(ring: SigningRing, new: RingEntry, now: datetime, overlap: timedelta) -> SigningRing:
    """The ring after rolling to ``new``: cut-offs passed are dropped, the key in service
    ends at ``now + overlap``, and the version grows by one. Pure; ValueError if too many keys."""
    if new.not_after is not None:
        raise ValueError("a new key starts without a cut-off")
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    cut = now + overlap
    kept = [
        k.model_copy(update={"not_after": cut}) if k.not_after is None else k
        for k in ring.keys
        if k.not_after is None or k.not_after > now
    ]
    if len(kept) + 1 > MAX_KEYS:
        raise ValueError(f"the ring would hold more than {MAX_KEYS} keys; wait for cut-offs")
    return SigningRing(version=ring.version + 1, keys=(*kept, new))


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A loaded key of the ring."""

    kid: str
    key: PrivateKey
    not_after: datetime | None


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The loaded ring: what the worker signs with and what the key set lists."""

    version: int
    keys: tuple[SigningKey, ...]

    @property
    def newest(self) -> PrivateKey:
        """The key that signs messages."""
        return self.keys[-1].key

    def listed(self) -> list[tuple[PublicKey, datetime | None]]:
        """Every key's public half and cut-off, oldest first, for the key set."""
        return [(k.key.public_key(), k.not_after) for k in self.keys]


def key_path(ring_file: Path, entry: RingEntry) -> Path:
    """Where ``entry``'s private key file is (relative names: beside the ring file)."""
    path = Path(entry.key_file)
    return path if path.is_absolute() else ring_file.parent / path


def read_ring(path: Path) -> SigningRing:
    """The ring in ``path``; raise ConfigError if it cannot be read or is malformed."""
    try:
        return SigningRing.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ConfigError(path, f"cannot read the signing-key ring: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "ring"
        raise ConfigError(path, f"not a signing-key ring: {where}: {first['msg']}") from None


def _load_key(path: Path) -> PrivateKey:
    try:
        return load_private_key(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"cannot load a signing key: {exc}") from exc


def load_ring(path: Path) -> SigningKeys:
    """The ring in ``path`` with its keys; ConfigError if one is unusable or mislabelled."""
    ring = read_ring(path)
    keys = []
    for entry in ring.keys:
        file = key_path(path, entry)
        key = _load_key(file)
        if kid_for(key.public_key()) != entry.kid:
            raise ConfigError(file, f"this key's kid is not {entry.kid}, as the ring says")
        keys.append(SigningKey(entry.kid, key, entry.not_after))
    return SigningKeys(ring.version, tuple(keys))


def single(key_file: Path) -> SigningKeys:
    """One signing key as a ring of one, version 1."""
    key = _load_key(key_file)
    return SigningKeys(1, (SigningKey(kid_for(key.public_key()), key, None),))


def load_signing_keys(config: CloudConfig) -> SigningKeys:
    """The config's ring: ``signing_keys_file`` if it exists, else ``signing_key_file``."""
    ring_file, key_file = config.signing_keys_file, config.signing_key_file
    if ring_file is not None and (key_file is None or ring_file.exists()):
        return load_ring(ring_file)
    assert key_file is not None  # the config's validator asks for one of the two
    return single(key_file)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_ring(path: Path, ring: SigningRing) -> None:
    """Replace the ring file atomically and durably: a crash leaves the old ring or the new."""
    data = ring.model_dump_json(indent=1).encode() + b"\n"
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class Rolled:
    """What a roll did: the new ring, the new key's entry and file, the entries dropped."""

    ring: SigningRing
    new: RingEntry
    new_file: Path
    dropped: tuple[RingEntry, ...]


def roll_file(
    ring_file: Path,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
    *,
    first_key_file: Path | None = None,
) -> Rolled:
    """Make a new P-256 key (0600) beside ``ring_file`` and roll the ring to it.

    With no ring file yet, ``first_key_file`` is the key in service (a ring of one,
    version 1). Raise ConfigError when neither is usable or the roll is not allowed.
    """
    if ring_file.exists():
        ring = read_ring(ring_file)
        load_ring(ring_file)  # every listed key must load before the ring is rewritten
    elif first_key_file is not None:
        first = single(first_key_file)
        name = os.path.relpath(first_key_file, ring_file.parent)
        ring = SigningRing(
            version=1, keys=(RingEntry(kid=first.keys[0].kid, key_file=name, not_after=None),)
        )
    else:
        raise ConfigError(ring_file, "no signing-key ring here, and no key in service to start one")
    key = generate_private_key()
    kid = kid_for(key.public_key())
    new_file = ring_file.parent / f"cloud-signing-{kid}.key"
    new = RingEntry(kid=kid, key_file=new_file.name, not_after=None)
    try:
        rolled = roll(ring, new, now, overlap)
    except ValueError as exc:
        raise ConfigError(ring_file, str(exc)) from None
    write_private(new_file, private_pem(key))
    _fsync_file(new_file)  # the key is durable before the ring names it
    write_ring(ring_file, rolled)
    dropped = tuple(k for k in ring.keys if k.kid not in {e.kid for e in rolled.keys})
    return Rolled(rolled, new, new_file, dropped)


def describe(rolled: Rolled) -> Sequence[str]:
    """Lines for the operator about a roll."""
    lines = [f"new signing key {rolled.new.kid} in {rolled.new_file}"]
    lines += [
        f"key {k.kid} signs no more; it verifies until {k.not_after.isoformat()}"
        for k in rolled.ring.keys
        if k.not_after is not None
    ]
    lines += [f"dropped {k.kid} (past its cut-off); {k.key_file} can go" for k in rolled.dropped]
    lines.append(f"key set version {rolled.ring.version}: restart ctpl-cloud serve to use it")
    return lines
