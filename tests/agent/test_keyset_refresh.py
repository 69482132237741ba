"""A rolled cloud signing key: the agent fetches the root-signed key set, and only that.

The rules are tables (rate limit, trusted keys at a time); the rest runs real parts:
a real Mosquitto, the real cloud (worker and HTTPS API) or its API alone, real agents.
"""

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import keyset, provisioning
from agent.config import AgentConfig, load_config
from agent.errors import KeySetError
from agent.keyring import load_keyset, trusted_keys
from agent.protocol import topics
from agent.protocol.clock import ManualClock
from agent.protocol.envelope import Signer
from agent.protocol.keys import (
    PrivateKey,
    generate_private_key,
    kid_for,
    load_private_key,
    load_public_key,
    private_pem,
)
from agent.runner import Agent
from cloud.api import NoEvents, create_app, serve_api
from cloud.cli import main as cloud_main
from cloud.config import CloudConfig
from cloud.keyset import build_keyset
from cloud.pki import DevPki, write_private
from cloud.signing_keys import load_ring
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto, free_port
from tests.agent.conftest import NOW, WAIT_S, FakeCloud, eventually, policy_state, running

ADMIN = "admin-token-for-the-roll-tests"
K1, K2, K3 = (generate_private_key().public_key() for _ in range(3))
KID1, KID2, KID3 = (kid_for(k) for k in (K1, K2, K3))


@pytest.mark.parametrize(
    ("last", "now", "delay"),
    [
        (None, 0.0, 0.0),  # never fetched: at once
        (100.0, 100.0, 300.0),  # just fetched: wait the whole interval
        (100.0, 250.0, 150.0),
        (100.0, 400.0, 0.0),  # exactly one interval later: due
        (100.0, 1000.0, 0.0),
        (100.0, 50.0, 0.0),  # a monotonic clock from another boot: not stuck
    ],
)
def test_a_key_set_is_fetched_at_most_once_per_interval(
    last: float | None, now: float, delay: float
) -> None:
    assert keyset.fetch_delay(last, now, 300.0) == delay


def _held(*keys: tuple[Any, datetime | None]) -> keyset.KeySet:
    """A verified key set listing ``keys`` (key, cut-off)."""
    root = generate_private_key()
    sealed = build_keyset(Signer(root), list(keys), version=2, issued_at=NOW)
    return keyset.verify(sealed.encode(), root.public_key())


@pytest.mark.parametrize(
    ("pinned", "held", "now", "trusted"),
    [
        ({}, _held((K1, None)), NOW, {KID1}),
        ({}, _held((K1, NOW + timedelta(hours=1)), (K2, None)), NOW, {KID1, KID2}),
        # Past its cut-off (or exactly at it) a key no longer verifies.
        ({}, _held((K1, NOW), (K2, None)), NOW, {KID2}),
        ({}, _held((K1, NOW - timedelta(seconds=1)), (K2, None)), NOW, {KID2}),
        # A pinned key has no cut-off.
        ({KID1: K1}, _held((K1, NOW), (K2, None)), NOW, {KID1, KID2}),
        ({KID3: K3}, None, NOW, {KID3}),
    ],
)
def test_trusted_keys_at_a_time(
    pinned: dict[str, Any], held: keyset.KeySet | None, now: datetime, trusted: set[str]
) -> None:
    assert set(trusted_keys(pinned, held, now)) == trusted


@pytest.mark.parametrize("content", [b"", b"{}", b'{"keyset": 5}', b"[]", b"x" * 40000])
def test_an_answer_without_a_key_set_is_refused(content: bytes) -> None:
    with pytest.raises(KeySetError) as caught:
        keyset.from_answer(content)
    assert caught.value.reason == "bad_answer"


def _copy_pki(pki: DevPki, dest: Path) -> DevPki:
    return DevPki(Path(shutil.copytree(pki.root, dest)))


def _roll(pki: DevPki, *argv: str) -> PrivateKey:
    """Roll ``pki``'s signing key with the real command; the new key."""
    assert cloud_main(["roll-signing-key", "--pki", str(pki.root), *argv]) == 0
    return load_ring(pki.signing_keys).newest


async def _start(worker: Worker) -> "asyncio.Task[None]":
    """Run a cloud worker (MQTT and HTTPS API) in a task; return once both are up."""
    task = asyncio.create_task(worker.run(), name="roll-test-worker")
    try:
        async with asyncio.timeout(WAIT_S * 2):
            await worker.ready.wait()
            await worker.api_ready.wait()
    except BaseException:
        await _stop(task)
        raise
    return task


async def _stop(task: "asyncio.Task[None]") -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT_S * 2):
            await task


async def _claim(url: str, ca_file: Path) -> str:
    tls = ssl.create_default_context(cafile=ca_file)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        asyncio.timeout(WAIT_S),
        httpx.AsyncClient(base_url=url, verify=tls, timeout=WAIT_S) as client,
    ):
        fleet = await client.post("/v1/fleets", json={"name": "roll"}, headers=auth)
        assert fleet.status_code == 201, fleet.text
        claims = await client.post(
            f"/v1/fleets/{fleet.json()['fleet_id']}/claims",
            json={"count": 1, "expires_in_s": 600},
            headers=auth,
        )
        assert claims.status_code == 201, claims.text
        token: str = claims.json()["claim_tokens"][0]
        return token


async def test_an_enrolled_agent_follows_a_key_roll_across_a_cloud_restart(
    pki: DevPki, broker: Mosquitto, tmp_path: Path
) -> None:
    cloud_pki = _copy_pki(pki, tmp_path / "cloud-pki")
    http_port = free_port()
    url = f"https://127.0.0.1:{http_port}"

    def cloud_config(n: int) -> CloudConfig:
        return CloudConfig.from_pki(
            cloud_pki,
            db_path=tmp_path / "cloud.db",
            broker_port=broker.port,
            http_port=http_port,
            admin_token=ADMIN,
            client_id=f"roll-test-{n}-{http_port}",
        )

    old_kid = kid_for(load_private_key(cloud_pki.signing_key).public_key())
    dest = tmp_path / "gateway"
    worker = await _start(Worker(cloud_config(1)))
    try:
        claim = await _claim(url, cloud_pki.ca_cert)
        async with asyncio.timeout(WAIT_S * 2):
            await provisioning.enroll(
                url, claim, dest, cloud_pki.root_pub, api_ca_file=cloud_pki.ca_cert
            )
        config = load_config(
            dest / "agent.toml",
            {
                "reply_timeout_s": 0.2,
                "status_interval_s": 1.0,
                "operation_timeout_s": WAIT_S,
                # Short, so that a fetch made while the new API is still starting is retried.
                "keyset_refresh_min_s": 0.5,
            },
        )
        agent = Agent(config)
        async with running(agent):
            first = await agent.wait_for_state(WAIT_S)
            assert agent.keyset_version == 1 and set(agent.trusted_keys()) == {old_kid}

            # The cloud is restarted after a roll: a new worker on the same store and files.
            await _stop(worker)
            new_kid = kid_for(_roll(cloud_pki).public_key())
            worker = await _start(Worker(cloud_config(2)))

            state = await agent.wait_for_state(WAIT_S * 2, min_seq=first.seq + 1)
            assert state.vid == config.vid
            assert agent.counters["unknown_key"] >= 1  # signed with the new key, at first unknown
            assert agent.keyset_fetches["accepted"] == 1 and agent.keyset_version == 2
            assert set(agent.trusted_keys()) == {old_kid, new_kid}
    finally:
        await _stop(worker)
    assert config.keyset_file is not None and config.root_key is not None
    held = load_keyset(config.keyset_file, load_public_key(config.root_key.read_bytes()))
    assert held is not None and held.version == 2


def _write_keyset(
    pki: DevPki, path: Path, keys: list[tuple[PrivateKey, datetime | None]], version: int
) -> bytes:
    """A key set signed by ``pki``'s root, written to ``path``; its bytes."""
    root = Signer(load_private_key(pki.root_key))
    listed = [(k.public_key(), cut) for k, cut in keys]
    sealed = build_keyset(root, listed, version=version, issued_at=NOW).encode()
    path.write_bytes(sealed)
    return sealed


@asynccontextmanager
async def _api(pki: DevPki, tmp_path: Path, **changes: Any) -> AsyncIterator[str]:
    """The real cloud API alone, from ``pki`` (its ring) and ``changes``; its URL."""
    config = CloudConfig.from_pki(
        pki, db_path=tmp_path / "cloud.db", broker_port=8883, http_port=free_port(), **changes
    )
    async with asyncio.timeout(WAIT_S):
        store = await Store.open(config.db_path)
    ready = asyncio.Event()
    app = create_app(config, store, NoEvents())
    server = asyncio.create_task(serve_api(app, config, ready=ready), name="roll-test-api")
    try:
        async with asyncio.timeout(WAIT_S):
            await ready.wait()
        yield f"https://127.0.0.1:{config.http_port}"
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(WAIT_S * 2):
                await server
        async with asyncio.timeout(WAIT_S):
            await store.close()


@pytest.mark.parametrize(
    ("case", "held_version", "reason"),
    [
        # The cloud's key set is signed by a key that is not the pinned root.
        ("signed_by_another_root", 1, "unknown_key"),
        # A genuine key set, but older than the one held: a rollback.
        ("older_version", 5, "rollback"),
        # No cloud answers: counted, and the agent goes on.
        ("unreachable", 1, "failed"),
    ],
)
async def test_a_key_set_not_signed_by_the_root_or_not_newer_is_refused_and_the_state_too(
    pki: DevPki,
    make_config: Callable[..., AgentConfig],
    cloud: FakeCloud,
    tmp_path: Path,
    case: str,
    held_version: int,
    reason: str,
) -> None:
    cloud_pki = _copy_pki(pki, tmp_path / "cloud-pki")
    new = _roll(cloud_pki)  # the cloud now serves key set v2: the old key and ``new``
    old = load_private_key(pki.signing_key)
    keyset_file = tmp_path / "keyset.json"
    held = _write_keyset(pki, keyset_file, [(old, None)], held_version)
    changes: dict[str, Any] = {}
    if case == "signed_by_another_root":
        changes["root_key_file"] = tmp_path / "attacker-root.key"
        write_private(changes["root_key_file"], private_pem(generate_private_key()))

    async with _api(cloud_pki, tmp_path, **changes) as url:
        if case == "unreachable":
            url = f"https://127.0.0.1:{free_port()}"
        config = make_config(
            cloud_keys=(),
            root_key=pki.root_pub,
            keyset_file=keyset_file,
            cloud_url=url,
            api_ca_file=pki.ca_cert,
        )
        agent = Agent(config)
        async with running(agent):
            await cloud.receive(topics.up(config.vid, "status"))  # subscribed by now
            await cloud.send_state(policy_state(config.vid, version=1, seq=1))
            await agent.wait_for_state(WAIT_S)
            await cloud.send_state(policy_state(config.vid, version=2, seq=2), signer=Signer(new))
            await eventually(lambda: agent.keyset_fetches.total() == 1, "a key set fetch")
            assert agent.keyset_fetches[reason] == 1
            # Asked again, the state signed with the new key stays refused; and within the
            # rate limit's interval no second fetch is made.
            await cloud.send_state(policy_state(config.vid, version=2, seq=3), signer=Signer(new))
            await eventually(lambda: agent.counters["unknown_key"] == 2, "the second refusal")
            assert agent.state is not None and agent.state.version == 1
            assert agent.keyset_fetches.total() == 1
            assert agent.keyset_version == held_version
            assert kid_for(new.public_key()) not in agent.trusted_keys()
    assert keyset_file.read_bytes() == held


async def test_after_the_old_keys_cut_off_a_state_signed_with_it_is_refused(
    pki: DevPki, make_config: Callable[..., AgentConfig], cloud: FakeCloud, tmp_path: Path
) -> None:
    old, new = load_private_key(pki.signing_key), generate_private_key()
    cut_off = NOW + timedelta(hours=1)
    keyset_file = tmp_path / "keyset.json"
    _write_keyset(pki, keyset_file, [(old, cut_off), (new, None)], version=2)
    config = make_config(cloud_keys=(), root_key=pki.root_pub, keyset_file=keyset_file)
    clock = ManualClock(NOW)
    agent = Agent(config, clock)
    async with running(agent):
        await cloud.receive(topics.up(config.vid, "status"))  # subscribed by now
        await cloud.send_state(policy_state(config.vid, version=1, seq=1))  # the old key
        await agent.wait_for_state(WAIT_S)
        clock.set_wall(cut_off)
        await cloud.send_state(policy_state(config.vid, version=1, seq=2))
        await eventually(lambda: agent.counters["unknown_key"] == 1, "the refusal")
        assert agent.state is not None and agent.state.seq == 1
        await cloud.send_state(policy_state(config.vid, version=1, seq=3), signer=Signer(new))
        assert (await agent.wait_for_state(WAIT_S, min_seq=3)).seq == 3
        assert set(agent.trusted_keys()) == {kid_for(new.public_key())}
