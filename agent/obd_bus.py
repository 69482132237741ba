"""OBD-II through an ELM327 adapter: the ``VehicleBus`` that python-OBD drives.

Import this module only when OBD is configured (the runner imports it lazily): python-OBD
pulls in pint, which costs the gateway's agent 8-18 MiB resident against a 45 MB budget.

python-OBD is blocking and its port is one conversation, so every call runs in a worker
thread, one at a time, under a timeout; the event loop never waits on the serial port. A
call that outlives its timeout keeps the port until it returns, and calls made meanwhile
answer "no answer" at once instead of queueing behind it.

Nothing here raises for a silent car or a lost adapter: ``read()`` answers
``Reading(None, None)`` (the ignition reads as off) and a later read reconnects, at most
once per ``reconnect_interval_s``. Only bad arguments raise ``ValueError``, at construction.

The VIN is decoded here from the raw mode 09 PID 02 bytes: python-OBD 0.7.3's decoder
strips the bytes ``0``, ``1``, ``2`` and ``x`` off both ends of the text and so mangles VINs
such as ``1HG...`` or ``...390000`` (python-OBD pull request 276). Logs show a VIN masked
to its last 4 characters.
"""

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from .vehicle import Reading, VinError, check_vin

# python-OBD redefines pint's 'percent', '%' and 'ppm' as it loads, and pint warns of each.
_pint_log = logging.getLogger("pint")
_pint_level = _pint_log.level
_pint_log.setLevel(logging.ERROR)
try:
    import obd  # type: ignore[import-untyped]
finally:
    _pint_log.setLevel(_pint_level)

log = logging.getLogger(__name__)

T = TypeVar("T")

PROTOCOLS: Final = frozenset("123456789A")
"""ELM327 protocol numbers python-OBD speaks; "6" is ISO 15765-4 CAN 11 bit 500 kbaud."""

QUERY_TIMEOUT_S: Final = 5.0
"""Default bound on one poll (speed and RPM) or one VIN read."""

CONNECT_TIMEOUT_S: Final = 30.0
"""Default bound on a connection: ELM reset, protocol search, supported-PID scan."""

RECONNECT_INTERVAL_S: Final = 10.0
"""Default least time between two connection attempts."""

OBD_LOG_QUIET: Final = logging.CRITICAL + 1
"""python-OBD's log level unless this module logs at DEBUG: off.

It logs an ERROR at every connection attempt while the ignition is off, and CRITICAL when
the adapter goes; this module reports the same facts once, with the port.
"""

_NO_ANSWER: Final = Reading(None, None)
_CONTROL: Final = bytes(range(0x21))
"""What pads a VIN in its frames: the message count byte, NULs, spaces."""


def decode_vin(data: bytes) -> str:
    """The VIN in mode 09 PID 02 data after the 49 02 header; raise VinError if none.

    CAN answers carry a count byte before the 17 characters, legacy protocols NUL padding;
    both are stripped, and only those.
    """
    try:
        text = data.strip(_CONTROL).decode("ascii")
    except UnicodeDecodeError as exc:
        raise VinError("not a 17-character VIN") from exc
    return check_vin(text)


def mask_vin(text: str) -> str:
    """``text`` with all but its last 4 characters hidden, for logs."""
    return "*" * max(len(text) - 4, 0) + text[-4:]


def _quantity(response: Any, unit: str) -> float | None:
    """The magnitude of a python-OBD answer in ``unit``, None for no answer."""
    if response is None or response.is_null() or response.value is None:
        return None
    return float(response.value.to(unit).magnitude)


def _quiet_python_obd() -> None:
    """python-OBD logs through the agent's handlers only, at INFO when we debug, else off.

    INFO, not DEBUG, even then: its DEBUG lines carry the raw frames, the VIN among them.
    """
    obd_log = logging.getLogger("obd")
    handler = getattr(obd, "console_handler", None)  # python-OBD's own stderr handler
    if handler is not None:
        obd_log.removeHandler(handler)
    obd_log.setLevel(logging.INFO if log.isEnabledFor(logging.DEBUG) else OBD_LOG_QUIET)


class ObdBus:
    """A ``VehicleBus`` on an ELM327 at ``port`` (a serial device or a pyserial URL).

    Construct it (no I/O), then ``await connect()`` or just ``read()``: a read connects
    when no connection is up and one is due. ``baudrate`` None detects it; ``protocol``
    None lets the ELM327 search at each connection (slower; "6", CAN 11/500, is usual).
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int | None = None,
        protocol: str | None = None,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        reconnect_interval_s: float = RECONNECT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not port:
            raise ValueError("an OBD port is needed")
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baudrate must be positive, not {baudrate}")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {''.join(sorted(PROTOCOLS))}")
        if not (query_timeout_s > 0 and connect_timeout_s > 0 and reconnect_interval_s >= 0):
            raise ValueError("timeouts must be positive and the reconnect interval not negative")
        self.port = port
        self.baudrate = baudrate
        self.protocol = protocol
        self.query_timeout_s = query_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self._clock = clock
        self._connection: Any = None  # an obd.OBD; only the worker thread touches it
        self._connected = False
        self._next_connect_at = -math.inf
        self._lock = asyncio.Lock()
        self._busy: asyncio.Future[Any] | None = None
        self._trouble: str | None = None  # the adapter trouble already warned of
        self._car_silent = False
        self._closed = False
        _quiet_python_obd()

    async def connect(self) -> bool:
        """Connect now, closing any earlier connection; whether the car answered."""
        async with self._lock:
            return await self._connect_locked()

    async def read(self) -> Reading:
        """Poll speed (km/h) and RPM; None for each value the car did not give."""
        async with self._lock:
            if not await self._ready_locked():
                return _NO_ANSWER
            result = await self._run(self._poll_blocking, self.query_timeout_s, "poll")
            if result is None:
                return _NO_ANSWER
            reading, still_connected = result
            if not still_connected:
                self._lost("the adapter stopped answering")
            return reading

    async def read_vin(self) -> str | None:
        """The VIN (mode 09 PID 02), None when the car gives none or gives no VIN."""
        async with self._lock:
            if not await self._ready_locked():
                log.info("%s: no VIN: the car is not connected", self.port)
                return None
            result = await self._run(self._vin_blocking, self.query_timeout_s, "VIN read")
        if result is None:
            return None
        answers, still_connected = result
        if not still_connected:
            self._lost("the adapter stopped answering")
        if not answers:
            log.info("%s: no VIN: the car did not answer mode 09 PID 02", self.port)
            return None
        for data in answers:
            try:
                vin = decode_vin(data)
            except VinError:
                continue
            log.info("%s: VIN %s read", self.port, mask_vin(vin))
            return vin
        shown = answers[0].strip(_CONTROL).decode("ascii", "replace")
        log.warning(
            "%s: no VIN: the answer to mode 09 PID 02 is no VIN (%d characters: %s)",
            self.port,
            len(shown),
            mask_vin(shown),
        )
        return None

    async def close(self) -> None:
        """Release the adapter; reads answer None afterwards. Waits for a call in flight."""
        async with self._lock:
            self._closed = True
            busy = self._busy
            if busy is not None and not busy.done():
                await asyncio.wait([busy], timeout=self.query_timeout_s)
                if not busy.done():
                    log.warning("%s: a stuck OBD call still holds the port", self.port)
                    return
            self._connected = False
            await self._run(self._drop_blocking, self.query_timeout_s, "close")

    async def _ready_locked(self) -> bool:
        """Whether a connection to the car is up, after connecting if one is due."""
        if self._connected:
            return True
        if self._closed or self._clock() < self._next_connect_at:
            return False
        return await self._connect_locked()

    async def _connect_locked(self) -> bool:
        if self._closed:
            return False
        self._next_connect_at = self._clock() + self.reconnect_interval_s
        outcome = await self._run(self._connect_blocking, self.connect_timeout_s, "connection")
        self._connected = outcome == "car"
        if outcome == "car":
            if self._trouble is not None or self._car_silent:
                log.info("%s: connected to the car again", self.port)
            self._trouble = None
            self._car_silent = False
        elif outcome == "no car":
            if self._trouble is not None:
                log.info("%s: the adapter answers again", self.port)
                self._trouble = None
            if not self._car_silent:
                log.info("%s: the adapter answers, no ECU does (ignition off?)", self.port)
                self._car_silent = True
        elif outcome is not None:
            self._warn_once(outcome)
        return self._connected

    def _lost(self, reason: str) -> None:
        """The adapter went mid-call: read None until a later, rate-limited reconnect."""
        self._connected = False
        self._next_connect_at = self._clock() + self.reconnect_interval_s
        self._warn_once(reason)

    def _warn_once(self, reason: str) -> None:
        """Warn of the first adapter trouble until the car answers again; the rest is debug."""
        if self._trouble is None:
            log.warning("%s: %s; readings are empty until it is back", self.port, reason)
            self._trouble = reason
        else:
            log.debug("%s: %s", self.port, reason)

    async def _run(self, job: Callable[[], T], timeout_s: float, what: str) -> T | None:
        """``job()`` in a worker thread; None if the port is busy, it timed out or failed.

        The worker's future is shielded so that it stays ``_busy`` until the thread is
        really done: no second call reaches python-OBD while the first still runs.
        """
        if self._busy is not None and not self._busy.done():
            log.debug("%s: %s skipped: an earlier OBD call still holds the port", self.port, what)
            return None
        busy = asyncio.get_running_loop().run_in_executor(None, self._guarded, job)
        self._busy = busy
        try:
            return await asyncio.wait_for(asyncio.shield(busy), timeout_s)
        except TimeoutError:
            self._lost(f"the adapter did not answer a {what} within {timeout_s} s")
        except Exception as exc:  # python-OBD's failures end here, not in the caller
            log.debug("%s: %s failed", self.port, what, exc_info=True)
            self._lost(f"python-OBD failed ({exc!r})")
        return None

    def _guarded(self, job: Callable[[], T]) -> T:
        """Run ``job``; if python-OBD raises, drop the connection before passing it on."""
        try:
            return job()
        except Exception:
            with contextlib.suppress(Exception):
                self._drop_blocking()
            raise

    def _connect_blocking(self) -> str:
        """Open the adapter: "car", "no car", or why there is no adapter."""
        self._drop_blocking()
        if self.port.startswith("/") and not os.path.exists(self.port):
            return "no such port"
        connection = obd.OBD(self.port, baudrate=self.baudrate, protocol=self.protocol, fast=False)
        status = connection.status()
        if status == obd.OBDStatus.CAR_CONNECTED:
            self._connection = connection
            log.debug("%s: protocol %s", self.port, connection.protocol_name())
            return "car"
        connection.close()
        if status == obd.OBDStatus.NOT_CONNECTED:
            return "no ELM327 answers on the port"
        return "no car"

    def _poll_blocking(self) -> tuple[Reading, bool]:
        connection = self._connection
        if connection is None:
            return _NO_ANSWER, False
        speed = _quantity(connection.query(obd.commands.SPEED, force=True), "km/h")
        rpm = _quantity(connection.query(obd.commands.RPM, force=True), "rpm")
        return Reading(speed, rpm), self._still_connected(connection)

    def _vin_blocking(self) -> tuple[list[bytes], bool]:
        """The data of each VIN answer after 49 02 (python-OBD's decoded value is unused)."""
        connection = self._connection
        if connection is None:
            return [], False
        response = connection.query(obd.commands.VIN, force=True)
        answers = [bytes(m.data[2:]) for m in response.messages if len(m.data) > 2]
        return answers, self._still_connected(connection)

    def _still_connected(self, connection: Any) -> bool:
        if connection.status() == obd.OBDStatus.CAR_CONNECTED:
            return True
        self._drop_blocking()
        return False

    def _drop_blocking(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
