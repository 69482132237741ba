"""Topic names of wire contract v1: builders and a strict parser.

Topics never hold wildcards, VINs or plates; a vid is opaque.
"""

import re
from dataclasses import dataclass
from typing import Final, Literal

from .errors import TopicError

PREFIX: Final = "ctpl/v1"
VID_RE: Final = re.compile(r"v[0-9a-z]{7,39}")
"""A vid: ``v`` and 7–39 lowercase letters or digits. Never a VIN; never ``ctpl-cloud``."""

UpKind = Literal["status", "renewal", "event"]
DownKind = Literal["policy", "renewal", "error", "receipt"]
UP_KINDS: Final[frozenset[str]] = frozenset({"status", "renewal", "event"})
DOWN_KINDS: Final[frozenset[str]] = frozenset({"policy", "renewal", "error", "receipt"})

CLOUD_SHARED_SUBSCRIPTION: Final = f"$share/cloud/{PREFIX}/+/up/#"
"""What every cloud worker subscribes to, so that any number of them share the load."""


def check_vid(vid: str) -> str:
    """Return ``vid`` if it is a well-formed vehicle id, else raise TopicError."""
    if not isinstance(vid, str) or VID_RE.fullmatch(vid) is None:
        raise TopicError(f"malformed vid {vid[:80]!r}" if isinstance(vid, str) else "vid not str")
    return vid


def up(vid: str, kind: UpKind) -> str:
    """The car → cloud topic of ``kind`` for ``vid``."""
    if kind not in UP_KINDS:
        raise TopicError(f"unknown up kind {kind!r}")
    return f"{PREFIX}/{check_vid(vid)}/up/{kind}"


def down(vid: str, kind: DownKind) -> str:
    """The cloud → car topic of ``kind`` for ``vid``."""
    if kind not in DOWN_KINDS:
        raise TopicError(f"unknown down kind {kind!r}")
    return f"{PREFIX}/{check_vid(vid)}/down/{kind}"


def down_filter(vid: str) -> str:
    """The filter a car subscribes to: all of its own down topics."""
    return f"{PREFIX}/{check_vid(vid)}/down/#"


def presence(vid: str) -> str:
    """The retained presence topic of ``vid`` (``online``/``offline``)."""
    return f"{PREFIX}/{check_vid(vid)}/presence"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed v1 topic."""

    vid: str
    direction: Literal["up", "down", "presence"]
    kind: str


def parse(topic: str) -> Topic:
    """Parse a concrete v1 topic; raise TopicError on wildcards or anything unknown."""
    if not isinstance(topic, str) or len(topic) > 128:
        raise TopicError("topic missing or too long")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise TopicError("wildcards are not allowed in a concrete topic")
    parts = topic.split("/")
    if len(parts) < 3 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"not a {PREFIX} topic")
    vid = check_vid(parts[2])
    rest = parts[3:]
    if rest == ["presence"]:
        return Topic(vid, "presence", "presence")
    if len(rest) == 2 and rest[0] == "up" and rest[1] in UP_KINDS:
        return Topic(vid, "up", rest[1])
    if len(rest) == 2 and rest[0] == "down" and rest[1] in DOWN_KINDS:
        return Topic(vid, "down", rest[1])
    raise TopicError("unknown topic shape")
