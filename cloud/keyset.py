"""The key set: the cloud's message-signing keys, in an envelope signed by the root key.

Body: ``{"type":"keyset","version","issued_at","keys":[{"kid","public_key_pem","not_after"}]}``,
compact JSON with keys in that order, sealed on topic ``ctpl/v1/keyset``. A gateway pins
the root public key and accepts a key set only with a higher ``version``. Pure: no I/O.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.protocol.envelope import Signer, open_with
from agent.protocol.errors import BodyError
from agent.protocol.keys import PublicKey, kid_for, public_pem
from agent.protocol.topics import PREFIX

KEYSET_TOPIC: Final = f"{PREFIX}/keyset"


class KeyEntry(BaseModel):
    """One message-signing key; ``not_after`` is the cut-off of a key being rolled out."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    kid: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    public_key_pem: Annotated[str, Field(max_length=1024)]
    not_after: AwareDatetime | None


class KeySetBody(BaseModel):
    """The signed body of a key set."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    type: Literal["keyset"] = "keyset"
    version: Annotated[int, Field(ge=1, le=2**53)]
    issued_at: AwareDatetime
    keys: Annotated[tuple[KeyEntry, ...], Field(min_length=1, max_length=16)]


def build_keyset(
    root: Signer,
    keys: Sequence[tuple[PublicKey, datetime | None]],
    *,
    version: int,
    issued_at: datetime,
) -> str:
    """The key set envelope (text) listing ``keys`` (key, cut-off), signed by ``root``."""
    body = KeySetBody(
        version=version,
        issued_at=issued_at,
        keys=tuple(
            KeyEntry(kid=kid_for(k), public_key_pem=public_pem(k).decode("ascii"), not_after=cut)
            for k, cut in keys
        ),
    )
    data = body.__pydantic_serializer__.to_json(body)
    return root.seal(KEYSET_TOPIC, data).decode("ascii")


def open_keyset(sealed: bytes, root_public: PublicKey) -> KeySetBody:
    """The body of a key set envelope signed by ``root_public``; raise ProtocolError if not."""
    data = open_with(KEYSET_TOPIC, sealed, {kid_for(root_public): root_public})
    try:
        return KeySetBody.model_validate_json(data)
    except ValidationError as exc:
        raise BodyError(f"not a key set body: {exc.error_count()} errors") from None
