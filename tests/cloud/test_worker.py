"""A cloud worker against the real broker: signed replies, error replies, replay after restart."""

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from agent.protocol import envelope, messages, topics
from agent.protocol.keys import PrivateKey, kid_for, load_private_key, load_public_key
from cloud.fleet_file import import_files
from cloud.link import MqttLink, tls_context
from cloud.pki import DevPki
from cloud.store import Store
from cloud.worker import Worker
from simulator.broker import Mosquitto

from .conftest import start_worker


class Car:
    """A bare MQTT client holding one car's certificate; sends whatever bytes it is told."""

    def __init__(self, pki: DevPki, vid: str) -> None:
        self.vid = vid
        d = pki.car_dir(vid)
        self.key: PrivateKey = load_private_key(d / "car.key")
        self.signer = envelope.Signer(self.key)
        self.cloud_keys = {kid_for(k): k for k in [load_public_key(pki.signing_pub.read_bytes())]}
        self.inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.link = MqttLink(
            client_id=vid,  # the broker takes only the certificate's CN
            tls=tls_context(pki.ca_cert, d / "car.crt", d / "car.key"),
            on_message=lambda t, p: self.inbox.put_nowait((t, p)),
            subscriptions=(topics.down_filter(vid),),
            clean_start=True,
        )

    def request(self, seq: int, vid: str | None = None) -> bytes:
        topic = topics.up(self.vid, "status")
        body = messages.encode(messages.StatusRequest(vid=vid or self.vid, seq=seq))
        return self.signer.seal(topic, body)

    def send(self, payload: bytes) -> None:
        assert self.link.publish(topics.up(self.vid, "status"), payload)

    async def next_reply(
        self, kind: str, timeout_s: float = 5.0
    ) -> messages.PolicyState | messages.ErrorReply:
        """The next verified reply on down/``kind`` (others are skipped)."""
        async with asyncio.timeout(timeout_s):
            while True:
                topic, payload = await self.inbox.get()
                if topic == topics.down(self.vid, kind):  # type: ignore[arg-type]
                    body = messages.decode(envelope.open_with(topic, payload, self.cloud_keys))
                    assert not isinstance(body, messages.StatusRequest)
                    return body


@pytest.fixture
async def car(shared_pki: DevPki, shared_broker: Mosquitto, request: pytest.FixtureRequest):
    vids = shared_pki.vids()
    index = getattr(request, "param", 0)
    c = Car(shared_pki, vids[index])
    await c.link.connect(shared_broker.host, shared_broker.port)
    yield c
    await c.link.close()


async def drain_retained(car: Car) -> None:
    await asyncio.sleep(0.2)
    while not car.inbox.empty():
        car.inbox.get_nowait()


async def test_a_car_gets_a_verified_policy_state_answering_its_request(
    worker: Worker, car: Car
) -> None:
    await drain_retained(car)
    started = time.perf_counter()
    car.send(car.request(seq=1))
    state = await car.next_reply("policy")
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert isinstance(state, messages.PolicyState)
    assert (state.vid, state.reply_to, state.status) == (car.vid, 1, "active")
    print(f"signed round trip through the broker: {elapsed_ms:.1f} ms")


def _tampered(payload: bytes) -> bytes:
    env = envelope.parse(payload)
    forged = env.body.replace(b'"seq":2', b'"seq":9')
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
    return payload.replace(enc(env.body), enc(forged))


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("tampered", "bad_signature"),
        ("wrong_key", "unknown_key"),
        ("replay", "replay"),
        ("vid_mismatch", "vid_mismatch"),
        ("garbage", "bad_envelope"),
    ],
)
async def test_a_rejected_request_gets_an_error_reply_and_changes_nothing_stored(
    worker: Worker, car: Car, shared_pki: DevPki, case: str, code: str
) -> None:
    await drain_retained(car)
    car.send(car.request(seq=1))
    before = await car.next_reply("policy")
    assert isinstance(before, messages.PolicyState)
    other_vid = shared_pki.vids()[1]
    payload = {
        "tampered": lambda: _tampered(car.request(seq=2)),
        "wrong_key": lambda: envelope.Signer(
            load_private_key(shared_pki.car_dir(other_vid) / "car.key")
        ).seal(
            topics.up(car.vid, "status"),
            messages.encode(messages.StatusRequest(vid=car.vid, seq=2)),
        ),
        "replay": lambda: car.request(seq=1),
        "vid_mismatch": lambda: car.request(seq=2, vid=other_vid),
        "garbage": lambda: b"\xff\x00 not an envelope",
    }[case]()
    car.send(payload)
    error = await car.next_reply("error")
    assert isinstance(error, messages.ErrorReply) and error.code == code
    assert worker.handler is not None
    assert worker.handler.vehicles[car.vid].last_seq == 1
    # The store and the retained state are as before.
    async with await Store.open(worker.config.db_path) as store:
        stored = (await store.load_vehicles())[car.vid]
    assert (stored.last_seq, stored.version) == (1, before.version)
    car.send(car.request(seq=2))
    after = await car.next_reply("policy")
    assert isinstance(after, messages.PolicyState) and after.version == before.version
    assert after.reply_to == 2


async def test_a_replay_is_refused_after_the_worker_restarts(
    shared_pki: DevPki, shared_broker: Mosquitto, car: Car, tmp_path: Path
) -> None:
    db = tmp_path / "cloud.db"
    _, task = await start_worker(shared_pki, shared_broker, db)
    await drain_retained(car)
    car.send(car.request(seq=5))
    assert isinstance(await car.next_reply("policy"), messages.PolicyState)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _, task = await start_worker(shared_pki, shared_broker, db)
    try:
        car.send(car.request(seq=5))
        error = await car.next_reply("error")
        assert isinstance(error, messages.ErrorReply) and error.code == "replay"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_car_registered_after_the_worker_started_is_served(
    own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path
) -> None:
    """As when another worker's API enrolls it: this worker reads it from the store."""
    db = tmp_path / "cloud.db"
    entries = json.loads(own_pki.vehicles_file.read_text())
    first_two = tmp_path / "first-two.json"
    first_two.write_text(json.dumps(entries[:2]))
    async with await Store.open(db) as store:
        await import_files(store, first_two, None)
    worker, task = await start_worker(own_pki, own_broker, db, seed=False)
    newcomer = entries[2]["vid"]
    try:
        assert newcomer not in worker.handler.vehicles  # type: ignore[union-attr]
        async with await Store.open(db) as store:  # another process registers it
            await import_files(store, own_pki.vehicles_file, None)
        car = Car(own_pki, newcomer)
        await car.link.connect(own_broker.host, own_broker.port)
        try:
            car.send(car.request(seq=1))
            reply = await car.next_reply("policy")
            assert isinstance(reply, messages.PolicyState) and reply.reply_to == 1
            assert reply.status == "unknown"  # registered, no policy yet
        finally:
            await car.link.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
