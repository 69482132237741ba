"""The fleet operator's vehicle API: list with filters and paging, CSV export, detail.

Every route is scoped to one fleet: its operator token (or the admin's) opens it; another
fleet's token gets 403, a vehicle of another fleet 404 (never a hint that it exists).
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse

from . import enrollment as en
from .errors import Refused
from .fleet_view import Filters, VehicleSummary, counts, page, summarize, to_csv
from .registrar import Registrar
from .renewal_flow import Flow

StatusName = Literal["active", "expiring", "lapsed", "renewal_pending", "unknown", "revoked"]


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
    }


def add_fleet_routes(app: FastAPI, reg: Registrar) -> None:
    """Register the fleet routes on ``app``, served by ``reg``'s store and clock."""

    async def summaries(request: Request, fleet_id: str) -> list[VehicleSummary]:
        well_formed = en.FLEET_ID_RE.fullmatch(fleet_id) is not None
        fleet = await reg.store.fleet(fleet_id) if well_formed else None
        await reg.authorize(_bearer(request), fleet)
        if fleet is None:
            raise Refused(404, "fleet_unknown", "no such fleet")
        now: datetime = reg.clock.now()
        policies = await reg.store.load_policies()
        within = reg.config.expiring_within_days
        return [
            summarize(vid, policies.get(vid), seen, revoked is not None, now, within)
            for vid, revoked, seen in await reg.store.fleet_vehicles(fleet_id)
        ]

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
        rows = {v.vid: v for v in await summaries(request, fleet_id)}
        found = rows.get(vid)
        if found is None:
            raise Refused(404, "vehicle_unknown", "no such vehicle in this fleet")
        flows = await reg.store.flows("vid", (vid,))
        reg.counters["fleet_vehicle"] += 1
        return {"vehicle": _json(found), "renewals": [_flow(f) for f in flows]}
