"""The OBD-II bus against ELM327-emulator as a real peer on a pty, and its pure pieces.

One emulator and one connection (protocol search: ~4 s) serve the module;
the tests that kill the adapter start their own, on protocol 6 (~1 s).
"""

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from agent.obd_bus import ObdBus, decode_vin, mask_vin
from agent.vehicle import Reading, Signals, VinError

from .elm_emulator import NO_DATA, ElmEmulator, remove_link, rpm_answer, speed_answer, vin_answer

on_module_loop = pytest.mark.asyncio(loop_scope="module")
"""For the tests that share the module's connection (and so its event loop)."""

WAIT_S = 5.0
"""The longest any single call to the bus may take here."""

VIN = "2T1BURHE0JC012340"
"""Leading "2", trailing "0": python-OBD's own VIN decoder strips both."""

CAR_SCENARIO_VINS = {"WP0ZZZ99ZTS390000", "MAT403096BNL00000", "SB1ZS3JE60E282102"}
"""What the emulator's 'car' scenario answers to 09 02 (python-OBD reads them cut short)."""

PROTOCOL_PROBES = ("PIDS_A", "ELM_PIDS_A")
"""The emulator's names for 01 00, which python-OBD asks to find the car's protocol."""

AGENT_ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def elm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElmEmulator]:
    """The module's emulator, at a symlink; killed at the end whatever happens."""
    workdir = tmp_path_factory.mktemp("elm")
    with ElmEmulator(workdir, workdir / "ttyOBD") as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bus(elm: ElmEmulator) -> AsyncIterator[ObdBus]:
    """The module's bus: the protocol searched as in the field, the baud rate given.

    (The emulator only echoes python-OBD's baud-rate probe, so detection cannot be tried.)
    """
    connected = ObdBus(
        str(elm.link), baudrate=38400, query_timeout_s=WAIT_S, connect_timeout_s=2 * WAIT_S
    )
    try:
        assert await connected.connect()
        yield connected
    finally:
        await connected.close()


@pytest.fixture
def car(elm: ElmEmulator) -> Iterator[ElmEmulator]:
    """The module's emulator, its answers back to the scenario's after the test."""
    yield elm
    if elm.running:
        for pid in ("SPEED", "RPM", "VIN"):
            elm.reset(pid)
        elm.delay(0)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str], ElmEmulator]]:
    """Start emulators at tmp_path/ttyOBD (the newest holds the link); all killed after."""
    started: list[ElmEmulator] = []

    def start(name: str) -> ElmEmulator:
        emulator = ElmEmulator(tmp_path / name, tmp_path / "ttyOBD")
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.kill()


# -- against the emulator ---------------------------------------------------------------


@on_module_loop
async def test_speed_and_rpm_are_what_the_car_answers(bus: ObdBus, car: ElmEmulator) -> None:
    car.answer("SPEED", speed_answer(72))
    car.answer("RPM", rpm_answer(1726.25))
    assert await bus.read() == Reading(72.0, 1726.25)
    car.answer("SPEED", speed_answer(0))
    car.answer("RPM", rpm_answer(812.5))
    assert await bus.read() == Reading(0.0, 812.5)


@on_module_loop
async def test_a_silent_car_reads_as_ignition_off(bus: ObdBus, car: ElmEmulator) -> None:
    signals = Signals()
    car.answer("SPEED", speed_answer(30))
    car.answer("RPM", rpm_answer(1500))
    assert signals.feed(await bus.read()) == ["ignition_on", "moving"]
    car.answer("SPEED", NO_DATA)
    car.answer("RPM", NO_DATA)
    reading = await bus.read()
    assert reading == Reading(None, None)
    assert signals.feed(reading) == ["ignition_off"]


@on_module_loop
async def test_one_silent_pid_leaves_the_other(bus: ObdBus, car: ElmEmulator) -> None:
    car.answer("SPEED", NO_DATA)
    car.answer("RPM", rpm_answer(800))
    reading = await bus.read()
    assert reading == Reading(None, 800.0)
    assert reading.answered


@on_module_loop
async def test_the_vin_is_the_one_the_car_reports(
    bus: ObdBus, car: ElmEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    car.answer("VIN", vin_answer(VIN.encode()))
    assert await bus.read_vin() == VIN
    assert VIN not in caplog.text
    assert "*************2340" in caplog.text


@on_module_loop
async def test_the_scenarios_vins_read_whole(bus: ObdBus, car: ElmEmulator) -> None:
    """Each ends in 0 or 2, which python-OBD's decoder strips; ours keeps all 17."""
    assert await bus.read_vin() in CAR_SCENARIO_VINS


@pytest.mark.parametrize(
    "answer",
    [
        vin_answer(b"WP0ZZZ99ZTS39000O"),  # an O: no VIN
        vin_answer(b"WP0ZZZ99ZTS3900"),  # 15 characters
        vin_answer(b"WP0ZZZ99ZTS39000\xc4"),  # not ASCII
        NO_DATA,
    ],
    ids=["letter-O", "short", "not-ascii", "no-data"],
)
@on_module_loop
async def test_an_invalid_or_absent_vin_is_none(
    bus: ObdBus, car: ElmEmulator, caplog: pytest.LogCaptureFixture, answer: str
) -> None:
    caplog.set_level(logging.DEBUG)
    car.answer("VIN", answer)
    assert await bus.read_vin() is None
    assert "WP0ZZZ99ZTS" not in caplog.text
    assert "no VIN" in caplog.text


@on_module_loop
async def test_reading_does_not_block_the_event_loop(bus: ObdBus, car: ElmEmulator) -> None:
    car.answer("SPEED", speed_answer(50))
    car.answer("RPM", rpm_answer(2000))
    car.delay(0.25)  # each of the two answers
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as group:
        ticker = group.create_task(tick(), name="ticker")
        started = time.monotonic()
        reading = await bus.read()
        took = time.monotonic() - started
        ticker.cancel()
    assert reading == Reading(50.0, 2000.0)
    assert took >= 0.5
    assert ticks >= 10  # a loop blocked on the port would tick once, after the read


@on_module_loop
async def test_concurrent_calls_take_turns_on_the_port(bus: ObdBus, car: ElmEmulator) -> None:
    car.answer("SPEED", speed_answer(88))
    car.answer("RPM", rpm_answer(3000))
    car.answer("VIN", vin_answer(VIN.encode()))
    async with asyncio.timeout(WAIT_S):
        results = await asyncio.gather(bus.read(), bus.read_vin(), bus.read(), bus.read_vin())
    assert results == [Reading(88.0, 3000.0), VIN, Reading(88.0, 3000.0), VIN]


async def test_a_killed_adapter_reads_as_ignition_off_then_reconnects(
    spawn: Callable[[str], ElmEmulator], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.obd_bus")
    clock = Clock()
    first = spawn("first")
    bus = ObdBus(
        str(first.link), baudrate=38400, protocol="6", query_timeout_s=WAIT_S,
        connect_timeout_s=WAIT_S, reconnect_interval_s=30.0, clock=clock,
    )  # fmt: skip

    def attempts() -> int:
        return caplog.text.count("no such port") + caplog.text.count("no ELM327 answers")

    def warnings() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "agent.obd_bus" and r.levelno == logging.WARNING
        ]

    try:
        first.answer("SPEED", speed_answer(40))
        assert (await bus.read()).answered  # the first read connects
        first.kill()
        assert await bus.read() == Reading(None, None)  # lost: next attempt in 30 s
        clock.now += 15.0
        assert await bus.read() == Reading(None, None)  # not due: no attempt
        assert attempts() == 0
        clock.now += 15.0
        assert await bus.read() == Reading(None, None)  # due: attempted, no adapter
        assert attempts() == 1
        assert len(warnings()) == 1
        assert "stopped answering" in warnings()[0]

        second = spawn("second")
        second.answer("SPEED", speed_answer(55))
        second.answer("RPM", rpm_answer(1200))
        clock.now += 15.0
        assert await bus.read() == Reading(None, None)  # not due yet: no attempt
        assert attempts() == 1
        clock.now += 15.0
        assert await bus.read() == Reading(55.0, 1200.0)
        assert "connected to the car again" in caplog.text
        assert len(warnings()) == 1
    finally:
        await bus.close()


async def test_a_stuck_adapter_times_out_and_holds_the_port_alone(
    spawn: Callable[[str], ElmEmulator],
) -> None:
    clock = Clock()
    emulator = spawn("slow")
    bus = ObdBus(
        str(emulator.link), baudrate=38400, protocol="6", query_timeout_s=0.3,
        connect_timeout_s=WAIT_S, reconnect_interval_s=0.0, clock=clock,
    )  # fmt: skip
    try:
        assert await bus.connect()
        emulator.answer("SPEED", speed_answer(20))
        emulator.answer("RPM", rpm_answer(900))
        emulator.delay(0.6)
        started = time.monotonic()
        assert await bus.read() == Reading(None, None)  # timed out; the worker still runs
        assert await bus.read() == Reading(None, None)  # at once: the port is taken
        assert time.monotonic() - started < 0.6
        emulator.delay(0)
        async with asyncio.timeout(WAIT_S):
            while (reading := await bus.read()) == Reading(None, None):
                await asyncio.sleep(0.05)
        assert reading == Reading(20.0, 900.0)
    finally:
        await bus.close()


async def test_a_car_off_at_start_is_no_trouble_and_is_found_later(
    spawn: Callable[[str], ElmEmulator], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.obd_bus")
    clock = Clock()
    emulator = spawn("parked")
    for pid in PROTOCOL_PROBES:
        emulator.answer(pid, "<writeln>UNABLE TO CONNECT</writeln>")
    bus = ObdBus(
        str(emulator.link), baudrate=38400, protocol="6", query_timeout_s=WAIT_S,
        connect_timeout_s=WAIT_S, reconnect_interval_s=30.0, clock=clock,
    )  # fmt: skip
    try:
        assert not await bus.connect()  # the adapter answers, no ECU does
        assert await bus.read() == Reading(None, None)
        assert "no ECU does" in caplog.text
        for pid in PROTOCOL_PROBES:
            emulator.reset(pid)
        emulator.answer("SPEED", speed_answer(0))
        emulator.answer("RPM", rpm_answer(750))
        clock.now += 30.0
        assert await bus.read() == Reading(0.0, 750.0)
        assert "connected to the car again" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await bus.close()


async def test_a_python_obd_failure_reads_as_ignition_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pyserial refuses an unknown URL scheme with ValueError, which python-OBD lets out."""
    caplog.set_level(logging.INFO, logger="agent.obd_bus")
    bus = ObdBus("bogus://adapter", reconnect_interval_s=0.0)
    assert not await bus.connect()
    assert await bus.read() == Reading(None, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "python-OBD failed (ValueError" in warnings[0]
    await bus.close()


async def test_no_port_reads_as_ignition_off_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.obd_bus")
    remove_link(tmp_path / "ttyOBD")
    bus = ObdBus(str(tmp_path / "ttyOBD"), reconnect_interval_s=0.0)
    assert not await bus.connect()
    assert await bus.read() == Reading(None, None)
    assert await bus.read_vin() is None
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.obd_bus" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "no such port" in warnings[0]
    await bus.close()
    assert await bus.read() == Reading(None, None)


# -- the import line and the pure pieces ------------------------------------------------


def test_the_agent_does_not_load_python_obd() -> None:
    """python-OBD and pint cost ~8-18 MiB resident: only a configured OBD bus pays it."""
    code = (
        "import sys, agent.runner, agent.cli, agent.vehicle\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'obd', 'pint', 'serial'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=AGENT_ROOT, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("data", "vin"),
    [
        (b"\x01" + VIN.encode() + b"\x00\x00", VIN),  # CAN: count byte, python-OBD's padding
        (b"\x00\x00\x00" + b"1D4GP24R45B123402", "1D4GP24R45B123402"),  # legacy: NUL padding
        (b"\x01 wp0zzz99zts390000 ", "WP0ZZZ99ZTS390000"),
    ],
)
def test_decode_vin(data: bytes, vin: str) -> None:
    assert decode_vin(data) == vin


@pytest.mark.parametrize(
    "data",
    [b"", b"\x01\x00\x00", b"\x01WP0ZZZ99ZTS3900", b"\x01WP0ZZZ99ZTS39000O", b"\x01\xc4" * 9],
)
def test_decode_vin_refuses(data: bytes) -> None:
    with pytest.raises(VinError):
        decode_vin(data)


@pytest.mark.parametrize(
    ("text", "masked"),
    [(VIN, "*************2340"), ("ABC", "ABC"), ("", ""), ("12345", "*2345")],
)
def test_mask_vin(text: str, masked: str) -> None:
    assert mask_vin(text) == masked


@pytest.mark.parametrize(
    "changes",
    [
        {"port": ""},
        {"baudrate": 0},
        {"protocol": "0"},
        {"query_timeout_s": 0.0},
        {"connect_timeout_s": -1.0},
        {"reconnect_interval_s": -1.0},
    ],
)
def test_bad_arguments_are_refused_at_once(changes: dict[str, object]) -> None:
    arguments: dict[str, object] = {"port": "/dev/ttyUSB0"} | changes
    with pytest.raises(ValueError):
        ObdBus(**arguments)  # type: ignore[arg-type]
