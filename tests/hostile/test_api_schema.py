"""schemathesis against the cloud API's own OpenAPI description, on the real app served over
TLS (tests/cloud_api/conftest.py ``serving``) with the real worker as its events and a real
SQLite store: every operation, with cases that fit the schema and cases that break it.

The description is read as an operator's tool would, from ``/openapi.json`` with the admin
token. Each request carries the token its route takes (the admin's to create fleets, the
fleet operator's for everything else); ``fleet_id`` is the operator's own fleet and ``vid``
half the time one of its cars, so that the cases reach past the authorisation checks. Checked:
never a 5xx; every refusal typed (an error code); a 2xx conforms to the description, and
a 2xx to a case meant to break the schema passes schemathesis's ``negative_data_rejection``
(the request was valid as sent).
Not run: the live stream ``GET /v1/fleets/{id}/events`` (it never ends by itself).
Requests go through ``requests`` in a worker thread while the app and the worker serve in
the test's event loop. ``make hostile`` only (about a minute); the count follows the
hypothesis profile.
"""

import asyncio
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from tests.cloud_api.conftest import ADMIN_TOKEN, serving
from tests.cloud_api.webhook_support import Dns

from .conftest import PROFILE, TallyFactory
from .figures import Tally
from .harness import Cloud

pytestmark = pytest.mark.hostile
GROUP = "API schema (schemathesis)"
EXAMPLES: Final = {"ci": 4, "hostile": 200}
"""Cases per operation and mode: enough for about a minute under ``make hostile``; a few
when run by hand with the ``ci`` profile."""
SKIPPED: Final = frozenset({("GET", "/v1/fleets/{fleet_id}/events")})
UNDESCRIBED_CONTENT: Final = {
    ("GET", "/v1/fleets/{fleet_id}/vehicles.csv"): "text/csv, described as application/json",
}
"""Responses whose media type the description gets wrong (a gap to close in cloud/): their
content type is not checked, their body still is where it is JSON."""


def _code(body: Any) -> str | None:
    """The error code of a refusal: ``{"error": {"code": …}}`` (the API) or
    ``{"error": "…"}`` (the insurer webhook's answer)."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("code")
    return error if isinstance(error, str) and error else None


@dataclass(frozen=True)
class Target:
    """Where the cases go, and what they may name."""

    base: str
    ca: Path
    fleet_id: str
    operator: str
    vids: list[str]
    counters: Counter[str]
    """The API's own refusal counters (read between requests, which are sequential)."""


def _run(
    target: Target,
    operation: Any,
    mode: schemathesis.GenerationMode,
    row: Tally,
    statuses: Counter[str],
) -> None:
    """One operation in one mode (blocking)."""
    method, path = operation.method.upper(), operation.path
    token = ADMIN_TOKEN if (method, path) == ("POST", "/v1/fleets") else target.operator
    fixed = {"fleet_id": target.fleet_id} if "{fleet_id}" in path else {}

    @settings(
        settings.get_profile(PROFILE),
        max_examples=EXAMPLES.get(PROFILE, 4),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=fixed), data=st.data())
    def check(case: Any, data: st.DataObject) -> None:
        if "vid" in (case.path_parameters or {}) and data.draw(st.booleans()):
            case.path_parameters["vid"] = data.draw(st.sampled_from(target.vids))
        too_large = target.counters["rejected.body_too_large"]
        try:
            response = case.call(
                base_url=target.base,
                verify=str(target.ca),
                timeout=10,
                headers={"Authorization": f"Bearer {token}"},
            )
        except requests.ConnectionError as exc:
            # A body over 16 KiB is refused by its declared length (413) and the connection
            # closed unread, which can reach a client still sending it as a reset instead.
            refused = target.counters["rejected.body_too_large"] > too_large
            statuses[f"{method} {path} 413"] += refused
            row.record(refused=refused, what=f"{method} {path} ({mode.value}): {exc!r}"[:300])
            if not refused:
                raise
            return
        status = response.status_code
        statuses[f"{method} {path} {status}"] += 1
        what = f"{method} {path} ({mode.value}) -> {status} {response.text[:80]!r}"
        checks: list[CheckFunction] = [not_a_server_error]
        if status < 300 and (method, path) not in UNDESCRIBED_CONTENT:
            checks += [response_schema_conformance, content_type_conformance]
        if mode is schemathesis.GenerationMode.NEGATIVE and status < 300:
            checks.append(negative_data_rejection)
        try:
            case.validate_response(response, checks=checks)
        except (Failure, FailureGroup) as exc:
            row.record(refused=False, crashed=status >= 500, what=f"{what}: {exc}"[:300])
            raise
        if status < 300:
            row.record_valid()
            return
        try:
            typed = _code(response.json()) is not None
        except ValueError:
            typed = False
        row.record(refused=typed, what=what)
        assert typed, f"an untyped refusal: {what}"

    try:
        check()
    except Unsatisfiable:
        # Nothing in the request that a case could break (no body, no free parameter).
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
        statuses[f"{method} {path} (nothing to break)"] += 0


def _fuzz(target: Target, rows: dict[schemathesis.GenerationMode, Tally]) -> Counter[str]:
    """Every operation in both modes (blocking: called in a thread); the statuses seen."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    schema = schemathesis.openapi.from_url(
        f"{target.base}/openapi.json", headers=admin, verify=str(target.ca)
    )
    statuses: Counter[str] = Counter()
    for found in schema.get_all_operations():
        if isinstance(found, Err):
            raise found.err()
        operation = found.ok()
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        for mode, row in rows.items():
            _run(target, operation, mode, row, statuses)
    return statuses


async def test_the_api_answers_its_own_description_without_a_server_error(
    cloud: Cloud, tmp_path: Path, tally: TallyFactory
) -> None:
    rows = {
        schemathesis.GenerationMode.POSITIVE: tally(
            "schemathesis: cases that fit the API's schema",
            group=GROUP,
            expected="2xx conforming, or a typed 4xx; never 5xx",
        ),
        schemathesis.GenerationMode.NEGATIVE: tally(
            "schemathesis: cases that break the API's schema",
            group=GROUP,
            expected="a typed 4xx (a 2xx only where schemathesis's negative_data_rejection "
            "finds the request valid as sent, e.g. an unknown query parameter); never 5xx",
        ),
    }
    async with serving(cloud.pki, tmp_path, events=cloud.worker) as api:
        api.app.state.outbound_resolver = Dns()  # no name resolves: the cloud's DNS stays out
        fleet_id, operator = await api.fleet("fuzzed")
        vids = [(await api.enrolled((fleet_id, operator)))[0] for _ in range(3)]
        target = Target(
            f"https://localhost:{api.config.http_port}",
            cloud.pki.ca_cert,
            fleet_id,
            operator,
            vids,
            api.counters,
        )
        statuses = await asyncio.to_thread(_fuzz, target, rows)
        assert api.counters["rejected.internal"] == 0
        assert (await api.client.get("/v1/keyset")).status_code == 200
    print(
        f"\nschemathesis: {sum(statuses.values())} requests, by status: "
        f"{dict(Counter(s.rsplit(' ', 1)[1] for s in statuses.elements()))}"
    )
    for row in rows.values():
        if (
            not await cloud.answers()
            or cloud.crashed()
            or cloud.worker.counters["renewal.internal_error"]
        ):
            row.crashed("the worker no longer answers a signed request")
        row.check()
