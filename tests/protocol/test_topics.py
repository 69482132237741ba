"""Topic builders and the strict parser of wire contract v1."""

from collections.abc import Callable

import pytest

from agent.protocol import topics
from agent.protocol.errors import ProtocolError, TopicError

VID = "vabcdefgh2345678"
MIN_VID = "v" + "1" * 7
MAX_VID = "v" + "z" * 39


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (topics.up(VID, "status"), f"ctpl/v1/{VID}/up/status"),
        (topics.up(VID, "renewal"), f"ctpl/v1/{VID}/up/renewal"),
        (topics.up(VID, "event"), f"ctpl/v1/{VID}/up/event"),
        (topics.down(VID, "policy"), f"ctpl/v1/{VID}/down/policy"),
        (topics.down(VID, "renewal"), f"ctpl/v1/{VID}/down/renewal"),
        (topics.down(VID, "error"), f"ctpl/v1/{VID}/down/error"),
        (topics.presence(VID), f"ctpl/v1/{VID}/presence"),
        (topics.down_filter(VID), f"ctpl/v1/{VID}/down/#"),
        (topics.CLOUD_SHARED_SUBSCRIPTION, "$share/cloud/ctpl/v1/+/up/#"),
    ],
)
def test_builders_spell_the_contract(topic: str, expected: str) -> None:
    assert topic == expected


@pytest.mark.parametrize(
    ("topic", "vid", "direction", "kind"),
    [
        (f"ctpl/v1/{VID}/up/status", VID, "up", "status"),
        (f"ctpl/v1/{VID}/up/renewal", VID, "up", "renewal"),
        (f"ctpl/v1/{VID}/up/event", VID, "up", "event"),
        (f"ctpl/v1/{VID}/down/policy", VID, "down", "policy"),
        (f"ctpl/v1/{VID}/down/renewal", VID, "down", "renewal"),
        (f"ctpl/v1/{VID}/down/error", VID, "down", "error"),
        (f"ctpl/v1/{VID}/presence", VID, "presence", "presence"),
        (f"ctpl/v1/{MIN_VID}/up/status", MIN_VID, "up", "status"),
        (f"ctpl/v1/{MAX_VID}/down/policy", MAX_VID, "down", "policy"),
    ],
)
def test_parse_accepts_every_v1_topic(topic: str, vid: str, direction: str, kind: str) -> None:
    assert topics.parse(topic) == topics.Topic(vid, direction, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(topics.UP_KINDS))
def test_up_builder_and_parser_agree(kind: str) -> None:
    parsed = topics.parse(topics.up(VID, kind))  # type: ignore[arg-type]
    assert (parsed.vid, parsed.direction, parsed.kind) == (VID, "up", kind)


@pytest.mark.parametrize("kind", sorted(topics.DOWN_KINDS))
def test_down_builder_and_parser_agree(kind: str) -> None:
    parsed = topics.parse(topics.down(VID, kind))  # type: ignore[arg-type]
    assert (parsed.vid, parsed.direction, parsed.kind) == (VID, "down", kind)


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("#", id="hash"),
        pytest.param("+", id="plus"),
        pytest.param("ctpl/v1/#", id="hash-after-prefix"),
        pytest.param("ctpl/v1/+/up/status", id="plus-as-vid"),
        pytest.param(f"ctpl/v1/{VID}/up/#", id="hash-as-kind"),
        pytest.param(f"ctpl/v1/{VID}/down/+", id="plus-as-kind"),
        pytest.param(f"ctpl/v1/{VID}+/up/status", id="plus-inside-level"),
        pytest.param(topics.CLOUD_SHARED_SUBSCRIPTION, id="shared-subscription"),
        pytest.param("a/b", id="a-b"),
        pytest.param("", id="empty"),
        pytest.param("/", id="slash"),
        pytest.param("ctpl/v1", id="prefix-only"),
        pytest.param("ctpl/v1/", id="prefix-slash"),
        pytest.param(f"ctpl/v1/{VID}", id="vid-only"),
        pytest.param(f"ctpl/v1/{VID}/", id="vid-slash"),
        pytest.param(f"ctpl/v1/{VID}/up", id="direction-only"),
        pytest.param(f"/ctpl/v1/{VID}/up/status", id="leading-slash"),
        pytest.param(f"ctpl/v1/{VID}/up/status/", id="trailing-slash"),
        pytest.param(f"ctpl/v1/{VID}/up/status/x", id="extra-level"),
        pytest.param(f"ctpl/v1/{VID}/presence/x", id="presence-extra-level"),
        pytest.param(f"ctpl/v1/{VID}//up/status", id="empty-level"),
        pytest.param(f"ctpl/v2/{VID}/up/status", id="other-version"),
        pytest.param(f"CTPL/V1/{VID}/up/status", id="uppercase-prefix"),
        pytest.param(f"ctpl/v1/{VID}/UP/STATUS", id="uppercase-kind"),
        pytest.param(f"ctpl/v1/{VID.upper()}/up/status", id="uppercase-vid"),
        pytest.param(f"ctpl/v1/{VID}/up/policy", id="down-kind-going-up"),
        pytest.param(f"ctpl/v1/{VID}/down/status", id="up-kind-going-down"),
        pytest.param(f"ctpl/v1/{VID}/sideways/status", id="unknown-direction"),
        pytest.param("ctpl/v1/ctpl-cloud/up/status", id="cloud-identity-as-vid"),
        pytest.param("ctpl/v1/LSGCAR00000000001/up/status", id="vin-as-vid"),
        pytest.param("ctpl/v1/LSGCAR00000000001/presence", id="vin-in-presence"),
        pytest.param("ctpl/v1/v123456/up/status", id="vid-too-short"),
        pytest.param(f"ctpl/v1/v{'a' * 40}/up/status", id="vid-too-long"),
        pytest.param(f"ctpl/v1/v{'a' * 200}/up/status", id="very-long-vid"),
        pytest.param("ctpl/v1/" + "a/" * 5000, id="very-long"),
        pytest.param(f"ctpl/v1/{VID}\x00/up/status", id="nul"),
        pytest.param(f"ctpl/v1/{VID} /up/status", id="space"),
        pytest.param(f"ctpl/v1/{VID}é/up/status", id="non-ascii"),
        pytest.param(f"$SYS/ctpl/v1/{VID}/up/status", id="sys-prefix"),
    ],
)
def test_parse_refuses(topic: str) -> None:
    with pytest.raises(TopicError) as info:
        topics.parse(topic)
    assert info.value.code == "bad_topic"


@pytest.mark.parametrize("value", [None, 42, b"ctpl/v1/vabcdefgh/up/status", ["ctpl"]])
def test_parse_refuses_non_text(value: object) -> None:
    with pytest.raises(TopicError):
        topics.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "vid",
    [
        pytest.param("", id="empty"),
        pytest.param("#", id="hash"),
        pytest.param("+", id="plus"),
        pytest.param("v1234567#", id="hash-suffix"),
        pytest.param("v1234567+", id="plus-suffix"),
        pytest.param("a/b", id="a-b"),
        pytest.param("v1234567/up", id="slash"),
        pytest.param("v123456", id="too-short"),
        pytest.param("v" + "a" * 40, id="too-long"),
        pytest.param("v" + "a" * 10_000, id="very-long"),
        pytest.param("V1234567", id="uppercase-v"),
        pytest.param("vABCDEFG", id="uppercase-body"),
        pytest.param("x1234567", id="wrong-first-letter"),
        pytest.param("1234567v", id="digits-first"),
        pytest.param("v123_4567", id="underscore"),
        pytest.param("v123-4567", id="dash"),
        pytest.param(" v1234567", id="leading-space"),
        pytest.param("v1234567\n", id="trailing-newline"),
        pytest.param("ctpl-cloud", id="cloud-identity"),
        pytest.param("LSGCAR00000000001", id="vin"),
        pytest.param("LFV2A21K7A3000001", id="vin-2"),
        pytest.param("VF1AB000012345678", id="vin-starting-with-v"),
        pytest.param("京A12345", id="plate"),
        pytest.param(None, id="none"),
        pytest.param(12345678, id="int"),
    ],
)
def test_every_builder_refuses_a_bad_vid(vid: object) -> None:
    builders: list[Callable[[], object]] = [
        lambda: topics.check_vid(vid),  # type: ignore[arg-type]
        lambda: topics.up(vid, "status"),  # type: ignore[arg-type]
        lambda: topics.down(vid, "policy"),  # type: ignore[arg-type]
        lambda: topics.down_filter(vid),  # type: ignore[arg-type]
        lambda: topics.presence(vid),  # type: ignore[arg-type]
    ]
    for build in builders:
        with pytest.raises(TopicError):
            build()


def test_error_message_for_a_very_long_vid_is_bounded() -> None:
    with pytest.raises(TopicError) as info:
        topics.check_vid("v" + "a" * 100_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("vid", [MIN_VID, MAX_VID, VID, "v0000000", "vqzo2sk4x7m5hn3ab"])
def test_check_vid_accepts_well_formed_vids(vid: str) -> None:
    assert topics.check_vid(vid) == vid


@pytest.mark.parametrize("kind", ["policy", "error", "", "#", "+", "STATUS", "status/x"])
def test_up_refuses_unknown_kinds(kind: str) -> None:
    with pytest.raises(TopicError):
        topics.up(VID, kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["status", "event", "", "#", "+", "POLICY", "policy/x"])
def test_down_refuses_unknown_kinds(kind: str) -> None:
    with pytest.raises(TopicError):
        topics.down(VID, kind)  # type: ignore[arg-type]


def test_topic_error_is_a_protocol_error() -> None:
    assert issubclass(TopicError, ProtocolError)
