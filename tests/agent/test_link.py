"""The agent against a real Mosquitto (mTLS, the shipped ACL) and a raw paho fake cloud."""

import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import dumps_toml
from agent.errors import NotConnectedError, StateTimeoutError
from agent.link import (
    MAX_PACKET_BYTES,
    TCP_KEEPCNT,
    TCP_KEEPIDLE_S,
    TCP_KEEPINTVL_S,
    open_link,
    tls_context,
)
from agent.protocol import envelope, messages, topics
from agent.protocol.envelope import MAX_ENVELOPE_BYTES, Signer
from agent.protocol.keys import generate_private_key, kid_for, load_public_key
from agent.protocol.messages import ErrorReply, StatusRequest
from agent.runner import Agent
from agent.store import Store
from cloud.pki import DevPki
from simulator.broker import Mosquitto, free_port


def open_request(pki: DevPki, vid: str, payload: bytes) -> Any:
    """Verify a status request with the car's public key, taken from its certificate."""
    key = load_public_key((pki.car_dir(vid) / "car.crt").read_bytes())
    topic = topics.up(vid, "status")
    return messages.decode(envelope.open_with(topic, payload, {kid_for(key): key}))


async def test_status_request_reaches_the_cloud_and_verifies(
    pki: DevPki, vid: str, make_config: Any, cloud: Any, run_agent: Any
) -> None:
    async with run_agent(Agent(make_config())):
        payload, _ = await cloud.receive(topics.up(vid, "status"))
    assert open_request(pki, vid, payload) == StatusRequest(vid=vid, seq=1)


async def test_presence_is_online_then_offline(
    vid: str, make_config: Any, cloud: Any, run_agent: Any
) -> None:
    async with run_agent(Agent(make_config())):
        assert await cloud.receive(topics.presence(vid)) == (b"online", False)
    assert await cloud.receive(topics.presence(vid)) == (b"offline", False)


async def test_presence_is_retained_for_late_subscribers(
    vid: str, make_config: Any, new_cloud: Any, run_agent: Any
) -> None:
    async with run_agent(Agent(make_config())) as agent:
        first = await new_cloud()
        await first.receive(topics.up(vid, "status"))
        assert agent.connected
        late = await new_cloud()
        assert await late.receive(topics.presence(vid)) == (b"online", True)


async def test_link_sets_tcp_nodelay(make_config: Any) -> None:
    config = make_config()
    async with open_link(config, tls_context(config)) as link:
        assert link.tcp_nodelay()


async def test_link_sets_tcp_keepalive_so_a_dead_peer_is_noticed_within_a_minute(
    make_config: Any,
) -> None:
    config = make_config()
    assert config.keepalive_s * 1.5 <= 60  # paho's own deadline for a silent broker
    async with open_link(config, tls_context(config)) as link:
        options = link.tcp_keepalive()
    assert options["SO_KEEPALIVE"] == 1
    if sys.platform == "linux":
        assert options == {
            "SO_KEEPALIVE": 1,
            "TCP_KEEPIDLE": TCP_KEEPIDLE_S,
            "TCP_KEEPINTVL": TCP_KEEPINTVL_S,
            "TCP_KEEPCNT": TCP_KEEPCNT,
        }
        assert TCP_KEEPIDLE_S + TCP_KEEPINTVL_S * TCP_KEEPCNT <= 60


async def test_signed_state_is_accepted_and_stored(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any
) -> None:
    config = make_config()
    agent = Agent(config)
    async with run_agent(agent):
        await cloud.receive(topics.up(vid, "status"))
        sent = await cloud.send_state(make_state(vid, version=1, seq=7, reply_to=1))
        state = await agent.wait_for_state(5.0)
    assert (state.version, state.seq, state.reply_to) == (1, 7, 1)
    assert agent.counters == {"accepted": 1}
    async with Store(config.db_path) as store:
        record = await store.policy()
    assert record is not None
    assert (record.envelope, record.topic, record.version) == (sent, topics.down(vid, "policy"), 1)


async def test_retained_state_arrives_on_connect_and_is_held_after_restart(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any, until: Any
) -> None:
    retained = await cloud.send_state(make_state(vid, version=2, seq=3), retain=True)
    config = make_config()
    async with run_agent(Agent(config)) as agent:
        assert (await agent.wait_for_state(5.0)).version == 2
    again = Agent(config)
    async with run_agent(again):
        # The stored record, re-verified at start, counts before any message arrives.
        assert (await again.wait_for_state(5.0)).version == 2
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send(topics.down(vid, "policy"), retained)
        await until(lambda: again.counters["duplicate"] >= 1, "the copy seen as a duplicate")
        await cloud.send_state(make_state(vid, version=3, seq=4))
        assert (await again.wait_for_state(5.0, min_version=3)).version == 3
    # Mosquitto may or may not resend the retained copy on the resumed session's subscribe.
    assert again.counters.keys() == {"duplicate", "accepted"}
    assert again.counters["accepted"] == 1


async def test_state_signed_with_an_unpinned_key_is_refused(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any, until: Any
) -> None:
    config = make_config()
    rogue = Signer(generate_private_key())
    async with run_agent(Agent(config)) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send_state(make_state(vid, version=9, seq=1), signer=rogue)
        await until(lambda: agent.counters["unknown_key"] == 1, "refusal of the rogue key")
        assert agent.state is None
    async with Store(config.db_path) as store:
        assert await store.policy() is None


async def test_state_forged_under_the_pinned_kid_is_refused(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any, until: Any
) -> None:
    rogue = Signer(generate_private_key())
    forged = json.loads(cloud.seal_state(make_state(vid, version=9, seq=1), signer=rogue))
    forged["kid"] = cloud.signer.kid
    async with run_agent(Agent(make_config())) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send_state(make_state(vid, version=1, seq=1))
        await agent.wait_for_state(5.0)
        await cloud.send(topics.down(vid, "policy"), json.dumps(forged).encode())
        await until(lambda: agent.counters["bad_signature"] == 1, "refusal of the forgery")
        assert agent.state is not None and agent.state.version == 1


async def test_a_packet_over_the_cars_maximum_never_reaches_it(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any
) -> None:
    topic = topics.down(vid, "policy")
    oversized = b"x" * (MAX_PACKET_BYTES + 1024)  # under the broker's own 64 KiB limit
    junk = b"y" * (MAX_ENVELOPE_BYTES + 1)  # too large an envelope, but within the packet limit
    agent = Agent(make_config())
    async with run_agent(agent):
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send(topic, oversized)
        await cloud.send(topic, junk)
        await cloud.send_state(make_state(vid, version=1, seq=1))
        await agent.wait_for_state(5.0)
        # One publisher, one topic, QoS 1: delivered in order, so had the broker sent the
        # oversized packet, the agent would have counted it before the state.
        assert agent.counters == {"bad_envelope": 1, "accepted": 1}
        assert agent.connected
    assert agent.link_failures == {}


async def test_a_flood_of_junk_is_counted_in_full_and_logged_in_a_handful_of_lines(
    vid: str,
    make_config: Any,
    make_state: Any,
    cloud: Any,
    run_agent: Any,
    until: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.runner")
    topic = topics.down(vid, "policy")
    forged = json.loads(
        cloud.seal_state(make_state(vid, version=9, seq=1), signer=Signer(generate_private_key()))
    )
    forged["kid"] = cloud.signer.kid
    floods = {"bad_envelope": b"junk", "bad_signature": json.dumps(forged).encode()}
    agent = Agent(make_config())
    async with run_agent(agent):
        await cloud.receive(topics.up(vid, "status"))
        sent = 0
        for _ in range(15):  # 3,000 in windows of 200, within the broker's queue for a car
            for _ in range(200):
                payload = floods["bad_envelope" if sent % 2 else "bad_signature"]
                assert cloud.client.publish(topic, payload, qos=1).rc == 0
                sent += 1
            await until(lambda n=sent: agent.counters.total() >= n, f"{sent} messages dropped")
        await cloud.send_state(make_state(vid, version=1, seq=1))
        assert (await agent.wait_for_state(5.0)).version == 1
    assert agent.counters == {"bad_envelope": 1500, "bad_signature": 1500, "accepted": 1}
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.runner" and "dropped" in r.getMessage()
    ]
    # The first of each reason in full, then (at stop, within the minute) one count each.
    assert len(lines) == 4, lines
    assert sum("dropped message on" in line for line in lines) == 2
    assert sum("dropped 1499 more messages" in line for line in lines) == 2


async def test_older_version_after_newer_is_refused_as_rollback(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any, until: Any
) -> None:
    config = make_config()
    async with run_agent(Agent(config)) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send_state(make_state(vid, version=3, seq=10))
        await agent.wait_for_state(5.0, min_version=3)
        await cloud.send_state(make_state(vid, version=2, seq=11, status="lapsed"))
        await until(lambda: agent.counters["rollback"] == 1, "refusal of the rollback")
        await cloud.send_state(make_state(vid, version=3, seq=9, status="lapsed"))
        await until(lambda: agent.counters["replay"] == 1, "refusal of the replay")
        assert agent.state is not None
        assert (agent.state.version, agent.state.seq, agent.state.status) == (3, 10, "active")
    async with Store(config.db_path) as store:
        record = await store.policy()
    assert record is not None and (record.version, record.seq) == (3, 10)


async def test_state_for_another_car_on_this_cars_topic_is_refused(
    pki: DevPki,
    vid: str,
    make_config: Any,
    make_state: Any,
    cloud: Any,
    run_agent: Any,
    until: Any,
) -> None:
    body = messages.encode(make_state(pki.vids()[1], version=1, seq=1))
    payload = cloud.signer.seal(topics.down(vid, "policy"), body)
    async with run_agent(Agent(make_config())) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send(topics.down(vid, "policy"), payload)
        await until(lambda: agent.counters["vid_mismatch"] == 1, "refusal of a foreign state")
        assert agent.state is None


async def test_error_reply_is_kept_as_last_error(
    vid: str, make_config: Any, cloud: Any, run_agent: Any, until: Any
) -> None:
    config = make_config()
    reply = ErrorReply(vid=vid, seq=5, reply_to=1, code="no_policy", message="no policy on file")
    topic = topics.down(vid, "error")
    async with run_agent(Agent(config)) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send(topic, cloud.signer.seal(topic, messages.encode(reply)))
        await until(lambda: agent.last_error is not None, "the error reply")
    assert agent.last_error == reply
    async with Store(config.db_path) as store:
        stored = await store.last_error()
    assert stored is not None and (stored.code, stored.reply_to) == ("no_policy", 1)


async def test_unanswered_requests_repeat_and_on_demand_with_growing_seqs(
    pki: DevPki, vid: str, make_config: Any, cloud: Any, run_agent: Any
) -> None:
    topic = topics.up(vid, "status")
    config = make_config(status_interval_s=0.4, reply_timeout_s=0.1)
    async with run_agent(Agent(config)) as agent:
        seqs = [open_request(pki, vid, (await cloud.receive(topic))[0]).seq for _ in range(3)]
        asked = await agent.request_status()
    assert seqs == [1, 2, 3]
    assert asked > 3


async def test_agent_reconnects_after_the_broker_restarts(
    pki: DevPki,
    vid: str,
    broker: Mosquitto,
    make_config: Any,
    new_cloud: Any,
    run_agent: Any,
    until: Any,
) -> None:
    topic = topics.up(vid, "status")
    async with run_agent(Agent(make_config())) as agent:
        before = await new_cloud()
        await before.receive(topic)
        # Gone before the restart: a fake cloud reconnecting under the same client id
        # as the next one would knock it off.
        before.close()
        broker.stop()
        await until(lambda: not agent.connected, "noticing the broker is gone")
        broker.start()
        await until(lambda: agent.connected, "reconnecting")
        after = await new_cloud()
        seq = await agent.request_status()
        while (request := open_request(pki, vid, (await after.receive(topic))[0])).seq != seq:
            pass
    assert request == StatusRequest(vid=vid, seq=seq)
    assert seq >= 3


async def test_agent_keeps_retrying_while_no_broker_listens(
    make_config: Any, run_agent: Any, until: Any
) -> None:
    agent = Agent(make_config(broker_port=free_port()))
    async with run_agent(agent):
        await until(lambda: agent.link_failures["connect"] >= 3, "three failed connects")
        assert not agent.connected


async def test_request_status_needs_the_link(make_config: Any) -> None:
    with pytest.raises(NotConnectedError):
        await Agent(make_config()).request_status()


async def test_wait_for_state_follows_the_cloud_seq(
    vid: str, make_config: Any, make_state: Any, cloud: Any, run_agent: Any
) -> None:
    async with run_agent(Agent(make_config())) as agent:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send_state(make_state(vid, version=1, seq=4))
        first = await agent.wait_for_state(5.0)
        seq = await agent.request_status()
        await cloud.send_state(make_state(vid, version=1, seq=5, reply_to=seq))
        newer = await agent.wait_for_state(5.0, min_seq=first.seq + 1)
    assert (newer.version, newer.seq, newer.reply_to) == (1, 5, seq)


async def test_wait_for_state_times_out_with_its_own_error(make_config: Any) -> None:
    with pytest.raises(StateTimeoutError):
        await Agent(make_config()).wait_for_state(0.05)


async def test_run_command_syncs_and_stops_on_sigterm(
    vid: str, make_config: Any, make_state: Any, cloud: Any, tmp_path: Path
) -> None:
    config = make_config()
    toml = tmp_path / "agent.toml"
    toml.write_text(dumps_toml(dataclasses.asdict(config)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(toml), "--log-level", "WARNING",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await cloud.receive(topics.up(vid, "status"))
        await cloud.send_state(make_state(vid, version=1, seq=1))
        await cloud.send_state(make_state(vid, version=2, seq=2))
        # The agent is another process: watch its store (WAL lets a reader in).
        async with asyncio.timeout(5), Store(config.db_path) as store:
            while (record := await store.policy()) is None or record.version != 2:
                await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert await cloud.receive(topics.presence(vid)) == (b"offline", False)
