"""Shared by the fleet tests (API and browser): the API served with operator-action hooks,
a seeded fleet, and a real webhook receiver."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.protocol import calendar, messages
from agent.protocol.messages import VehicleEvent
from cloud.alert_delivery import verify_alert
from cloud.handler import IntentRow, VehicleState
from cloud.pki import DevPki
from cloud.policy import PolicyRecord
from simulator.broker import free_port

from .conftest import Api, RecordingEvents, serving, within


@dataclass
class FleetEvents(RecordingEvents):
    """The recorded hooks plus the worker's operator actions."""

    refreshed: list[str] = field(default_factory=list)
    refresh_outcome: str = "updated"
    renewals: dict[str, str] = field(default_factory=dict)
    """intent_id -> vid of every operator renewal started."""

    async def force_refresh(self, vid: str) -> str:
        self.refreshed.append(vid)
        return self.refresh_outcome

    async def operator_renewal(self, vid: str, intent_id: str) -> bool:
        if intent_id in self.renewals:
            return False
        self.renewals[intent_id] = vid
        return True


def serving_fleet(
    pki: DevPki, tmp_path: Path, *, events_interval_s: float = 0.2, **settings: object
) -> AbstractAsyncContextManager[Api]:
    """The API over TLS (as tests/cloud_api/conftest.py serves it) with FleetEvents, live
    streams paced at ``events_interval_s``, and ``settings`` in its CloudConfig."""
    return serving(
        pki, tmp_path, FleetEvents(), settings, fleet_events_interval_s=events_interval_s,
        fleet_events_keepalive_s=1.0,
    )  # fmt: skip


@dataclass
class Seeded:
    """A seeded fleet: its id, token, vids by role, and another fleet's vid."""

    fleet_id: str
    token: str
    vids: dict[str, str]
    other_vid: str
    other_token: str


DAYS: dict[str, int | None] = {
    "active": 200,
    "expiring": 20,
    "soon": 5,
    "lapsed": -3,
    "unknown": None,
}
"""The seeded fleet's cars by role: days of cover left (None: no policy known)."""


async def policy(api: Api, vid: str, days: int, **extra: object) -> PolicyRecord:
    """Store a policy for ``vid`` ending ``days`` from today (China)."""
    now = api.clock.now()
    end = calendar.china_date(now) + timedelta(days=days)
    record = PolicyRecord(
        vid=vid, insurer_code="PICC", insurer_name="PICC P&C", policy_no_masked="PDZA****0001",
        coverage_start=end - timedelta(days=364), coverage_end=end, source="national",
        verified_at=now - timedelta(hours=2), **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    await api.store.put_policy(record)
    return record


async def seed_fleet(api: Api) -> Seeded:
    """Fleet A with a car per DAYS role (the active and soon cars seen just now) and
    fleet B with one expiring car."""
    a_id, a_token = await api.fleet("fleet A")
    b_id, b_token = await api.fleet("fleet B")
    vids = {role: (await api.enrolled((a_id, a_token)))[0] for role in DAYS}
    other, _ = await api.enrolled((b_id, b_token))
    for role, days in DAYS.items():
        if days is not None:
            await policy(api, vids[role], days)
    await policy(api, other, 3)
    now = api.clock.now()
    for role in ("active", "soon"):
        seen = VehicleState(kid="k", key=None, last_seq=3, last_seen=now)  # type: ignore[arg-type]
        await api.store.save_counters([seen.row(vids[role])])
    return Seeded(a_id, a_token, vids, other, b_token)


async def car_event(
    api: Api, vid: str, kind: str, intent_id: str, seq: int, detail: str | None = None
) -> None:
    """Record ``vid``'s vehicle.event intent as the worker would (its link left as it was)."""
    now = api.clock.now()
    body = VehicleEvent(
        vid=vid,
        seq=seq,
        intent_id=intent_id,
        event=kind,
        at=now,
        detail=detail,  # type: ignore[arg-type]
    )
    row = IntentRow(vid, intent_id, "vehicle.event", messages.encode(body), seq, now)
    await api.store.save_counters([], [row])


@dataclass
class Hook:
    """A fleet webhook as the config holds it."""

    fleet_id: str
    url: str
    secret: SecretStr


@dataclass
class Receiver:
    """A real HTTP webhook receiver: verifies signatures, answers ``fail_first`` with 500."""

    secret: str
    fail_first: int = 0
    calls: int = 0
    received: list[tuple[str, bytes]] = field(default_factory=list)
    """(alert id, body) of every verified delivery, duplicates included."""
    refused: int = 0
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        self.calls += 1
        body = await request.body()
        h = request.headers
        if not verify_alert(self.secret, h.get("x-ctpl-timestamp"), h.get("x-ctpl-signature"),
                            body):  # fmt: skip
            self.refused += 1
            return Response(status_code=401)
        if self.calls <= self.fail_first:
            return Response(status_code=500)
        self.received.append((h["x-ctpl-alert-id"], body))
        return Response(status_code=204)

    def unique(self) -> set[str]:
        """What a receiver that dedups by X-CTPL-Alert-Id keeps."""
        return {alert_id for alert_id, _ in self.received}


@asynccontextmanager
async def receiving(secret: str, fail_first: int = 0) -> AsyncIterator[Receiver]:
    """A Receiver served by uvicorn over plain HTTP on a free port."""
    receiver = Receiver(secret, fail_first)
    port = free_port()
    receiver.url = f"http://127.0.0.1:{port}/hook"
    app = Starlette(routes=[Route("/hook", receiver.endpoint, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve(), name="test-receiver")
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield receiver
    finally:
        server.should_exit = True
        await within(task)
