"""The head-unit model with a real agent, a simulated vehicle bus and the real broker.

The cloud is the FakeCloud (it signs as the cloud); it answers the agent's first status
request, so trusted time is FRESH and the state's dates decide what is shown.
"""

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.head_unit import AnswerError
from agent.protocol import envelope, messages, topics
from agent.protocol.keys import kid_for, load_public_key
from agent.protocol.messages import RenewalRequest, VehicleEvent
from agent.protocol.vin import vin_digest
from agent.reminders import Quiet
from agent.runner import Agent
from agent.vehicle import SimulatedBus
from cloud.pki import DevPki

from .conftest import NOW, FakeCloud, running

VIN = "LSGCAR00000000042"
END = (NOW + timedelta(hours=8)).date() + timedelta(days=10)
"""Ten days after NOW's China date: stage d15."""


async def verified(agent: Agent, cloud: FakeCloud, make_state: Any, **changes: Any) -> None:
    """Answer the agent's first status request with a state ending on END."""
    vid = agent.vid
    await cloud.receive(topics.up(vid, "status"))
    values: dict[str, Any] = {
        "coverage_start": END.replace(year=END.year - 1) + timedelta(days=1),
        "coverage_end": END,
        "plate_masked": "沪A·****5",
        "claims_phone": "95518",
        "vin_digest": vin_digest(vid, VIN),
    }
    values.update(changes)
    await cloud.send_state(make_state(vid, version=1, seq=1, reply_to=1, **values))
    await agent.wait_for_state(5.0)


def intents_in(db: Path) -> list[tuple[str, dict[str, Any]]]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [(t, json.loads(f)) for t, f in conn.execute("SELECT type, fields FROM outbox")]


@pytest.fixture
def bus() -> SimulatedBus:
    return SimulatedBus(ignition_on=True, speed_kmh=0.0, vin=VIN)


async def test_a_prompt_shows_when_parked_hides_when_moving_and_is_shown_once(
    make_config: Any, make_state: Any, cloud: FakeCloud, bus: SimulatedBus, until: Any
) -> None:
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    async with running(agent):
        await verified(agent, cloud, make_state)
        await until(lambda: hu.on_screen is not None, "a prompt")
        shown = hu.snapshot()
        assert shown["status"] == "expiring" and shown["prompt"]["stage"] == "d15"
        assert shown["prompt"]["days_left"] == 10
        assert "10天" in shown["prompt"]["texts"]["zh-CN"]["body"]
        assert "10 days left" in shown["prompt"]["texts"]["en"]["body"]
        card = shown["card"]
        assert (card["plate"], card["claims_phone"], card["end"]) == (
            "沪A·****5", "95518", END.isoformat(),
        )  # fmt: skip
        bus.speed_kmh = 40.0
        await until(lambda: hu.on_screen is None, "the prompt hidden while moving")
        assert hu.snapshot()["vehicle"]["moving"] is True
        bus.speed_kmh = 0.0
        await until(lambda: not hu.signals.moving, "parked again")
        await hu.evaluate()
        assert hu.on_screen is None and hu.decisions[-1] == Quiet("prompted")
    kinds = [f.get("event") for t, f in intents_in(agent.config.db_path) if t == "vehicle.event"]
    assert kinds[:1] == ["ignition_on"] and "prompt_shown" in kinds and "moving" in kinds


async def test_renew_sends_a_signed_renewal_request_and_snooze_waits_for_the_next_ignition(
    pki: DevPki,
    make_config: Any,
    make_state: Any,
    cloud: FakeCloud,
    bus: SimulatedBus,
    until: Any,
) -> None:
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    async with running(agent):
        await verified(agent, cloud, make_state)
        await until(lambda: hu.on_screen is not None, "a prompt")
        first = hu.on_screen
        assert first is not None
        with pytest.raises(AnswerError) as stale:
            await hu.answer(first.n + 1, "dismiss")
        assert stale.value.code == "stale_prompt"
        with pytest.raises(AnswerError) as bad:
            await hu.answer(first.n, "buy_it_now")
        assert bad.value.code == "bad_answer"
        await hu.answer(first.n, "snooze_trip")
        assert hu.on_screen is None
        await hu.evaluate()
        assert hu.on_screen is None and hu.decisions[-1] == Quiet("snoozed")
        trip = hu.signals.trip
        bus.ignition_on = False
        await until(lambda: not hu.signals.ignition_on, "ignition off")
        bus.ignition_on = True
        await until(lambda: hu.on_screen is not None, "the prompt back at the next ignition")
        assert hu.signals.trip == trip + 1
        again = hu.on_screen
        assert again is not None and again.n != first.n
        await hu.answer(again.n, "accept")
        payload, _ = await cloud.receive(topics.up(agent.vid, "renewal"))
    car = load_public_key((pki.car_dir(agent.vid) / "car.crt").read_bytes())
    body = messages.decode(
        envelope.open_with(topics.up(agent.vid, "renewal"), payload, {kid_for(car): car})
    )
    assert isinstance(body, RenewalRequest) and body.action == "quote"


async def test_a_vin_that_is_not_the_policys_is_shown_and_reported_never_prompted(
    make_config: Any, make_state: Any, cloud: FakeCloud, until: Any
) -> None:
    bus = SimulatedBus(ignition_on=True, speed_kmh=0.0, vin="LSGANDER000000001")
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    async with running(agent):
        await verified(agent, cloud, make_state)
        await until(lambda: hu.snapshot()["status"] == "mismatch", "the mismatch shown")
        await hu.evaluate()
        assert hu.on_screen is None and hu.decisions[-1] == Quiet("vin_mismatch")
        assert "does not match" in hu.snapshot()["texts"]["en"]["headline"]
        event_topic = topics.up(agent.vid, "event")
        while True:  # the events go out in order; the mismatch is among the first
            payload, _ = await cloud.receive(event_topic)
            body = messages.decode(envelope.parse(payload).body)
            assert isinstance(body, VehicleEvent)
            if body.event == "vin_mismatch":
                break


async def test_a_lapsed_car_that_moves_raises_one_alert_per_trip_and_no_prompt(
    make_config: Any, make_state: Any, cloud: FakeCloud, until: Any
) -> None:
    bus = SimulatedBus(ignition_on=True, speed_kmh=50.0, vin=VIN)
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    ended = (NOW + timedelta(hours=8)).date() - timedelta(days=3)
    async with running(agent):
        await verified(agent, cloud, make_state, coverage_end=ended, status="lapsed",
                       coverage_start=date(ended.year - 1, ended.month, ended.day))  # fmt: skip
        await until(
            lambda: any(getattr(d, "event", None) == "lapsed_while_driving" for d in hu.decisions),
            "the fleet alert",
        )
        await hu.evaluate()
        assert hu.decisions[-1] == Quiet("alerted") and hu.on_screen is None
    alerts = [
        f for t, f in intents_in(agent.config.db_path) if f.get("event") == "lapsed_while_driving"
    ]
    assert len(alerts) == 1


async def test_a_restart_neither_repeats_nor_skips_a_stage(
    make_config: Any, make_state: Any, new_cloud: Any, bus: SimulatedBus, until: Any
) -> None:
    config = make_config(bus_poll_s=0.02)
    cloud = await new_cloud()
    first = Agent(config, bus=bus)
    async with running(first):
        await verified(first, cloud, make_state)
        await until(lambda: first.head_unit.on_screen is not None, "the d15 prompt")
    # Killed before the driver answered: shown counts; the next start does not repeat it.
    again = Agent(config, bus=bus)
    async with running(again):
        await until(lambda: again.state is not None, "the stored state")
        payload, _ = await cloud.receive(topics.up(again.vid, "status"))
        request = messages.decode(envelope.parse(payload).body)
        later = NOW + timedelta(minutes=1)  # the floor has moved past NOW meanwhile
        state = make_state(again.vid, version=1, seq=2, reply_to=request.seq,
                           issued_at=later, fresh_until=later + timedelta(days=7),
                           coverage_start=END.replace(year=END.year - 1) + timedelta(days=1),
                           coverage_end=END, vin_digest=vin_digest(again.vid, VIN))  # fmt: skip
        await cloud.send_state(state)
        await again.wait_for_state(5.0, min_seq=2)
        await until(lambda: again.head_unit.signals.trip >= 2, "the second trip")
        await again.head_unit.evaluate()
        assert again.head_unit.on_screen is None
        assert again.head_unit.decisions[-1] == Quiet("prompted")


def _update(vid: str, seq: int, stage: str, **changes: Any) -> messages.RenewalUpdate:
    quote = messages.Quote(
        quote_id="q_picc_1", insurer_code="PICC", insurer_name="中国人保财险",
        start=END + timedelta(days=1), end=END.replace(year=END.year + 1),
        ctpl="665.00", floating_rate="-0.30", vehicle_vessel_tax="360.00", total="1025.00",
        expires_at=NOW + timedelta(minutes=30),
    )  # fmt: skip
    values: dict[str, Any] = {"quotes": (quote,)} if stage == "quotes" else {}
    values.update(changes)
    return messages.RenewalUpdate(
        vid=vid, seq=seq, issued_at=NOW, renewal_id="r_1", stage=stage, **values
    )


async def test_quotes_are_compared_a_choice_is_a_signed_consent_and_payment_is_a_qr_code(
    pki: DevPki, make_config: Any, make_state: Any, cloud: FakeCloud, bus: SimulatedBus, until: Any
) -> None:
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    renewal_topic = topics.down(agent.vid, "renewal")
    async with running(agent):
        await verified(agent, cloud, make_state)
        quotes = _update(agent.vid, 5, "quotes")
        await cloud.send(renewal_topic, cloud.signer.seal(renewal_topic, messages.encode(quotes)))
        await until(lambda: hu.snapshot()["renewal"] is not None, "the quotes shown")
        shown = hu.snapshot()["renewal"]
        assert [q["total"] for q in shown["quotes"]] == ["1025.00"]
        assert shown["texts"]["en"]["headline"] == "Choose an insurer"
        assert shown["quotes"][0]["texts"]["zh-CN"]["price"] == (
            "交强险665.00元 + 车船税360.00元 = 合计1025.00元"
        )
        with pytest.raises(AnswerError) as unknown:
            await hu.accept_quote("q_other")
        assert unknown.value.code == "unknown_quote"
        await hu.accept_quote("q_picc_1")
        payload, _ = await cloud.receive(topics.up(agent.vid, "renewal"))
        url = "https://pay.example.test/pay/ord_1"
        due = _update(agent.vid, 6, "awaiting_payment", payment_url=url, amount="1025.00")
        await cloud.send(renewal_topic, cloud.signer.seal(renewal_topic, messages.encode(due)))
        await until(lambda: (hu.snapshot()["renewal"] or {}).get("stage") == "awaiting_payment",
                    "the payment link")  # fmt: skip
        shown = hu.snapshot()["renewal"]
        assert shown["payment_url"] == url and shown["payment_qr"].startswith("data:image/svg+xml")
        # A replayed older update (the quotes again) is refused: the payment link stays.
        await cloud.send(renewal_topic, cloud.signer.seal(renewal_topic, messages.encode(quotes)))
        await until(lambda: agent.counters["replay"] == 1, "the replay refused")
        assert hu.snapshot()["renewal"]["stage"] == "awaiting_payment"
    car = load_public_key((pki.car_dir(agent.vid) / "car.crt").read_bytes())
    body = messages.decode(
        envelope.open_with(topics.up(agent.vid, "renewal"), payload, {kid_for(car): car})
    )
    assert isinstance(body, RenewalRequest) and (body.action, body.quote_id) == (
        "accept", "q_picc_1",
    )  # fmt: skip


def test_the_config_picks_the_vehicle_bus(make_config: Any, tmp_path: Path) -> None:
    from agent.errors import ConfigError
    from agent.obd_bus import ObdBus

    assert Agent(make_config()).head_unit.bus is None
    assert isinstance(Agent(make_config(bus="simulated")).head_unit.bus, SimulatedBus)
    obd = Agent(make_config(bus="obd", obd_port=str(tmp_path / "ttyUSB0"), obd_baudrate=38400))
    assert isinstance(obd.head_unit.bus, ObdBus)
    with pytest.raises(ConfigError, match="obd_port"):
        make_config(bus="obd")


async def test_a_pending_car_says_when_cover_starts_and_alerts_the_fleet_when_it_moves(
    make_config: Any, make_state: Any, cloud: FakeCloud, bus: SimulatedBus, until: Any
) -> None:
    """A term bought after a lapse that starts at the next 00:00 China time: the head unit
    says 待生效 with the start, prompts once per trip (only "dismiss"), and a car that
    moves before the start raises one pending_while_driving event per trip, no pop-up."""
    agent = Agent(make_config(bus_poll_s=0.02), bus=bus)
    hu = agent.head_unit
    starts = (NOW + timedelta(hours=8)).date() + timedelta(days=1)
    async with running(agent):
        ends = starts.replace(year=starts.year + 1) - timedelta(days=1)
        await verified(agent, cloud, make_state, status="pending", coverage_start=starts,
                       coverage_end=ends)  # fmt: skip
        await until(lambda: hu.on_screen is not None, "the pending prompt")
        shown = hu.snapshot()
        assert (shown["status"], shown["prompt"]["stage"]) == ("pending", "pending")
        assert shown["starts_at"] == f"{starts.isoformat()}T00:00:00+08:00"
        assert shown["texts"]["zh-CN"] == {
            "headline": "交强险待生效",
            "detail": f"新保单自{starts.year}年{starts.month}月{starts.day}日0时起生效，"
            "生效前请勿上路",
        }
        assert shown["prompt"]["answers"] == ["dismiss"]
        on_screen = hu.on_screen
        assert on_screen is not None
        with pytest.raises(AnswerError) as refused:  # the renewal is bought already
            await hu.answer(on_screen.n, "accept")
        assert refused.value.code == "bad_answer"
        await hu.answer(on_screen.n, "dismiss")
        bus.speed_kmh = 30.0
        await until(lambda: any(getattr(d, "event", None) == "pending_while_driving"
                                for d in hu.decisions), "the fleet alert")  # fmt: skip
        assert hu.on_screen is None and shown["prompt"] is not None
        await hu.evaluate()
        assert hu.decisions[-1] == Quiet("alerted")  # once per trip
    events = [f for t, f in intents_in(agent.config.db_path) if t == "vehicle.event"]
    assert sum(f.get("event") == "pending_while_driving" for f in events) == 1
    assert "prompt_answered" in [f.get("event") for f in events]
