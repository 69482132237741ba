"""The fleet operator's API: vehicles (list, CSV, detail), alerts, live events, actions.

Every route is scoped to one fleet: its operator token (or the admin's) opens it; another
fleet's token gets 403, a vehicle of another fleet 404 (never a hint that it exists).
Operator actions (refresh, bulk renewal) go to the worker through ``reg.events``; a bulk
renewal is idempotent by its ``Idempotency-Key``. ``/webhook`` sets where the fleet's
alerts are posted (docs/alerts.md). ``GET /fleet`` serves the dashboard.
"""

import asyncio
import hashlib
import logging
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from agent.protocol import calendar, messages
from agent.protocol.errors import ProtocolError

from . import alerts as al
from . import dashboard_page, outbound
from . import enrollment as en
from . import fleet_events as fe
from .errors import Refused, StoreError
from .fleet_view import Filters, VehicleSummary, counts, page, summarize, to_csv
from .policy import PolicyRecord
from .registrar import HOOK_TIMEOUT_S, Registrar
from .renewal_flow import Flow

log = logging.getLogger(__name__)
StatusName = Literal[
    "active", "expiring", "lapsed", "pending", "renewal_pending", "unknown", "revoked"
]
IDEMPOTENCY_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_EVENTS_SHOWN: Final = 50
MAX_STREAMS: Final = 256
"""Live streams one API process holds open at most (each re-reads the store every second)."""


class RenewalsRequest(BaseModel):
    """``POST /v1/fleets/{id}/renewals``: the vehicles to start a renewal for."""

    model_config = ConfigDict(extra="forbid")
    vids: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        min_length=1, max_length=500
    )


class WebhookRequest(BaseModel):
    """``PUT /v1/fleets/{id}/webhook``: where the fleet's alerts go, and the signing secret."""

    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, StringConstraints(max_length=512)]
    secret: Annotated[str, StringConstraints(min_length=16, max_length=128)]


def _bearer(request: Request) -> str | None:
    """The request's bearer token, or None when it has no well-formed one."""
    return en.bearer_token(request.headers.get("authorization", ""))


def _json(v: VehicleSummary) -> dict[str, Any]:
    def iso(x: Any) -> Any:
        return x.isoformat() if hasattr(x, "isoformat") else x

    return {k: iso(getattr(v, k)) for k in v.__dataclass_fields__}


def _flow(f: Flow) -> dict[str, Any]:
    return {
        "renewal_id": f.renewal_id,
        "stage": f.stage.value,
        "insurer_code": f.insurer_code,
        "amount": f.amount,
        "new_end": None if f.new_end is None else f.new_end.isoformat(),
        "history": list(f.history),
        "message": f.message,
        "reason": f.reason,
        "new_starts_at": None if f.new_starts_at is None else f.new_starts_at.isoformat(),
    }


def _policy(record: PolicyRecord | None, now: datetime) -> dict[str, Any] | None:
    """The term in force at ``now`` and the next one bought, if any (numbers masked)."""
    if record is None:
        return None
    term = record.rolled(now)
    nxt = None
    if term.next_end is not None:
        nxt = {
            "insurer_code": term.next_insurer_code or term.insurer_code,
            "insurer_name": term.next_insurer_name or term.insurer_name,
            "policy_no_masked": term.next_policy_no_masked,
            "coverage_start": calendar.renewal_start(term.coverage_end).isoformat(),
            "coverage_end": term.next_end.isoformat(),
        }
    return {
        "insurer_code": term.insurer_code,
        "insurer_name": term.insurer_name,
        "policy_no_masked": term.policy_no_masked,
        "coverage_start": term.coverage_start.isoformat(),
        "starts_at": term.start_instant.isoformat(),
        "coverage_end": term.coverage_end.isoformat(),
        "source": term.source,
        "verified_at": term.verified_at.isoformat(),
        "next": nxt,
    }


def operator_intent_id(fleet_id: str, key: str, vid: str) -> str:
    """The intent id of an operator's renewal of ``vid`` under idempotency ``key``."""
    return hashlib.sha256(f"{fleet_id}:{key}:{vid}".encode()).hexdigest()[:32]


def add_fleet_routes(app: FastAPI, reg: Registrar) -> None:
    """Register the fleet routes on ``app``, served by ``reg``'s store and clock.

    ``app.state.fleet_events_interval_s`` / ``fleet_events_keepalive_s``, when set, pace
    the live streams (tests make them short).
    """
    streams_open = 0

    async def authorized(request: Request, fleet_id: str) -> None:
        well_formed = en.FLEET_ID_RE.fullmatch(fleet_id) is not None
        fleet = await reg.store.fleet(fleet_id) if well_formed else None
        await reg.authorize(_bearer(request), fleet)
        if fleet is None:
            raise Refused(404, "fleet_unknown", "no such fleet")

    async def rows_of(fleet_id: str) -> list[VehicleSummary]:
        now: datetime = reg.clock.now()
        policies = await reg.store.fleet_policies(fleet_id)
        within = reg.config.expiring_within_days
        return [
            summarize(vid, policies.get(vid), seen, revoked is not None, now, within)
            for vid, revoked, seen in await reg.store.fleet_vehicles(fleet_id)
        ]

    async def summaries(request: Request, fleet_id: str) -> list[VehicleSummary]:
        await authorized(request, fleet_id)
        return await rows_of(fleet_id)

    async def member(request: Request, fleet_id: str, vid: str) -> VehicleSummary:
        found = {v.vid: v for v in await summaries(request, fleet_id)}.get(vid)
        if found is None:
            raise Refused(404, "vehicle_unknown", "no such vehicle in this fleet")
        return found

    @app.get("/v1/fleets/{fleet_id}/vehicles")
    async def list_vehicles(
        request: Request,
        fleet_id: str,
        status: Annotated[list[StatusName] | None, Query()] = None,
        expires_within_days: Annotated[int | None, Query(ge=0, le=366)] = None,
        link: Literal["online", "offline", "unknown"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        after: Annotated[str | None, Query(max_length=40, pattern=r"^v[0-9a-z]{7,39}$")] = None,
    ) -> dict[str, Any]:
        rows = await summaries(request, fleet_id)
        filters = Filters(frozenset(status) if status else None, expires_within_days, link)
        chosen, cursor = page(rows, filters, limit, after)
        reg.counters["fleet_list"] += 1
        return {
            "vehicles": [_json(v) for v in chosen],
            "next": cursor,
            "counts": counts(rows),
            "total": len(rows),
        }

    @app.get("/v1/fleets/{fleet_id}/vehicles.csv")
    async def export_csv(request: Request, fleet_id: str) -> PlainTextResponse:
        rows = await summaries(request, fleet_id)
        reg.counters["fleet_csv"] += 1
        return PlainTextResponse(
            to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{fleet_id}-vehicles.csv"'},
        )

    @app.get("/v1/fleets/{fleet_id}/vehicles/{vid}")
    async def vehicle(request: Request, fleet_id: str, vid: str) -> dict[str, Any]:
        found = await member(request, fleet_id, vid)
        flows = await reg.store.flows("vid", (vid,))
        record = (await reg.store.load_policies(vid)).get(vid)
        events: list[dict[str, Any]] = []
        for row in reversed(await reg.store.intents(vid)):
            if row.type != "vehicle.event" or len(events) >= MAX_EVENTS_SHOWN:
                continue
            try:
                body = messages.decode(row.body)
            except ProtocolError:
                continue
            if isinstance(body, messages.VehicleEvent):
                events.append({
                    "event": body.event,
                    "at": None if body.at is None else body.at.isoformat(),
                    "received_at": row.received_at.isoformat(),
                    "detail": al.safe_detail(body.detail),
                })  # fmt: skip
        reg.counters["fleet_vehicle"] += 1
        return {
            "vehicle": _json(found),
            "renewals": [_flow(f) for f in flows],
            "policy": _policy(record, reg.clock.now()),
            "events": events,
        }

    @app.get("/v1/fleets/{fleet_id}/alerts")
    async def list_alerts(
        request: Request, fleet_id: str, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> dict[str, Any]:
        await authorized(request, fleet_id)
        rows = await reg.store.fleet_alerts(fleet_id, limit)
        reg.counters["fleet_alerts"] += 1
        return {"alerts": [al.to_json(a) for a in rows]}

    @app.post("/v1/fleets/{fleet_id}/vehicles/{vid}/refresh", status_code=202)
    async def refresh(request: Request, fleet_id: str, vid: str) -> dict[str, Any]:
        await member(request, fleet_id, vid)
        try:
            async with asyncio.timeout(HOOK_TIMEOUT_S):
                outcome = await reg.events.force_refresh(vid)
        except TimeoutError:
            raise Refused(504, "timeout", "the policy sources did not answer in time") from None
        reg.counters["fleet_refresh"] += 1
        return {"vid": vid, "outcome": outcome}

    @app.post("/v1/fleets/{fleet_id}/renewals", status_code=202)
    async def renewals(
        request: Request,
        fleet_id: str,
        req: RenewalsRequest,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        await authorized(request, fleet_id)
        if idempotency_key is None or IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key) is None:
            raise Refused(
                422, "bad_idempotency_key", "an Idempotency-Key of 8..64 [A-Za-z0-9_-] is needed"
            )
        rows = {v.vid: v for v in await rows_of(fleet_id)}
        results: list[dict[str, str]] = []
        for vid in dict.fromkeys(req.vids):  # once each, in the order given
            outcome = await start(fleet_id, idempotency_key, vid, rows.get(vid))
            results.append({"vid": vid, "outcome": outcome})
        return {"results": results}

    async def start(fleet_id: str, key: str, vid: str, row: VehicleSummary | None) -> str:
        if row is None:
            return "vehicle_unknown"
        if row.status == "revoked":
            return "vehicle_revoked"
        try:
            async with asyncio.timeout(HOOK_TIMEOUT_S):
                new = await reg.events.operator_renewal(vid, operator_intent_id(fleet_id, key, vid))
        except Refused:
            raise  # the worker is not there: nothing can start
        except Exception:
            log.exception("operator renewal of %s failed", vid)
            reg.counters["fleet_renewal_failed"] += 1
            return "failed"
        reg.counters["fleet_renewal_started" if new else "fleet_renewal_repeated"] += 1
        return "started" if new else "already_started"

    async def read_snapshot(fleet_id: str) -> fe.Snapshot:
        rows = await rows_of(fleet_id)
        alerts = [al.to_json(a) for a in await reg.store.fleet_alerts(fleet_id, 100)]
        return fe.snapshot([_json(v) for v in rows], counts(rows), alerts)

    @app.get("/v1/fleets/{fleet_id}/events")
    async def live(request: Request, fleet_id: str) -> StreamingResponse:
        nonlocal streams_open
        await authorized(request, fleet_id)
        if streams_open >= MAX_STREAMS:
            raise Refused(503, "too_many_streams", "too many live streams; retry later")
        interval = getattr(request.app.state, "fleet_events_interval_s", fe.EVENTS_INTERVAL_S)
        keepalive = getattr(request.app.state, "fleet_events_keepalive_s", fe.KEEPALIVE_S)

        async def body() -> Any:
            nonlocal streams_open
            streams_open += 1
            reg.counters["fleet_streams"] += 1
            try:
                async for chunk in fe.stream(
                    lambda: read_snapshot(fleet_id), interval_s=interval, keepalive_s=keepalive
                ):
                    yield chunk
            except StoreError as exc:  # end the stream; the client reconnects
                log.error("fleet stream: %s", exc)
                reg.counters["fleet_stream_store_error"] += 1
            finally:
                streams_open -= 1

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.put("/v1/fleets/{fleet_id}/webhook")
    async def set_webhook(request: Request, fleet_id: str, req: WebhookRequest) -> dict[str, str]:
        await authorized(request, fleet_id)
        # The outbound policy (cloud.outbound), the name resolved now; delivery checks again
        # on the address it connects to. app.state.outbound_resolver: tests stand in for DNS.
        problem = await outbound.check_url(
            req.url,
            allow_loopback=reg.config.allow_loopback_webhooks,
            resolver=getattr(request.app.state, "outbound_resolver", outbound.system_resolver),
        )
        if problem is not None:
            reg.counters[f"fleet_webhook_refused.{problem.reason}"] += 1
            raise Refused(422, "webhook_url_refused", f"{problem.reason}: {problem.message}")
        await reg.store.set_fleet_webhook(fleet_id, req.url, req.secret, reg.clock.now())
        reg.counters["fleet_webhook_set"] += 1
        return {"fleet_id": fleet_id, "url": req.url}

    @app.get("/v1/fleets/{fleet_id}/webhook")
    async def get_webhook(request: Request, fleet_id: str) -> dict[str, str]:
        await authorized(request, fleet_id)
        hook = (await reg.store.fleet_webhooks()).get(fleet_id)
        if hook is None:
            raise Refused(404, "webhook_unset", "no webhook set for this fleet")
        return {"fleet_id": fleet_id, "url": hook[0]}  # never the secret

    @app.delete("/v1/fleets/{fleet_id}/webhook", status_code=204)
    async def delete_webhook(request: Request, fleet_id: str) -> Response:
        await authorized(request, fleet_id)
        if not await reg.store.delete_fleet_webhook(fleet_id):
            raise Refused(404, "webhook_unset", "no webhook set for this fleet")
        reg.counters["fleet_webhook_deleted"] += 1
        return Response(status_code=204)

    @app.get("/fleet", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        reg.counters["fleet_dashboard"] += 1
        return HTMLResponse(dashboard_page.page(), headers=dashboard_page.headers())
