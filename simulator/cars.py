"""Many cars in one process: each a real ``Agent`` with its own key, certificate and SQLite."""

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.runner import Agent
from agent.vehicle import SimulatedBus
from cloud.pki import DevPki


def car_config(
    pki: DevPki,
    vid: str,
    workdir: Path,
    broker_port: int,
    status_interval_s: float = 3600.0,
    **overrides: Any,
) -> AgentConfig:
    """The config of simulated car ``vid``: its PKI files and its own SQLite file.

    ``overrides`` set any other AgentConfig field (e.g. shorter timeouts in tests).
    """
    d = pki.car_dir(vid)
    return AgentConfig(
        vid=vid,
        key_file=d / "car.key",
        cert_file=d / "car.crt",
        ca_file=pki.ca_cert,
        cloud_keys=(pki.signing_pub,),
        broker_port=broker_port,
        db_path=workdir / vid / "agent.db",
        status_interval_s=status_interval_s,
        **overrides,
    )


class SimulatedFleet:
    """Runs one Agent per car in a TaskGroup until ``stop()``."""

    def __init__(self, configs: list[AgentConfig], buses: list[SimulatedBus] | None = None) -> None:
        """One agent per config; ``buses`` (one per config) give them vehicle signals."""
        if buses is not None and len(buses) != len(configs):
            raise ValueError("one bus per car")
        self.buses = buses
        self.agents = [
            Agent(c, bus=None if buses is None else buses[i]) for i, c in enumerate(configs)
        ]

    async def run(self) -> None:
        """Run every agent; return once all have stopped."""
        async with asyncio.TaskGroup() as tg:
            for agent in self.agents:
                tg.create_task(agent.run(), name=f"car-{agent.config.vid}")

    def stop(self) -> None:
        """Ask every agent to announce offline, disconnect and return."""
        for agent in self.agents:
            agent.stop()

    def verified(self) -> int:
        """How many cars hold a verified policy state."""
        return sum(a.state is not None for a in self.agents)

    async def wait_all_verified(
        self, timeout_s: float, progress: Callable[[int, int], None] | None = None
    ) -> bool:
        """Wait until every car holds a verified state; report progress; False on timeout."""
        total = len(self.agents)
        last = -1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while (done := self.verified()) < total:
                    if progress is not None and done != last:
                        progress(done, total)
                        last = done
                    await asyncio.sleep(0.1)
        done = self.verified()
        if progress is not None:
            progress(done, total)
        return done == total
