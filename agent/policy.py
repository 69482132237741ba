"""The acceptance rule for a verified policy state against the one held: pure, no I/O.

Accept when nothing is held, when the version is newer, or when the version is the
same and the cloud's seq is newer. The very state already held (a retained copy
delivered again) is a Duplicate, not an attack. Anything else is refused with a reason.
"""

from dataclasses import dataclass
from typing import Literal

from .protocol.messages import PolicyState

RefusalReason = Literal["vid_mismatch", "rollback", "replay"]


@dataclass(frozen=True, slots=True)
class Accept:
    """Store ``state``: it supersedes whatever was held."""

    state: PolicyState


@dataclass(frozen=True, slots=True)
class Duplicate:
    """``state`` is exactly the one held; nothing to store."""

    state: PolicyState


@dataclass(frozen=True, slots=True)
class Refuse:
    """Keep what is held; ``reason`` says why ``state`` is refused."""

    reason: RefusalReason
    detail: str


Decision = Accept | Duplicate | Refuse


def decide(incoming: PolicyState, held: PolicyState | None, vid: str) -> Decision:
    """Whether the agent of ``vid`` holding ``held`` takes the verified ``incoming`` state."""
    if incoming.vid != vid:
        return Refuse("vid_mismatch", f"state is for {incoming.vid}, not {vid}")
    if held is None or incoming.version > held.version:
        return Accept(incoming)
    if incoming.version < held.version:
        return Refuse("rollback", f"version {incoming.version} is older than {held.version}")
    if incoming.seq > held.seq:
        return Accept(incoming)
    if incoming == held:
        return Duplicate(incoming)
    return Refuse(
        "replay", f"version {incoming.version} seq {incoming.seq} is not newer than {held.seq}"
    )
