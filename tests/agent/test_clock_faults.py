"""Clock faults: wrong wall clocks, jumps, reboots and replays never make a wrong claim.

The table drives the pure pieces the agent is built from (ManualClock, TrustedClock,
policy.decide, display.view) hour by hour over the end of a policy term and counts
every "covered"/"expiring" or "lapsed" shown against the car's real cover at that real
instant. The same timelines judged by the gateway's wall clock make wrong claims; with
trusted time, none. Then the real Agent, wall clock in 1970, against the real broker.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import display
from agent.policy import Accept, decide
from agent.protocol import topics
from agent.protocol.clock import ManualClock
from agent.protocol.messages import PolicyState
from agent.runner import Agent
from agent.store import Store
from agent.trusted_time import Confidence, TrustedClock, TrustedNow

VID = "vaaaaaaaaaaaaaaa1"
R0 = datetime(2025, 11, 20, 0, 0, tzinfo=UTC)
END = datetime(2025, 11, 30, 16, 0, tzinfo=UTC)  # 2025-11-30 24:00 China time
START_DATE, END_DATE, RENEWED_END = date(2024, 12, 1), date(2025, 11, 30), date(2026, 11, 30)
HOUR = 3600.0
TICKS = 20 * 24
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AHEAD = R0 + timedelta(days=5 * 365)
FRESH_FOR = timedelta(days=7)
SAVE_EVERY_S = 600.0


@dataclass
class Cloud:
    """Signs the truth at real time ``r`` (issued_at ``r`` minus ``skew``)."""

    renewed_at: datetime | None = None
    version: int = 0
    seq: int = 0
    content: tuple[str, date] | None = None
    skew: timedelta = timedelta(0)

    def end(self, r: datetime) -> date:
        renewed = self.renewed_at is not None and r >= self.renewed_at
        return RENEWED_END if renewed else END_DATE

    def state(self, r: datetime, reply_to: int | None) -> PolicyState:
        end = self.end(r)
        ends = datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC) - timedelta(
            hours=8
        )
        status = "lapsed" if r >= ends else "expiring" if (ends - r).days < 30 else "active"
        if (status, end) != self.content:
            self.version += 1
            self.content = (status, end)
        self.seq += 1
        issued = r - self.skew
        return PolicyState(
            vid=VID,
            seq=self.seq,
            version=self.version,
            issued_at=issued,
            fresh_until=issued + FRESH_FOR,
            reply_to=reply_to,
            status=status,  # type: ignore[arg-type]
            coverage_start=START_DATE,
            coverage_end=end,
            source="national",
        )

    def truth(self, r: datetime) -> str:
        ends = datetime.combine(self.end(r) + timedelta(days=1), datetime.min.time(), UTC)
        return "covered" if r < ends - timedelta(hours=8) else "lapsed"


@dataclass
class Gateway:
    """The agent's time logic (as runner.Agent wires it) with a disk that survives reboots."""

    clock: ManualClock
    disk_floor: datetime | None = None
    disk_state: PolicyState | None = None
    trusted: TrustedClock = field(default_factory=TrustedClock)
    held: PolicyState | None = None
    next_seq: int = 1
    last_save: float = 0.0

    def boot(self, wall: datetime, mono: float) -> None:
        self.clock = ManualClock(wall, monotonic=mono)
        self.trusted = TrustedClock(self.disk_floor)
        self.held = self.disk_state
        if self.held is not None:
            self.trusted.raise_floor(self.held.issued_at)
        self.last_save = mono

    def save(self) -> None:
        floor = self.trusted.settle(self.clock.monotonic())
        if floor is not None and (self.disk_floor is None or floor > self.disk_floor):
            self.disk_floor = floor
        self.last_save = self.clock.monotonic()

    def receive(self, state: PolicyState, sent: float | None) -> None:
        if not isinstance(decide(state, self.held, VID), Accept):
            return
        self.held = self.disk_state = state
        if sent is None:
            self.trusted.raise_floor(state.issued_at)
        else:
            self.trusted.anchor(state.issued_at, sent, self.clock.monotonic())
        self.save()

    def shown(self) -> display.StatusView | display.Unverified:
        return display.view(self.held, self.trusted.now(self.clock.monotonic()))

    def by_wall_clock(self) -> display.StatusView | display.Unverified:
        """What an agent that believed its wall clock would show (the baseline)."""
        return display.view(self.held, TrustedNow.given(self.clock.now()))


Event = Callable[[int, Gateway, Cloud, random.Random], None]


@dataclass(frozen=True)
class Scenario:
    """``online(tick)``; ``events`` run at their tick before the hour's exchange."""

    name: str
    boot_wall: datetime
    online: Callable[[int], bool]
    events: dict[int, Event] = field(default_factory=dict)
    renewed_at: datetime | None = None
    rtt_s: float = 0.3
    suspend: tuple[int, int] | None = None
    """Ticks during which the gateway is suspended (offline, asleep)."""
    monotonic_stops: bool = False
    """In suspend the monotonic source stands still, as CLOCK_MONOTONIC does; SystemClock
    reads CLOCK_BOOTTIME, which counts the time asleep (False)."""
    min_claims: int = 1


def jump(to: Callable[[datetime], datetime]) -> Event:
    def event(tick: int, gw: Gateway, cloud: Cloud, rng: random.Random) -> None:
        gw.clock.set_wall(to(gw.clock.now()))

    return event


def reboot(wall: datetime) -> Event:
    def event(tick: int, gw: Gateway, cloud: Cloud, rng: random.Random) -> None:
        gw.boot(wall, rng.uniform(0, 50))  # monotonic restarts near zero

    return event


def skew(by: timedelta) -> Event:
    def event(tick: int, gw: Gateway, cloud: Cloud, rng: random.Random) -> None:
        cloud.skew = by

    return event


def replay_old(tick: int, gw: Gateway, cloud: Cloud, rng: random.Random) -> None:
    old = cloud.state(R0 - timedelta(days=40), reply_to=None)
    gw.receive(old, None)


def always(tick: int) -> bool:
    return True


def until_day(day: int) -> Callable[[int], bool]:
    return lambda tick: tick < day * 24


def from_day(day: int) -> Callable[[int], bool]:
    return lambda tick: tick >= day * 24


def except_days(a: int, b: int) -> Callable[[int], bool]:
    return lambda tick: not a * 24 <= tick < b * 24


SCENARIOS = [
    Scenario("boot at 1970, online", EPOCH, always),
    Scenario("boot 5 years ahead, online", AHEAD, always),
    Scenario("boot at 1970, offline 12 days, then online", EPOCH, from_day(12)),
    Scenario("boot 5 years ahead, never online", AHEAD, lambda t: False, min_claims=0),
    Scenario(
        "wall jumps back and forward every 5 hours",
        R0,
        always,
        {t: jump(lambda w, t=t: w + timedelta(days=(-1) ** t * 1500)) for t in range(0, TICKS, 5)},
    ),
    Scenario(
        "wall right, NTP steps it to 1970 and back",
        R0,
        always,
        {100: jump(lambda w: EPOCH), 300: jump(lambda w: w + (R0 - EPOCH))},
    ),
    Scenario("online, then offline across the end", R0, until_day(9)),
    Scenario(
        "wall clock 3 days slow, offline across the end", R0 - timedelta(days=3), until_day(9)
    ),
    Scenario(
        "offline across the end, renewed meanwhile",
        R0,
        until_day(9),
        renewed_at=END - timedelta(days=3),
    ),
    Scenario(
        "reboot to 1970 mid-way, offline 3 days",
        R0,
        except_days(5, 8),
        {5 * 24: reboot(EPOCH)},
    ),
    Scenario(
        "reboot 5 years ahead after parking across the end and past fresh_until",
        R0,
        except_days(3, 18),
        {10 * 24: reboot(AHEAD), 17 * 24: reboot(EPOCH)},
    ),
    Scenario(
        "reboot with a wall clock stuck one week behind, across the end",
        R0,
        except_days(10, 11),
        {10 * 24 + 5: reboot(END - timedelta(days=7))},
    ),
    Scenario(
        "old signed states replayed as pushes",
        EPOCH,
        always,
        {t: replay_old for t in range(3, TICKS, 7)},
    ),
    Scenario(
        "cloud clock rolled back 30 days for a day",
        R0,
        always,
        {8 * 24: skew(timedelta(days=30)), 9 * 24: skew(timedelta(0))},
    ),
    Scenario("replies take 40 minutes", EPOCH, always, rtt_s=2400.0),
    Scenario(
        "suspended 3 days across the end, woken offline",
        R0,
        except_days(9, 13),
        suspend=(9 * 24, 12 * 24),
    ),
]


@dataclass
class Tally:
    claims: int = 0
    wrong: list[str] = field(default_factory=list)
    wall_wrong: int = 0


def claim(shown: display.StatusView | display.Unverified) -> str | None:
    if isinstance(shown, display.Unverified) or shown.status == "unknown":
        return None
    return "covered" if shown.status in ("covered", "expiring") else "lapsed"


def play(scenario: Scenario, seed: int = 0) -> Tally:
    rng = random.Random(seed)
    cloud = Cloud(renewed_at=scenario.renewed_at)
    gw = Gateway(ManualClock(scenario.boot_wall))
    gw.boot(scenario.boot_wall, rng.uniform(0, 50))
    tally = Tally()
    for tick in range(TICKS):
        real = R0 + timedelta(hours=tick)
        if (event := scenario.events.get(tick)) is not None:
            event(tick, gw, cloud, rng)
        if scenario.online(tick):
            connecting = tick == 0 or not scenario.online(tick - 1) or tick in scenario.events
            if connecting and cloud.content is not None:
                # On connect the broker hands over the retained copy first: issued long ago.
                gw.receive(cloud.state(real - timedelta(days=2), reply_to=None), None)
            sent = gw.clock.monotonic()
            seq, gw.next_seq = gw.next_seq, gw.next_seq + 1
            gw.clock.advance(scenario.rtt_s)
            stamped = real + timedelta(seconds=rng.uniform(0, scenario.rtt_s))
            gw.receive(cloud.state(stamped, reply_to=seq), sent)
            real += timedelta(seconds=scenario.rtt_s)
        for shown, by_wall in ((gw.shown(), False), (gw.by_wall_clock(), True)):
            said = claim(shown)
            if said is None:
                continue
            if by_wall:
                tally.wall_wrong += said != cloud.truth(real)
            else:
                tally.claims += 1
                if said != cloud.truth(real):
                    tally.wrong.append(f"tick {tick}: showed {said} at {real.isoformat()}")
        step = HOUR - (scenario.rtt_s if scenario.online(tick) else 0.0)
        suspended = scenario.suspend and scenario.suspend[0] <= tick < scenario.suspend[1]
        if suspended and scenario.monotonic_stops:
            gw.clock.set_wall(gw.clock.now() + timedelta(seconds=step))
        else:
            gw.clock.advance(step)
            if gw.clock.monotonic() - gw.last_save >= SAVE_EVERY_S:
                gw.save()
    return tally


def _name(s: Any) -> str:
    return str(s.values[0].name if hasattr(s, "values") else s.name)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[_name(s) for s in SCENARIOS])
def test_no_wrong_claim(scenario: Scenario) -> None:
    tally = play(scenario)
    assert tally.wrong == [], f"{len(tally.wrong)} wrong claims"
    assert tally.claims >= scenario.min_claims, "the scenario never let anything be shown"


def test_a_monotonic_source_that_stops_in_suspend_would_show_wrong_claims() -> None:
    """Why SystemClock reads CLOCK_BOOTTIME (test_clock.py): with CLOCK_MONOTONIC a gateway
    asleep for three days across the end thinks no time passed, and shows "covered"."""
    [asleep] = [s for s in SCENARIOS if isinstance(s, Scenario) and s.suspend is not None]
    assert play(asleep).wrong == []
    stopped = play(replace(asleep, monotonic_stops=True))
    assert stopped.wrong, "a clock that stops in suspend went unnoticed"
    assert all("showed covered" in w for w in stopped.wrong)


def test_table_totals_and_the_wall_clock_baseline() -> None:
    plain = [s for s in SCENARIOS if isinstance(s, Scenario)]
    tallies = [play(s, seed) for s in plain for seed in range(3)]
    wrong = sum(len(t.wrong) for t in tallies)
    claims = sum(t.claims for t in tallies)
    assert (wrong, len(tallies)) == (0, 3 * len(plain))
    assert claims > 3000  # many "covered"/"lapsed" were shown, all right
    # The same timelines judged by the gateway's wall clock go wrong, so the table bites.
    assert sum(t.wall_wrong for t in tallies) > 100


# --- the real Agent, wall clock in 1970, against the real broker ---------------------------


async def test_agent_with_a_1970_wall_clock_shows_the_signed_time_status(
    vid: str, make_config: Any, make_state: Any, cloud: Any, tmp_path: Path
) -> None:
    from tests.agent.conftest import NOW, running

    clock = ManualClock(EPOCH, monotonic=100.0)
    config = make_config(db_path=tmp_path / "agent.db")
    agent = Agent(config, clock)
    assert isinstance(agent.status_view(), display.Unverified)
    assert agent.trusted_now() is None
    async with running(agent):
        await cloud.receive(topics.up(vid, "status"))
        # A retained-like push, unsolicited: a floor only, nothing claimed.
        await cloud.send_state(make_state(vid, version=1, seq=1))
        await agent.wait_for_state(5.0)
        shown = agent.status_view()
        assert isinstance(shown, display.Unverified) and "carried" in shown.reason
        # The reply to the agent's request anchors time: NOW, though the wall says 1970.
        await cloud.send_state(make_state(vid, version=1, seq=2, reply_to=1))
        await agent.wait_for_state(5.0, min_seq=2)
        now = agent.trusted_now()
        assert now is not None and now.confidence is Confidence.FRESH
        assert now.earliest == NOW
        shown = agent.status_view()
        assert isinstance(shown, display.StatusView)
        assert (shown.status, shown.days_left) == ("covered", 182)
        # Wall clock jumps, then five days pass: still covered; after the 7-day
        # freshness, unverified (freeze); the wall clock has no say either way.
        clock.set_wall(datetime(2031, 1, 1, tzinfo=UTC))
        clock.advance(5 * 86400)
        shown = agent.status_view()
        assert isinstance(shown, display.StatusView) and shown.days_left == 177
        clock.set_wall(EPOCH)
        clock.advance(2 * 86400 + 60)
        shown = agent.status_view()
        assert isinstance(shown, display.Unverified) and "fresh_until" in shown.reason
    async with Store(config.db_path) as store:
        floor = await store.trusted_floor()
    # Saved at the clean stop: the lower bound after 7 days (less 100 ppm of drift).
    assert floor is not None and NOW + timedelta(days=7) - timedelta(seconds=61) <= floor

    # Reboot: monotonic restarts, wall clock at 1970 again. Only the floor is carried.
    again = Agent(config, ManualClock(EPOCH, monotonic=3.0))
    async with running(again):
        await again.wait_for_state(5.0)
        now = again.trusted_now()
        assert now is not None and now.confidence is Confidence.CARRIED
        assert now.earliest == floor and now.latest is None
        assert isinstance(again.status_view(), display.Unverified)
        await cloud.receive(topics.up(vid, "status"))
        # A rolled-back cloud clock replying with the old issued_at: time is not moved back.
        await cloud.send_state(
            make_state(vid, version=2, seq=3, reply_to=await again.request_status())
        )
        await again.wait_for_state(5.0, min_version=2)
        assert again.time_events["refused"] == 1
        assert isinstance(again.status_view(), display.Unverified)
        # An honest reply, issued after the floor: covered again.
        later = floor + timedelta(minutes=1)
        fresh = {"issued_at": later, "fresh_until": later + FRESH_FOR, "verified_at": later}
        seq = await again.request_status()
        await cloud.send_state(make_state(vid, version=3, seq=4, reply_to=seq, **fresh))
        await again.wait_for_state(5.0, min_version=3)
        shown = again.status_view()
        assert isinstance(shown, display.StatusView) and shown.status == "covered"
        assert again.time_events["anchored"] == 1
