"""Replays of accepted requests, through the real broker to a real worker: the same bytes
again, again after the worker restarts (the seq is durable), and onto another topic."""

from agent.protocol import messages, topics

from .conftest import TallyFactory
from .harness import Cloud, Heard

GROUP = "replay"


def _refused(heard: Heard | None, vid: str, code: str) -> bool:
    return (
        heard is not None
        and heard.topic == topics.down(vid, "error")
        and isinstance(heard.body, messages.ErrorReply)
        and heard.body.code == code
    )


def _leaked(heard: Heard | None) -> bool:
    """A reply other than an error: the replay obtained something (a state, a receipt)."""
    return heard is not None and not isinstance(heard.body, messages.ErrorReply)


async def test_an_accepted_request_replayed_is_refused_before_and_after_a_restart(
    cloud: Cloud, tally: TallyFactory
) -> None:
    again = tally(
        "replay of an accepted request (same bytes)", group=GROUP, expected="`error` replay"
    )
    restarted = tally("replay after a worker restart", group=GROUP, expected="`error` replay")
    vid = cloud.vids[0]
    car = await cloud.car(vid)
    # Two accepted requests: a status request (answered with a state) and an intent
    # (answered with a receipt; recorded once).
    seq, status = cloud.status_request(car)
    cloud.publish(car, "status", status)
    heard = await cloud.next_heard(car)
    assert heard is not None and isinstance(heard.body, messages.PolicyState)
    assert heard.body.reply_to == seq
    _, intent_id, intent = cloud.renewal_request(car, "decline")
    cloud.publish(car, "renewal", intent)
    heard = await cloud.next_heard(car)
    assert heard is not None and isinstance(heard.body, messages.IntentReceipt)
    assert heard.body.intent_id == intent_id
    cloud.drain(car)
    before = await cloud.stored(vid)
    accepted = [("status", status), ("renewal", intent)]

    async def replay_all(row_name: str, times: int) -> None:
        row = again if row_name == "again" else restarted
        for _ in range(times):
            for kind, payload in accepted:
                cloud.publish(car, kind, payload)  # type: ignore[arg-type]
                heard = await cloud.next_heard(car)
                row.record(
                    refused=_refused(heard, vid, "replay"),
                    leaked=_leaked(heard),
                    crashed=bool(cloud.crashed()),
                    what=f"{kind} replayed",
                )
        late = await cloud.late(car)
        row.leaked += len(late)
        if not await cloud.answers(vid):
            row.crashed("the worker no longer answers a signed request")

    await replay_all("again", 5)
    after = await cloud.stored(vid)
    assert (after.intents, after.version) == (before.intents, before.version)

    await cloud.restart_worker()
    await replay_all("restarted", 5)
    final = await cloud.stored(vid)
    assert final.intents == before.intents, "a replayed intent was recorded again"
    again.check()
    restarted.check()
    assert cloud.crashed() == []


async def test_a_signed_request_replayed_onto_another_topic_is_refused(
    cloud: Cloud, tally: TallyFactory
) -> None:
    """The signature covers the topic: the car's own accepted request moved to another of
    its topics, or another car's request published by it, does not verify."""
    row = tally(
        "replay onto another topic or car",
        group=GROUP,
        expected="`error` bad_signature / unknown_key",
    )
    vid, other = cloud.vids[0], cloud.vids[1]
    car, victim = await cloud.car(vid), await cloud.car(other)
    _, status = cloud.status_request(car)
    _, _, intent = cloud.renewal_request(car, "decline")
    _, victims = cloud.status_request(victim)  # never sent by its car: taken off the wire
    cases = [
        ("status request on up/event", "event", status, "bad_signature"),
        ("status request on up/renewal", "renewal", status, "bad_signature"),
        ("renewal intent on up/event", "event", intent, "bad_signature"),
        ("renewal intent on up/status", "status", intent, "bad_signature"),
        ("another car's request on its own topic", "status", victims, "unknown_key"),
    ]
    before = await cloud.stored(vid)
    for what, kind, payload, code in cases:
        cloud.publish(car, kind, payload)  # type: ignore[arg-type]
        heard = await cloud.next_heard(car)
        row.record(
            refused=_refused(heard, vid, code),
            leaked=_leaked(heard),
            crashed=bool(cloud.crashed()),
            what=what,
        )
    row.leaked += len(await cloud.late(car)) + len(await cloud.late(victim))
    assert await cloud.stored(vid) == before
    if not await cloud.answers(vid):
        row.crashed("the worker no longer answers a signed request")
    row.check()
    assert topics.up(vid, "status") != topics.up(other, "status")
