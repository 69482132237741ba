"""Vehicle signals: the bus interface, a simulated bus, and the pure signal tracker.

A ``VehicleBus`` answers ``read()`` with a ``Reading`` (speed and RPM, each None when the
car did not answer) and ``read_vin()`` with the VIN it reports. Ignition is inferred:
an ECU answers only while the ignition is on, so a reading with any answer means on and
one with none means off. ``Signals`` turns readings into ``reminders.Vehicle`` (with a trip
counter that grows at every ignition-on) and the transitions the fleet hears of.

The OBD-II adapter (python-OBD over an ELM327) lives in ``obd_bus`` and is imported only
when configured: python-OBD pulls in pint, which would double the agent's memory.
"""

from dataclasses import dataclass
from typing import Protocol

from .protocol.vin import VIN_RE, VinError, check_vin, vin_digest
from .reminders import Vehicle

__all__ = [
    "VIN_RE",
    "Reading",
    "Signals",
    "SimulatedBus",
    "VehicleBus",
    "VinError",
    "check_vin",
    "vin_digest",
]


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
