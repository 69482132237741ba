"""Enrollment and renewal against the REAL cloud API (cloud.api), served by uvicorn with TLS.

The whole zero-touch path: an admin makes a fleet and a claim; ``provisioning.enroll``
installs an identity; an agent run from its agent.toml connects to a real Mosquitto with
the issued certificate and accepts a policy state signed by a key it trusts only through
the enrolled key set; ``provisioning.renew`` renews against the same API.
"""

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from agent import provisioning
from agent.cli import main
from agent.config import load_config
from agent.errors import CloudRefusedError
from agent.keystore import FileKeyStore
from agent.protocol import envelope, topics
from agent.protocol.keys import kid_for, load_public_key, public_pem
from agent.runner import Agent
from agent.store import Store as AgentStore
from cloud.api import NoEvents, create_app, serve_api
from cloud.config import CloudConfig
from cloud.pki import DevPki
from cloud.store import Store
from simulator.broker import Mosquitto, free_port
from tests.agent.conftest import NOW, WAIT_S, FakeCloud, policy_state, running

ADMIN = "admin-token-for-the-agent-tests"
VIN = "LSGCAR00000000001"


@dataclass
class RealApi:
    """The running API: its URL, the CA bundle for it, and an admin client."""

    url: str
    ca_file: Path
    root_pub: Path
    client: httpx.AsyncClient

    async def claim(self) -> tuple[str, str]:
        """A fresh fleet's id and one claim token of it."""
        auth = {"Authorization": f"Bearer {ADMIN}"}
        fleet = await self.client.post("/v1/fleets", json={"name": "agents"}, headers=auth)
        assert fleet.status_code == 201, fleet.text
        fleet_id = fleet.json()["fleet_id"]
        claims = await self.client.post(
            f"/v1/fleets/{fleet_id}/claims",
            json={"count": 1, "expires_in_s": 3600},
            headers={"Authorization": f"Bearer {fleet.json()['operator_token']}"},
        )
        assert claims.status_code == 201, claims.text
        return fleet_id, claims.json()["claim_tokens"][0]


@pytest.fixture
async def real_api(pki: DevPki, broker: Mosquitto, tmp_path: Path) -> AsyncIterator[RealApi]:
    """cloud.api's app over TLS on a free port, telling gateways the test's broker."""
    config = CloudConfig.from_pki(
        pki,
        db_path=tmp_path / "cloud.db",
        broker_port=broker.port,
        http_port=free_port(),
        admin_token=ADMIN,
    )
    async with asyncio.timeout(WAIT_S):
        store = await Store.open(config.db_path)
    app = create_app(config, store, NoEvents())
    ready = asyncio.Event()
    server = asyncio.create_task(serve_api(app, config, ready=ready), name="agent-test-api")
    url = f"https://127.0.0.1:{config.http_port}"
    try:
        async with asyncio.timeout(WAIT_S):
            await ready.wait()
        tls = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(base_url=url, verify=tls, timeout=WAIT_S) as client:
            yield RealApi(url, pki.ca_cert, pki.root_pub, client)
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT_S * 2):
                await server
        async with asyncio.timeout(WAIT_S):
            await store.close()


async def enroll(api: RealApi, dest: Path, claim: str, **kwargs: Any) -> Any:
    return await provisioning.enroll(
        api.url, claim, dest, api.root_pub, api_ca_file=api.ca_file, timeout_s=WAIT_S, **kwargs
    )


async def test_enroll_then_run_then_renew_against_the_real_cloud(
    real_api: RealApi, pki: DevPki, broker: Mosquitto, cloud: FakeCloud, tmp_path: Path
) -> None:
    fleet_id, claim = await real_api.claim()
    dest = tmp_path / "gateway"
    found = await enroll(real_api, dest, claim, vin=VIN, fleet_id=fleet_id)
    config = load_config(dest / "agent.toml")
    assert config.vid == found.vid and topics.check_vid(found.vid)
    assert (config.broker_host, config.broker_port) == ("127.0.0.1", broker.port)
    assert config.cloud_keys == ()
    signing_kid = kid_for(load_public_key(pki.signing_pub.read_bytes()))
    assert found.keyset is not None and signing_kid in found.keyset.usable(datetime.now(UTC))

    # The agent trusts the cloud's signing key only through the enrolled key set.
    agent = Agent(config)
    async with running(agent):
        payload, _ = await cloud.receive(topics.up(found.vid, "status"))
        assert envelope.parse(payload).kid == kid_for(
            FileKeyStore.load(config.key_file).public_key()
        )
        await cloud.send_state(policy_state(found.vid, version=1, seq=1))
        state = await agent.wait_for_state(WAIT_S)
    assert state.vid == found.vid
    # `status --config` re-verifies the stored state with the key set's keys.
    shown = ["status", "--config", str(dest / "agent.toml"), "--now", NOW.isoformat(), "--json"]
    assert await asyncio.to_thread(main, shown) == 0

    old_key = public_pem(FileKeyStore.load(config.key_file).public_key())
    for _ in range(2):  # twice: the second request's seq must grow past the first's
        async with asyncio.timeout(WAIT_S * 2), AgentStore(config.db_path) as store:
            renewed = await provisioning.renew(config, store, datetime.now(UTC), force=True)
        assert isinstance(renewed, provisioning.Renewed)
    new_key = FileKeyStore.load(config.key_file).public_key()
    assert public_pem(new_key) != old_key
    cert = x509.load_pem_x509_certificate(config.cert_file.read_bytes())
    assert public_pem(cert.public_key()) == public_pem(new_key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"claim": "cl_nobody-minted-this"}, 404, "claim_unknown"),
        ({"fleet_id": "f_another"}, 403, "claim_wrong_fleet"),
        ({"vin": "NOT-A-VIN"}, 422, "vin_invalid"),
    ],
)
async def test_the_real_clouds_refusals_show_their_code(
    real_api: RealApi, tmp_path: Path, change: dict[str, str], status: int, code: str
) -> None:
    fleet_id, claim = await real_api.claim()
    options = {"fleet_id": fleet_id} | {k: v for k, v in change.items() if k != "claim"}
    with pytest.raises(CloudRefusedError) as caught:
        await enroll(real_api, tmp_path / "gateway", change.get("claim", claim), **options)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert not (tmp_path / "gateway").exists()


async def test_a_claim_is_spent_once(real_api: RealApi, tmp_path: Path) -> None:
    _, claim = await real_api.claim()
    await enroll(real_api, tmp_path / "first", claim)
    with pytest.raises(CloudRefusedError) as caught:
        await enroll(real_api, tmp_path / "second", claim)
    assert (caught.value.status, caught.value.code) == (409, "claim_used")
