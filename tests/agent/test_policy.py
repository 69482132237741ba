"""The acceptance rule for a verified policy state, as tables."""

from typing import Any

import pytest

from agent.policy import Accept, Duplicate, Refuse, decide

VID = "vaaaaaaaaaaaaaaa1"
OTHER = "vbbbbbbbbbbbbbbb2"


@pytest.mark.parametrize(
    ("held", "incoming", "expected"),
    [
        (None, (1, 1), "accept"),
        (None, (7, 99), "accept"),
        ((1, 5), (2, 1), "accept"),  # newer version wins whatever its seq
        ((1, 5), (2, 6), "accept"),
        ((3, 5), (3, 6), "accept"),  # same version, newer seq: a fresher copy
        ((3, 5), (2, 9), "rollback"),
        ((3, 5), (1, 1), "rollback"),
        ((3, 5), (3, 4), "replay"),
        ((3, 5), (3, 5), "replay"),  # same numbers, different content
    ],
)
def test_rule(
    make_state: Any, held: tuple[int, int] | None, incoming: tuple[int, int], expected: str
) -> None:
    held_state = None if held is None else make_state(VID, version=held[0], seq=held[1])
    state = make_state(VID, version=incoming[0], seq=incoming[1], status="expiring")
    decision = decide(state, held_state, VID)
    if expected == "accept":
        assert decision == Accept(state)
    else:
        assert isinstance(decision, Refuse) and decision.reason == expected


def test_the_very_state_held_is_a_duplicate(make_state: Any) -> None:
    state = make_state(VID, version=3, seq=5)
    assert decide(make_state(VID, version=3, seq=5), state, VID) == Duplicate(state)


@pytest.mark.parametrize("held", [None, (1, 1)])
def test_state_for_another_vid_is_refused(make_state: Any, held: tuple[int, int] | None) -> None:
    held_state = None if held is None else make_state(VID, version=held[0], seq=held[1])
    decision = decide(make_state(OTHER, version=9, seq=9), held_state, VID)
    assert isinstance(decision, Refuse) and decision.reason == "vid_mismatch"


def test_refusal_explains_itself(make_state: Any) -> None:
    decision = decide(make_state(VID, version=1, seq=1), make_state(VID, version=2, seq=1), VID)
    assert decision == Refuse("rollback", "version 1 is older than 2")
