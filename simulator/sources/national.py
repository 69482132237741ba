"""The simulated national platform (authoritative, but late) and third-party platforms.

Insurers ``report`` every policy they issue or cancel; the platform shows a report only
once ``lag_s`` (a knob, read at answer time) has passed since it was made. Seeded
policies (``add_policy``) are known at once. For one policy number the latest visible
report wins, so a cancellation replaces the policy it cancels.

The national platform also keeps each registered vehicle's facts and claims record
(``add_vehicle``; ``GET /v1/vehicles``): what a CTPL premium is priced by.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from agent.protocol.clock import Clock

from .common import (
    JSON,
    Knobs,
    Policy,
    SimService,
    VehicleRecord,
    error_response,
    normal_plate,
    rfc3339,
)


@dataclass(frozen=True, slots=True)
class _Report:
    policy: Policy
    reported_at: datetime | None
    """None: seeded, visible at once."""


class NationalPlatform(SimService):
    """``GET /v1/policies`` over everything insurers reported, ``lag_s`` late."""

    def __init__(
        self,
        *,
        source: str = "national",
        lag_s: float | None = None,
        knobs: Knobs | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        port: int = 0,
    ) -> None:
        self.source = source
        super().__init__(knobs=knobs, clock=clock, seed=seed, port=port)
        if lag_s is not None:
            self.knobs.lag_s = lag_s
        self._reports: list[_Report] = []
        self.vehicles: dict[str, VehicleRecord] = {}
        """Registered vehicles by VIN."""
        self._add_vehicle_routes()

    def add_vehicle(self, record: VehicleRecord | Mapping[str, Any]) -> VehicleRecord:
        """Register a vehicle's facts (the same VIN again replaces them)."""
        v = record if isinstance(record, VehicleRecord) else VehicleRecord.model_validate(record)
        self.vehicles[v.vin] = v
        return v

    def find_vehicle(self, plate: str | None, vin: str | None) -> VehicleRecord | None:
        """The registered vehicle matching every key given."""
        if vin is not None:
            found = self.vehicles.get(vin.strip().upper())
            ok = found is not None and (
                plate is None or normal_plate(found.plate) == normal_plate(plate)
            )
            return found if ok else None
        return next((v for v in self.vehicles.values()
                     if normal_plate(v.plate) == normal_plate(plate or "")), None)  # fmt: skip

    def _add_vehicle_routes(self) -> None:
        @self.app.get("/v1/vehicles")
        async def vehicle(
            plate: Annotated[str | None, Query(max_length=16)] = None,
            vin: Annotated[str | None, Query(max_length=17)] = None,
        ) -> Response:
            if plate is None and vin is None:
                return error_response(self.knobs, 400, "bad_request", "give plate or vin")
            found = self.find_vehicle(plate, vin)
            if found is None:
                return error_response(self.knobs, 404, "not_found", "no such registered vehicle")
            now = self.clock.now()
            answer = {"source": self.source, "as_of": rfc3339(now), "vehicle": found.wire()}
            return Response(json.dumps(answer, ensure_ascii=False).encode(), media_type=JSON)

        @self.app.post("/_admin/vehicles", status_code=201)
        async def seed(records: VehicleRecord | list[VehicleRecord]) -> list[VehicleRecord]:
            given = records if isinstance(records, list) else [records]
            try:
                return [self.add_vehicle(v) for v in given]
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc

    def add_policy(self, policy: Policy | Mapping[str, Any]) -> Policy:
        """Seed ``policy``: on record at once, whatever the lag."""
        p = policy if isinstance(policy, Policy) else Policy.model_validate(policy)
        self._reports.append(_Report(p, None))
        return p

    def report(self, policy: Policy, at: datetime | None = None) -> None:
        """An insurer's report of ``policy`` (issued or cancelled) made at ``at`` (now)."""
        self._reports.append(_Report(policy, at or self.clock.now()))

    def visible_policies(self, now: datetime) -> list[Policy]:
        lag = timedelta(seconds=self.knobs.lag_s)
        latest: dict[str, Policy] = {}
        for r in self._reports:
            if r.reported_at is None or r.reported_at + lag <= now:
                latest[r.policy.policy_no] = r.policy
        return list(latest.values())


class ThirdPartyPlatform(NationalPlatform):
    """A third-party platform: the same answer shape and lag, a lower trust."""

    def __init__(self, *, source: str = "thirdparty", **kw: Any) -> None:
        super().__init__(source=source, **kw)
