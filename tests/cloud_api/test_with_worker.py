"""``ctpl-cloud serve`` with the API: enroll over HTTPS, then be served over MQTT at once."""

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.protocol import envelope, messages, topics
from agent.protocol.keys import (
    PrivateKey,
    generate_private_key,
    kid_for,
    load_public_key,
    private_pem,
)
from cloud.config import CloudConfig
from cloud.link import MqttLink, tls_context
from cloud.pki import DevPki, write_private
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port

from .conftest import ADMIN_TOKEN, STEP_S, csr_pem, within


@dataclass
class Served:
    worker: Worker
    client: httpx.AsyncClient
    pki: DevPki
    broker: Mosquitto
    tmp: Path


@asynccontextmanager
async def worker_served(
    pki: DevPki, broker: Mosquitto, tmp_path: Path, **overrides: object
) -> AsyncIterator[Served]:
    """``ctpl-cloud serve`` in-process (worker + HTTPS API) on a fresh store, and a client."""
    config = CloudConfig.from_pki(
        pki,
        db_path=tmp_path / "cloud.db",
        broker_port=broker.port,
        client_id=f"api-test-{free_port()}",
        http_port=free_port(),
        admin_token=ADMIN_TOKEN,
        **overrides,
    )
    worker = Worker(config)
    task = asyncio.create_task(worker.run(), name="test-worker-api")
    try:
        await within(worker.ready.wait())
        await within(worker.api_ready.wait())
        tls = ssl.create_default_context(cafile=pki.ca_cert)
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{config.http_port}", verify=tls, timeout=STEP_S
        ) as client:
            yield Served(worker, client, pki, broker, tmp_path)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(task)


@pytest.fixture
async def served(
    shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Served]:
    async with worker_served(shared_pki, shared_broker, tmp_path) as running:
        yield running


class Car:
    """An enrolled car's MQTT side: its certificate, key, and inbox."""

    def __init__(self, s: Served, vid: str, key: PrivateKey, cert_pem: str) -> None:
        d = s.tmp / vid
        write_private(d / "car.key", private_pem(key))
        (d / "car.crt").write_text(cert_pem)
        self.vid, self.key = vid, key
        self.cloud = load_public_key(s.pki.signing_pub.read_bytes())
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.link = MqttLink(
            client_id=vid,
            tls=tls_context(s.pki.ca_cert, d / "car.crt", d / "car.key"),
            on_message=lambda t, p: self.inbox.put_nowait((t, p)),
            subscriptions=(topics.down_filter(vid),),
            clean_start=True,
        )

    def ask(self, seq: int, key: PrivateKey | None = None) -> None:
        topic = topics.up(self.vid, "status")
        body = messages.encode(messages.StatusRequest(vid=self.vid, seq=seq))
        assert self.link.publish(topic, envelope.Signer(key or self.key).seal(topic, body))

    async def reply(self) -> messages.PolicyState | messages.ErrorReply:
        async with asyncio.timeout(STEP_S):
            while True:
                topic, payload = await self.inbox.get()
                body = messages.decode(
                    envelope.open_with(topic, payload, {kid_for(self.cloud): self.cloud})
                )
                assert not isinstance(body, messages.StatusRequest)
                return body


async def test_an_enrolled_car_is_served_renewed_and_revoked(served: Served) -> None:
    c = served.client
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    fleet = (await c.post("/v1/fleets", json={"name": "e2e"}, headers=auth)).json()
    claims = await c.post(
        f"/v1/fleets/{fleet['fleet_id']}/claims",
        json={"count": 1, "expires_in_s": 600},
        headers={"Authorization": f"Bearer {fleet['operator_token']}"},
    )
    key = generate_private_key()
    r = await c.post(
        "/v1/enroll",
        json={"claim_token": claims.json()["claim_tokens"][0], "csr_pem": csr_pem(key)},
    )
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["broker_port"] == served.broker.port
    car = Car(served, got["vid"], key, got["certificate_pem"])
    await within(car.link.connect(served.broker.host, served.broker.port))
    try:
        car.ask(seq=1)
        state = await car.reply()
        assert isinstance(state, messages.PolicyState)
        assert (state.vid, state.reply_to, state.status) == (car.vid, 1, "unknown")

        new = generate_private_key()
        body = {"type": "cert.renewal", "vid": car.vid, "seq": 2, "csr_pem": csr_pem(new)}
        sealed = envelope.Signer(key).seal(f"ctpl/v1/{car.vid}/renew", json.dumps(body).encode())
        r = await c.post("/v1/renew", json={"envelope": sealed.decode()})
        assert r.status_code == 200, r.text
        car.ask(seq=3)  # the old key no longer verifies messages
        error = await car.reply()
        assert isinstance(error, messages.ErrorReply) and error.code == "unknown_key"
        car.ask(seq=4, key=new)
        state = await car.reply()
        assert isinstance(state, messages.PolicyState) and state.reply_to == 4

        r = await c.post(f"/v1/vehicles/{car.vid}/revoke", json={}, headers=auth)
        assert r.status_code == 200, r.text
        assert served.worker.handler is not None
        assert car.vid not in served.worker.handler.vehicles
        car.ask(seq=5, key=new)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await car.inbox.get()
    finally:
        await within(car.link.close())
