"""The real API app under a real uvicorn with TLS on a free port, and an httpx client for it."""

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from agent.protocol.clock import ManualClock
from agent.protocol.keys import PrivateKey, PublicKey, generate_private_key
from cloud.api import create_app, serve_api
from cloud.config import CloudConfig
from cloud.pki import DevPki
from cloud.store import Store
from simulator.broker import free_port

ADMIN_TOKEN = "admin-test-token-0123456789"
STEP_S = 10.0
T = TypeVar("T")


async def within(aw: Awaitable[T], timeout_s: float = STEP_S) -> T:
    """Await ``aw`` under a timeout."""
    async with asyncio.timeout(timeout_s):
        return await aw


@dataclass
class RecordingEvents:
    """The events hooks, recorded."""

    registered: list[tuple[str, PublicKey]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    fail_revoke: bool = False

    async def vehicle_registered(self, vid: str, key: PublicKey) -> None:
        self.registered.append((vid, key))

    async def vehicle_revoked(self, vid: str) -> None:
        if self.fail_revoke:
            raise RuntimeError("broker unreachable")
        self.revoked.append(vid)


@dataclass
class Api:
    """A running API: its app, store, clock, recorded events, and a client."""

    app: FastAPI
    store: Store
    clock: ManualClock
    events: RecordingEvents
    client: httpx.AsyncClient
    pki: DevPki
    config: CloudConfig

    @property
    def counters(self) -> Any:
        return self.app.state.counters

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def fleet(self, name: str = "fleet") -> tuple[str, str]:
        """A new fleet's id and operator token."""
        r = await self.client.post(
            "/v1/fleets", json={"name": name}, headers=self.auth(ADMIN_TOKEN)
        )
        assert r.status_code == 201, r.text
        return r.json()["fleet_id"], r.json()["operator_token"]

    async def claims(
        self, fleet_id: str, token: str, count: int = 1, expires_in_s: int = 3600
    ) -> list[str]:
        """``count`` fresh claim tokens of ``fleet_id``."""
        r = await self.client.post(
            f"/v1/fleets/{fleet_id}/claims",
            json={"count": count, "expires_in_s": expires_in_s},
            headers=self.auth(token),
        )
        assert r.status_code == 201, r.text
        tokens: list[str] = r.json()["claim_tokens"]
        return tokens

    async def enroll(self, claim: str, key: PrivateKey, **extra: object) -> httpx.Response:
        """POST /v1/enroll with a CSR over ``key``."""
        return await self.client.post(
            "/v1/enroll", json={"claim_token": claim, "csr_pem": csr_pem(key), **extra}
        )

    async def enrolled(self, fleet: tuple[str, str] | None = None) -> tuple[str, PrivateKey]:
        """A vehicle enrolled in ``fleet`` (a new one if None): its vid and key."""
        fleet_id, token = fleet or await self.fleet()
        key = generate_private_key()
        r = await self.enroll((await self.claims(fleet_id, token))[0], key)
        assert r.status_code == 201, r.text
        vid: str = r.json()["vid"]
        return vid, key

    async def vehicles(self) -> int:
        return await within(self.store.count_vehicles())


def csr_pem(key: Any, subject: x509.Name | None = None) -> str:
    """A CSR over ``key`` (any key type), with an empty subject unless told."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM).decode()


def cn(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@asynccontextmanager
async def serving(
    pki: DevPki,
    tmp_path: Path,
    events: Any = None,
    settings: dict[str, object] | None = None,
    **state: object,
) -> AsyncIterator[Api]:
    """The app served by uvicorn over TLS from ``pki``, with a fresh store and a manual clock.

    ``events``: the worker's stand-in (default: a RecordingEvents); ``settings``: more of
    its CloudConfig; ``state``: settings put on ``app.state`` (e.g. the stream's pacing).
    """
    config = CloudConfig.from_pki(
        pki,
        db_path=tmp_path / "cloud.db",
        broker_port=8883,
        http_port=free_port(),
        admin_token=ADMIN_TOKEN,
        **(settings or {}),
    )
    clock = ManualClock(datetime.now(UTC))
    events = RecordingEvents() if events is None else events
    store = await within(Store.open(config.db_path))
    app = create_app(config, store, events, clock=clock)
    for name, value in state.items():
        setattr(app.state, name, value)
    ready = asyncio.Event()
    server = asyncio.create_task(serve_api(app, config, ready=ready), name="test-api")
    try:
        await within(ready.wait())
        tls = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(
            base_url=f"https://localhost:{config.http_port}", verify=tls, timeout=STEP_S
        ) as client:
            yield Api(app, store, clock, events, client, pki, config)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(server)
        await within(store.close())


@pytest.fixture
async def api(shared_pki: DevPki, tmp_path: Path) -> AsyncIterator[Api]:
    """The app served by uvicorn over TLS, with a fresh store and a manual clock."""
    async with serving(shared_pki, tmp_path) as running:
        yield running
