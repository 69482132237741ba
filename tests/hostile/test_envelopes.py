"""Forged envelopes on a car's own ``up/status``, published by that car through the real
broker to a real worker: each gets a typed ``error`` on the car's ``down/error``, nothing
stored changes, and the worker still answers a legitimate signed request afterwards."""

import pytest

from agent.protocol import messages, topics
from agent.protocol.keys import load_private_key
from agent.protocol.messages import ERROR_CODES

from .conftest import TallyFactory
from .forgeries import ATTACKS, Forger
from .harness import Cloud

GROUP = "car → cloud envelopes"


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_forged_envelope_gets_a_typed_error_and_changes_nothing(
    cloud: Cloud, tally: TallyFactory, attack: str
) -> None:
    make, expected = ATTACKS[attack]
    row = tally(attack, group=GROUP, expected=f"`error` {expected}")
    vid, other = cloud.vids[0], cloud.vids[1]
    car = await cloud.car(vid)
    assert await cloud.answers(vid)  # the car is known and served
    before = await cloud.stored(vid)
    forger = Forger(vid, car.key, other, load_private_key(cloud.pki.car_dir(other) / "car.key"))

    for forgery in make(forger, cloud.next_seq(vid)):
        cloud.publish(car, "status", forgery.payload)
        heard = await cloud.next_heard(car)
        error = heard.body if heard is not None else None
        refused = (
            heard is not None
            and heard.topic == topics.down(vid, "error")
            and isinstance(error, messages.ErrorReply)
            and error.code == forgery.code
            and error.code in ERROR_CODES
        )
        # Anything but the error (a state, a receipt) is something the forgery obtained;
        # an error naming another car would tell this one about it.
        leaked = heard is not None and (
            not isinstance(error, messages.ErrorReply) or other in error.message
        )
        what = f"{forgery.variant} -> {getattr(error, 'code', heard and heard.topic)}"
        row.record(refused=refused, leaked=leaked, crashed=bool(cloud.crashed()), what=what)

    late = await cloud.late(car)
    if late:
        row.leaked += len(late)
        row.notes.append(f"late messages: {[h.topic for h in late]}")
    assert await cloud.stored(vid) == before, "a refused request changed what is stored"
    if not await cloud.answers(vid):
        row.crashed("the worker no longer answers a signed request")
    row.check()
    assert cloud.crashed() == []
