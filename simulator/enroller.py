"""Bring simulated gateways online the way a fleet operator does: fleet, claims, enrollment."""

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent.config import AgentConfig, load_config
from agent.provisioning import enroll

from .fleet import synthetic_vin

HTTP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Operator:
    """A fleet and its operator token, as the admin created them."""

    fleet_id: str
    token: str


async def create_fleet(url: str, ca_file: Path, admin_token: str, name: str) -> Operator:
    """Create a fleet with the admin token; return its id and operator token."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=HTTP_TIMEOUT_S) as c:
        r = await c.post(
            "/v1/fleets", json={"name": name}, headers={"Authorization": f"Bearer {admin_token}"}
        )
        r.raise_for_status()
        body = r.json()
    return Operator(body["fleet_id"], body["operator_token"])


async def fleet_counts(url: str, ca_file: Path, op: Operator) -> tuple[int, dict[str, int]]:
    """What the fleet dashboard shows first: (vehicles, counts by policy status)."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=HTTP_TIMEOUT_S) as c:
        page = await c.get("/fleet")
        page.raise_for_status()
        r = await c.get(
            f"/v1/fleets/{op.fleet_id}/vehicles", headers={"Authorization": f"Bearer {op.token}"}
        )
        r.raise_for_status()
        body = r.json()
    return int(body["total"]), {str(k): int(v) for k, v in body["counts"].items()}


async def fleet_alerts(url: str, ca_file: Path, op: Operator) -> list[dict[str, Any]]:
    """The fleet's alerts, newest first, as the dashboard lists them."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=HTTP_TIMEOUT_S) as c:
        r = await c.get(
            f"/v1/fleets/{op.fleet_id}/alerts", headers={"Authorization": f"Bearer {op.token}"}
        )
        r.raise_for_status()
        body = r.json()
    alerts: list[dict[str, Any]] = body["alerts"]
    return alerts


async def mint_claims(url: str, ca_file: Path, op: Operator, count: int) -> list[str]:
    """One-time claim tokens for ``op``'s fleet, valid an hour."""
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=url, verify=tls, timeout=HTTP_TIMEOUT_S) as c:
        r = await c.post(
            f"/v1/fleets/{op.fleet_id}/claims",
            json={"count": count, "expires_in_s": 3600},
            headers={"Authorization": f"Bearer {op.token}"},
        )
        r.raise_for_status()
        tokens: list[str] = r.json()["claim_tokens"]
    return tokens


async def enroll_cars(
    url: str,
    ca_file: Path,
    root_pub: Path,
    op: Operator,
    cars_dir: Path,
    count: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[AgentConfig]:
    """Enroll ``count`` gateways (``ctpl-agent enroll`` in-process); return their configs."""
    claims = await mint_claims(url, ca_file, op, count)
    sem = asyncio.Semaphore(8)
    done = 0

    async def one(i: int, claim: str) -> AgentConfig:
        nonlocal done
        dest = cars_dir / f"car-{i:03d}"
        async with sem:
            await enroll(url, claim, dest, root_pub, vin=synthetic_vin(i), fleet_id=op.fleet_id,
                         api_ca_file=ca_file)  # fmt: skip
        done += 1
        if progress is not None:
            progress(done, count)
        return load_config(dest / "agent.toml")

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i, c), name=f"enroll-{i}") for i, c in enumerate(claims)]
    return [t.result() for t in tasks]
