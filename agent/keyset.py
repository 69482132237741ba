"""Key sets: the cloud's message-signing keys, signed by the pinned root key. Pure.

A key set is an envelope on topic ``ctpl/v1/keyset`` signed by the root key, whose body
is ``{"type": "keyset", "version", "issued_at", "keys": [{"kid", "public_key_pem",
"not_after"}]}`` (docs/enrollment.md). It is accepted only if it verifies against the
root key and its ``version`` is higher than the one held; a key is usable until its
``not_after`` (none: no cut-off), which is how a rolled signing key is retired. The
cut-off is judged by the gateway's own clock (trusted time comes with issue 4).

A running agent fetches ``GET /v1/keyset`` when a cloud message names a kid it does not
know, at most once per ``min_interval_s`` (``fetch_delay``).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, ClassVar, Final, Literal

from .errors import KeySetError
from .protocol import envelope, strict
from .protocol.errors import ProtocolError
from .protocol.keys import PublicKey, kid_for, load_public_key
from .protocol.strict import Length, Pattern, Range

TOPIC: Final = "ctpl/v1/keyset"
PATH: Final = "/v1/keyset"
MAX_KEYS: Final = 16
MAX_ANSWER_BYTES: Final = 32 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyEntry(strict.Record):
    """One cloud signing key and its cut-off."""

    kid: Annotated[str, Pattern(r"[A-Za-z0-9_-]{1,64}")]
    public_key_pem: Annotated[str, Length(min=1, max=1024)]
    not_after: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySetAnswer(strict.Record):
    """The answer to ``GET /v1/keyset``; other fields are ignored."""

    ignore_unknown: ClassVar[bool] = True

    keyset: Annotated[str, Length(min=1, max=16384)]


@dataclass(frozen=True, kw_only=True, slots=True)
class KeySetBody(strict.Record):
    """The body of a key set envelope."""

    type: Literal["keyset"]
    version: Annotated[int, Range(ge=1, le=2**53)]
    issued_at: datetime
    keys: Annotated[tuple[KeyEntry, ...], Length(min=1, max=MAX_KEYS)]


@dataclass(frozen=True, slots=True)
class KeySet:
    """A key set that verified against the root key: the exact envelope, body and keys."""

    envelope: bytes
    body: KeySetBody
    keys: dict[str, tuple[PublicKey, datetime | None]]

    @property
    def version(self) -> int:
        """The key set's version."""
        return self.body.version

    def usable(self, now: datetime) -> dict[str, PublicKey]:
        """The keys by kid whose cut-off is still ahead at ``now``."""
        return {
            kid: key
            for kid, (key, not_after) in self.keys.items()
            if not_after is None or not_after > now
        }


def verify(data: bytes, root: PublicKey, *, held_version: int | None = None) -> KeySet:
    """The key set in envelope ``data`` if ``root`` signed it and it is newer than held.

    Raise KeySetError with ``reason``: the envelope's code (``bad_envelope``,
    ``unknown_key``, ``bad_signature``), ``bad_body``, ``bad_key`` or ``rollback``.
    """
    try:
        body_bytes = envelope.open_with(TOPIC, data, {kid_for(root): root})
    except ProtocolError as exc:
        raise KeySetError(f"key set does not verify: {exc}", reason=exc.code) from exc
    try:
        body = strict.build(KeySetBody, strict.loads(body_bytes))
    except strict.Invalid as exc:
        raise KeySetError(f"key set body: {exc}", reason="bad_body") from None
    if held_version is not None and body.version <= held_version:
        raise KeySetError(
            f"key set version {body.version} is not newer than {held_version}", reason="rollback"
        )
    keys: dict[str, tuple[PublicKey, datetime | None]] = {}
    for entry in body.keys:
        try:
            key = load_public_key(entry.public_key_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise KeySetError(f"key {entry.kid}: {exc}", reason="bad_key") from None
        if kid_for(key) != entry.kid:
            raise KeySetError(f"key {entry.kid}: kid does not match the key", reason="bad_key")
        if entry.kid in keys:
            raise KeySetError(f"key {entry.kid} listed twice", reason="bad_key")
        keys[entry.kid] = (key, entry.not_after)
    return KeySet(envelope=data, body=body, keys=keys)


def from_answer(content: bytes) -> bytes:
    """The key set envelope in a ``GET /v1/keyset`` answer; KeySetError ``bad_answer`` if none."""
    if len(content) > MAX_ANSWER_BYTES:
        raise KeySetError(f"answer over {MAX_ANSWER_BYTES} bytes", reason="bad_answer")
    try:
        answer = strict.build(KeySetAnswer, strict.loads(content))
    except strict.Invalid:
        raise KeySetError("the answer holds no key set", reason="bad_answer") from None
    return answer.keyset.encode("utf-8")


def fetch_delay(last_fetch_at: float | None, now: float, min_interval_s: float) -> float:
    """Seconds to wait before the next key set fetch: 0 when none was made in the last
    ``min_interval_s`` (monotonic seconds), else the rest of that interval."""
    if last_fetch_at is None or now < last_fetch_at:
        return 0.0
    return max(0.0, last_fetch_at + min_interval_s - now)
