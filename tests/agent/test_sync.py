"""Table tests for the pure sync state machine: events in, commands out."""

import pytest

from agent.sync import (
    AskStatus,
    AskTimedOut,
    Connected,
    Event,
    IntentQueued,
    LinkLost,
    Phase,
    ReceiptReceived,
    RetryDue,
    SendIntent,
    StateAnswered,
    Stop,
    Subscribe,
    Subscribed,
    Sync,
    SyncError,
)

R1, R2 = "a" * 32, "b" * 32
E1, E2 = "1" * 32, "2" * 32


def live(*queued: IntentQueued) -> Sync:
    """A machine through connect, subscribe and the first answer, with ``queued`` before."""
    machine = Sync()
    for event in queued:
        machine.handle(event)
    machine.handle(Connected(session_present=True))
    machine.handle(Subscribed())
    machine.handle(StateAnswered())
    return machine


@pytest.mark.parametrize("present", [True, False])
def test_every_connect_subscribes_whatever_session_present_says(present: bool) -> None:
    machine = Sync()
    assert machine.handle(Connected(present)) == [Subscribe()]
    assert machine.phase is Phase.SUBSCRIBING and machine.session_present is present


def test_connect_asks_for_state_first_then_drains_urgent_first_in_order() -> None:
    machine = Sync()
    for event in (
        IntentQueued(E1, "vehicle.event"),
        IntentQueued(R1, "renewal.request"),
        IntentQueued(E2, "vehicle.event"),
        IntentQueued(R2, "renewal.request"),
    ):
        assert machine.handle(event) == []  # offline: queued, nothing sent
    assert machine.handle(Connected(False)) == [Subscribe()]
    assert machine.handle(Subscribed()) == [AskStatus()]
    assert machine.phase is Phase.SYNCING
    # Queued while syncing: waits for the drain too.
    assert machine.handle(IntentQueued("3" * 32, "vehicle.event")) == []
    assert machine.handle(StateAnswered()) == [
        SendIntent(R1),
        SendIntent(R2),
        SendIntent(E1),
        SendIntent(E2),
        SendIntent("3" * 32),
    ]
    assert machine.phase is Phase.LIVE


def test_an_unanswered_first_ask_still_drains() -> None:
    machine = Sync()
    machine.handle(IntentQueued(R1, "renewal.request"))
    machine.handle(Connected(True))
    machine.handle(Subscribed())
    assert machine.handle(AskTimedOut()) == [SendIntent(R1)]


def test_live_sends_at_once_and_a_receipt_ends_the_intent() -> None:
    machine = live()
    assert machine.handle(IntentQueued(E1, "vehicle.event")) == [SendIntent(E1)]
    assert machine.awaiting_receipts
    assert machine.handle(ReceiptReceived(E1)) == []
    assert machine.pending == {} and not machine.awaiting_receipts
    assert machine.handle(ReceiptReceived(E1)) == []  # a repeated receipt is harmless


def test_retry_resends_only_what_is_still_without_receipt() -> None:
    machine = live(IntentQueued(E1, "vehicle.event"), IntentQueued(E2, "vehicle.event"))
    machine.handle(ReceiptReceived(E1))
    assert machine.handle(RetryDue()) == [SendIntent(E2)]


def test_link_lost_keeps_every_unreceipted_intent_for_the_next_session() -> None:
    machine = live(IntentQueued(E1, "vehicle.event"), IntentQueued(R1, "renewal.request"))
    machine.handle(ReceiptReceived(R1))
    assert machine.handle(LinkLost()) == []
    assert machine.phase is Phase.OFFLINE and not machine.awaiting_receipts
    assert machine.handle(IntentQueued(E2, "vehicle.event")) == []
    machine.handle(Connected(True))
    machine.handle(Subscribed())
    assert machine.handle(StateAnswered()) == [SendIntent(E1), SendIntent(E2)]


def test_later_answers_in_live_change_nothing() -> None:
    machine = live(IntentQueued(E1, "vehicle.event"))
    assert machine.handle(StateAnswered()) == []
    assert machine.phase is Phase.LIVE


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ([], Subscribed()),
        ([], StateAnswered()),
        ([], AskTimedOut()),
        ([], ReceiptReceived(E1)),
        ([], RetryDue()),
        ([], LinkLost()),
        ([Connected(True)], Connected(True)),
        ([Connected(True)], StateAnswered()),
        ([Connected(True)], RetryDue()),
        ([Connected(True), Subscribed()], Subscribed()),
        ([Connected(True), Subscribed()], RetryDue()),
        ([Connected(True), Subscribed(), StateAnswered()], Connected(False)),
        ([Connected(True), Subscribed(), StateAnswered()], AskTimedOut()),
        ([Connected(True), Subscribed(), StateAnswered()], Subscribed()),
        ([Stop()], Connected(True)),
        ([Stop()], IntentQueued(E1, "vehicle.event")),
        ([Stop()], Stop()),
        ([IntentQueued(E1, "vehicle.event")], IntentQueued(E1, "vehicle.event")),
    ],
    ids=lambda v: (
        type(v).__name__
        if not isinstance(v, list)
        else "+".join(type(e).__name__ for e in v) or "offline"
    ),
)
def test_events_that_make_no_sense_raise(setup: list[Event], event: Event) -> None:
    machine = Sync()
    for e in setup:
        machine.handle(e)
    before = (machine.phase, dict(machine.pending))
    with pytest.raises(SyncError):
        machine.handle(event)
    assert (machine.phase, machine.pending) == before  # a refused event changes nothing


def test_receipts_are_taken_in_every_session_phase() -> None:
    machine = Sync()
    machine.handle(IntentQueued(E1, "vehicle.event"))
    machine.handle(Connected(True))
    assert machine.handle(ReceiptReceived(E1)) == []  # a late receipt from a past session
    machine.handle(Subscribed())
    assert machine.handle(StateAnswered()) == []
