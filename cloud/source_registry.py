"""Every policy source at once: ``SourceRegistry`` asks all of them concurrently,
aggregates the answers (``cloud.aggregate``) and caches the result per vehicle, sharing
one round of look-ups among concurrent callers. The HTTP is ``cloud.sources``'s.
"""

import asyncio
import itertools
import random
from collections import Counter
from typing import Self

from agent.protocol.clock import Clock, SystemClock

from .aggregate import Aggregate, AggregateCache, Outcome, SourceFailure, aggregate
from .source_wire import Registered, normal_plate
from .sources import InsurerClient, SourceClient, SourceError, SourcesConfig, make_client


def vehicle_key(plate: str | None, vin: str | None) -> str:
    """The cache key of a vehicle: its VIN, else its plate."""
    if vin:
        return vin.strip().upper()
    if plate:
        return f"plate:{normal_plate(plate)}"
    raise ValueError("give a plate or a VIN")


class SourceRegistry:
    """Every configured source, asked at once; results aggregated and cached per vehicle."""

    def __init__(
        self,
        config: SourcesConfig,
        *,
        clock: Clock | None = None,
        counters: Counter[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.clients: dict[str, SourceClient] = {
            s.name: make_client(s, counters=self.counters, clock=self.clock, rng=rng)
            for s in config.sources
        }
        self.cache = AggregateCache(config.cache_ttl_s, config.retry_after_s)
        self._inflight: dict[str, asyncio.Task[Aggregate]] = {}
        self._names = itertools.count(1)

    async def vehicle(self, plate: str | None, vin: str | None) -> Registered:
        """The vehicle's facts from the national platform (SourceError when it has none,
        ``not_found`` when it knows no such vehicle)."""
        national = next((c for c in self.clients.values() if c.kind == "national"), None)
        if national is None:
            raise SourceError("national", "refused", "no national platform is configured")
        return await national.vehicle(plate, vin)

    def insurer(self, code: str) -> InsurerClient:
        """The insurer ``code``'s client; KeyError when there is none."""
        client = self.clients.get(code)
        if not isinstance(client, InsurerClient):
            raise KeyError(f"no insurer {code!r} among the sources")
        return client

    async def lookup_all(self, plate: str | None, vin: str | None) -> list[Outcome]:
        """Every source's outcome for the vehicle, asked concurrently."""
        key = vehicle_key(plate, vin)

        async def ask(client: SourceClient) -> Outcome:
            try:
                return await client.lookup(plate, vin)
            except SourceError as exc:
                last = self.cache.last_good_at(key, client.name)
                return SourceFailure(client.name, client.kind, exc.reason, self.clock.now(), last)

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(ask(c), name=f"lookup-{c.name}") for c in self.clients.values()]
        return [t.result() for t in tasks]

    async def refresh(
        self, plate: str | None, vin: str | None, *, force: bool = False
    ) -> Aggregate:
        """The vehicle's aggregate: from the cache while fresh, unless ``force``.

        Concurrent calls for one vehicle share one round of look-ups (a forced call joins
        a round already under way: it began after the caller's reason to force).
        """
        key = vehicle_key(plate, vin)
        if not force:
            hit = self.cache.get(key, self.clock.now())
            if hit is not None:
                self.counters["cache.hit"] += 1
                return hit
        task = self._inflight.get(key)
        if task is None:
            self.counters["cache.miss"] += 1
            task = asyncio.create_task(self._fetch(key, plate, vin),
                                       name=f"refresh-{next(self._names)}")  # fmt: skip
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        return await asyncio.shield(task)

    def _forget(self, key: str, task: asyncio.Task[Aggregate]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch(self, key: str, plate: str | None, vin: str | None) -> Aggregate:
        outcomes = await self.lookup_all(plate, vin)
        now = self.clock.now()
        result = aggregate(outcomes, now)
        self.cache.put(key, result, now)
        return result

    async def aclose(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        for client in self.clients.values():
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
