"""Vehicle signals: the bus interface, a simulated bus, and the pure signal tracker.

A ``VehicleBus`` answers ``read()`` with a ``Reading`` (speed and RPM, each None when the
car did not answer) and ``read_vin()`` with the VIN it reports. Ignition is inferred:
an ECU answers only while the ignition is on, so a reading with any answer means on and
one with none means off. ``Signals`` turns readings into ``reminders.Vehicle`` (with a trip
counter that grows at every ignition-on) and the transitions the fleet hears of.

The OBD-II adapter (python-OBD over an ELM327) lives in ``obd_bus`` and is imported only
when configured: python-OBD pulls in pint, which would double the agent's memory.
"""

import hashlib
import re
from dataclasses import dataclass
from typing import Final, Protocol

from .reminders import Vehicle

VIN_RE: Final = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
"""A VIN: 17 letters and digits, never I, O or Q (ISO 3779)."""


class VinError(ValueError):
    """Text that is not a VIN."""


def check_vin(text: str) -> str:
    """The VIN in ``text`` (spaces and NULs trimmed, upper-cased); raise VinError if none."""
    vin = text.strip().strip("\x00").strip().upper()
    if VIN_RE.fullmatch(vin) is None:
        raise VinError("not a 17-character VIN")
    return vin


def vin_digest(vid: str, vin: str) -> str:
    """What a ``policy.state`` carries instead of the VIN: SHA-256 over the vid and VIN.

    Salted by the vid, so that it is no identifier across cars; it lets the car check the
    VIN it reads off the bus against the policy's without the VIN crossing the broker.
    """
    return hashlib.sha256(f"ctpl-vin/1\n{vid}\n{check_vin(vin)}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll of the bus: None where the car gave no answer."""

    speed_kmh: float | None
    rpm: float | None

    @property
    def answered(self) -> bool:
        """Whether any ECU answered (the ignition is on)."""
        return self.speed_kmh is not None or self.rpm is not None


class VehicleBus(Protocol):
    """Where vehicle signals come from (OBD-II, CAN, the simulator)."""

    async def read(self) -> Reading:
        """Poll speed and RPM now; never raise for a silent car (None values)."""
        ...

    async def read_vin(self) -> str | None:
        """The VIN the car reports (mode 09 PID 02), None if it does not answer."""
        ...

    async def close(self) -> None:
        """Release the bus."""
        ...


@dataclass
class SimulatedBus:
    """A bus the simulator and the tests drive by setting its fields."""

    ignition_on: bool = True
    speed_kmh: float = 0.0
    rpm: float = 800.0
    vin: str | None = None

    async def read(self) -> Reading:
        """The set values, or no answer at all with the ignition off."""
        if not self.ignition_on:
            return Reading(None, None)
        return Reading(self.speed_kmh, self.rpm)

    async def read_vin(self) -> str | None:
        """The set VIN (None while the ignition is off)."""
        return self.vin if self.ignition_on else None

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class Signals:
    """Folds readings into the vehicle's state and its transitions. Pure.

    ``trip`` counts ignition-on transitions seen (the first answering reading after
    start counts as one: the agent starts with the car).
    """

    trip: int = 0
    ignition_on: bool = False
    moving: bool = False
    speed_kmh: float = 0.0

    def feed(self, reading: Reading) -> list[str]:
        """Take one reading; return the ``vehicle.event`` kinds it caused, in order."""
        events: list[str] = []
        on = reading.answered
        if on and not self.ignition_on:
            self.trip += 1
            events.append("ignition_on")
        elif not on and self.ignition_on:
            events.append("ignition_off")
        self.ignition_on = on
        self.speed_kmh = (reading.speed_kmh or 0.0) if on else 0.0
        moving = self.speed_kmh > 0
        if on and moving != self.moving:
            events.append("moving" if moving else "parked")
        self.moving = moving
        return events

    @property
    def vehicle(self) -> Vehicle:
        """The state for the reminder engine."""
        return Vehicle(self.trip, self.ignition_on, self.speed_kmh)
