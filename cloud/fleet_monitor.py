"""The fleet monitor: every ``alert_interval_s``, derive each fleet's alerts and deliver them.

Per tick and fleet: the vehicle summaries (as the fleet API shows them), the cars'
``vehicle.event`` intents since the last tick (the first tick looks back
``FIRST_LOOK_BACK``), the vehicles with an open renewal flow; ``alerts.derive``; the new
ones stored (first writer wins across processes); then the due webhooks are sent. Any
number of workers may run one: they derive the same alert ids.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from . import alerts as al
from .alert_delivery import AlertSender
from .config import CloudConfig
from .errors import StoreError
from .fleet_view import summarize
from .policy import PolicyRecord
from .renewal_flow import OPEN
from .store import Store

log = logging.getLogger(__name__)
FIRST_LOOK_BACK: Final = timedelta(hours=24)
OVERLAP: Final = timedelta(minutes=5)
"""Events are re-read this far behind the newest seen: workers' clocks and commits race;
a re-read event derives the same alert id, which is not stored twice."""
MAX_KNOWN: Final = 100_000


class FleetMonitor:
    """Derives, stores and delivers fleet alerts; ``counters`` feed /metrics."""

    def __init__(
        self,
        store: Store,
        config: CloudConfig,
        now: Callable[[], datetime],
        sender: AlertSender | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.now = now
        self.sender = sender or AlertSender(
            config.fleet_webhooks, allow_loopback=config.allow_loopback_webhooks
        )
        self.interval_s = config.alert_interval_s
        self.counters: Counter[str] = self.sender.counters  # one set of counters
        self._since: dict[str, datetime] = {}
        self._known: set[str] = set()
        """Alert ids this process knows are stored (spares the store a write per tick)."""

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled; a failed tick is logged and counted.
        Closes the sender's HTTP client when it ends."""
        try:
            while True:
                try:
                    await self.tick()
                except StoreError as exc:
                    log.error("fleet monitor: %s", exc)
                    self.counters["monitor_tick_failed"] += 1
                await asyncio.sleep(self.interval_s)
        finally:
            await self.sender.aclose()

    async def tick(self) -> list[str]:
        """One round over every fleet; the ids of the alerts newly stored."""
        now = self.now()
        new: list[str] = []
        policies = await self.store.load_policies()  # once per tick, for every fleet
        for fleet_id in await self.store.fleet_ids():
            new += await self.check_fleet(fleet_id, now, policies)
        await self.sender.deliver_due(self.store, now)
        self.counters["monitor_ticks"] += 1
        return new

    async def check_fleet(
        self, fleet_id: str, now: datetime, policies: dict[str, PolicyRecord] | None = None
    ) -> list[str]:
        """Derive and store ``fleet_id``'s alerts at ``now``; the ids newly stored."""
        if policies is None:
            policies = await self.store.load_policies()
        within = self.config.expiring_within_days
        summaries = [
            summarize(vid, policies.get(vid), seen, revoked is not None, now, within)
            for vid, revoked, seen in await self.store.fleet_vehicles(fleet_id)
        ]
        since = self._since.get(fleet_id, now - FIRST_LOOK_BACK)
        rows = await self.store.fleet_vehicle_events(fleet_id, since)
        if rows:
            newest = max(r.received_at for r in rows)
            self._since[fleet_id] = max(since, newest - OVERLAP)
        elif fleet_id not in self._since:
            self._since[fleet_id] = since
        renewing: set[str] = set()
        for v in summaries:
            if al.needs_renewal(v) and v.days_left is not None and v.days_left >= 0:
                flows = await self.store.flows("vid", (v.vid,))
                if any(f.stage in OPEN for f in flows):
                    renewing.add(v.vid)
        derived = al.derive(fleet_id, summaries, al.decode_events(rows), renewing, now)
        fresh = [a for a in derived if a.alert_id not in self._known]
        if not fresh:
            return []
        added = await self.store.add_alerts(fresh)
        if len(self._known) > MAX_KNOWN:
            self._known.clear()
        self._known.update(a.alert_id for a in fresh)
        self.counters["alerts_raised"] += len(added)
        for a in fresh:
            if a.alert_id in added:
                self.counters[f"alerts_raised.{a.kind}"] += 1
        return added
