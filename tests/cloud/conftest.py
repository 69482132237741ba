"""A cloud worker running in the test's event loop against the shared broker."""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud.config import CloudConfig
from cloud.fleet_file import import_files
from cloud.pki import DevPki
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto
from simulator.fleet import synthetic_policies

_worker_ids = itertools.count(1)


async def start_worker(
    pki: DevPki, broker: Mosquitto, db: Path, *, seed: bool = True, **config: object
) -> tuple[Worker, asyncio.Task[None]]:
    """Seed ``db`` with the PKI's vehicles and synthetic policies (unless ``seed`` is off:
    a restart on the same store), then run a worker on it; ``config`` adds settings."""
    if seed:
        policies = db.parent / "policies.json"
        policies.write_text(json.dumps(synthetic_policies(pki.vids(), datetime.now(UTC))))
        async with await Store.open(db) as store:
            await import_files(store, pki.vehicles_file, policies)
    settings: dict[str, object] = {"client_id": f"test-cloud-{next(_worker_ids)}", **config}
    worker = Worker(CloudConfig.from_pki(pki, db_path=db, broker_port=broker.port, **settings))
    task = asyncio.create_task(worker.run(), name="test-worker")
    async with asyncio.timeout(10):
        await worker.ready.wait()
        if worker.config.http_port is not None:
            await worker.api_ready.wait()
    return worker, task


@pytest.fixture
async def worker(
    shared_pki: DevPki, shared_broker: Mosquitto, tmp_path: Path
) -> AsyncIterator[Worker]:
    """A running cloud worker with a fresh store."""
    w, task = await start_worker(shared_pki, shared_broker, tmp_path / "cloud.db")
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
