"""Malformed MQTT straight to the broker's TLS port, from a car with a valid certificate (the
only way past the handshake): the broker closes that connection, and a bystander car and
the worker carry on."""

import asyncio
import contextlib
import ssl
from collections.abc import Iterator

import pytest

from cloud import mqtt_codec as codec
from tests.broker.mqtt_probe import QUIET_S, Clients, Probe, client_context

from .conftest import TallyFactory
from .harness import Cloud

GROUP = "broker bytes"
CLOSE_S = 5.0
"""How soon the broker must drop a connection that broke the protocol."""


@pytest.fixture
def probes(cloud: Cloud) -> Iterator[Clients]:
    made = Clients(cloud.pki, cloud.broker)
    yield made
    made.close_all()


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _cases(vid: str) -> dict[str, list[tuple[str, bytes]]]:
    """Per attack: (variant, the bytes sent on one fresh TLS connection)."""
    connect = codec.connect(vid, 30)
    topic = f"ctpl/v1/{vid}/up/status".encode()
    huge = 1_500_000
    big_publish = (
        bytes((0x32,))
        + _remaining_length(huge)
        + len(topic).to_bytes(2, "big")
        + topic
        + b"\x00\x01"
        + b"m" * (huge - len(topic) - 4)
    )
    return {
        "garbage after CONNECT": [
            ("0xff bytes", connect + b"\xff" * 64),
            ("a reserved packet type (0x00)", connect + b"\x00\x00"),
            ("a second CONNECT", connect + connect),
            ("a PUBLISH with a topic length past its end", connect + b"\x32\x05\xff\xff\x00\x01x"),
            (
                "a PUBLISH whose topic is not UTF-8",
                connect + b"\x32\x07\x00\x03\xff\xfe\xfd\x00\x01",
            ),
            ("a PUBREL with reserved flags set", connect + b"\x6c\x02\x00\x01"),
        ],
        "a bad remaining length": [
            ("five length bytes", connect + b"\x30\xff\xff\xff\xff\x7f"),
            ("five length bytes instead of CONNECT", b"\x10\xff\xff\xff\xff\x7f"),
            (
                "a length past the largest (4 bytes, 0xff ff ff 7f)",
                connect + b"\x30\xff\xff\xff\x7f" + b"z" * 64,
            ),
            ("a CONNECT whose length cuts its client id", b"\x10\x0e" + connect[2:]),
        ],
        "a 1.5 MB packet": [
            ("a 1.5 MB PUBLISH after CONNECT", connect + big_publish),
            (
                "a 1.5 MB CONNECT",
                b"\x10" + _remaining_length(huge) + b"\x00\x04MQTT\x04\x02" + b"\x00" * (huge - 8),
            ),
        ],
    }


async def _send_and_wait_closed(cloud: Cloud, vid: str, data: bytes) -> tuple[bool, bytes]:
    """Send ``data`` on a new mutual-TLS connection as car ``vid``: whether the broker closed
    it within CLOSE_S, and what it sent before that."""
    car_dir = cloud.pki.car_dir(vid)
    tls = client_context(cloud.pki.ca_cert, car_dir / "car.crt", car_dir / "car.key")
    reader, writer = await asyncio.open_connection(cloud.broker.host, cloud.broker.port, ssl=tls)
    got = b""
    closed = False
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.drain()
        try:
            async with asyncio.timeout(CLOSE_S):
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    while chunk := await reader.read(65536):
                        got += chunk
            closed = True
        except TimeoutError:
            closed = False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(2):
                await writer.wait_closed()
        for sock in tls.sockets:
            sock.close()
    return closed, got


@pytest.mark.parametrize(
    "attack", ["garbage after CONNECT", "a bad remaining length", "a 1.5 MB packet"]
)
async def test_malformed_mqtt_closes_that_connection_and_no_other(
    cloud: Cloud, probes: Clients, tally: TallyFactory, attack: str
) -> None:
    row = tally(
        f"malformed MQTT: {attack}",
        group=GROUP,
        expected="the broker closes that connection; others unaffected",
    )
    attacker_vid, bystander_vid = cloud.vids[2], cloud.vids[1]
    watch = await asyncio.to_thread(probes.cloud_probe("watch").connect)
    assert await asyncio.to_thread(watch.subscribe, "ctpl/v1/#") == [1]
    bystander: Probe = await asyncio.to_thread(probes.car(bystander_vid).connect)
    assert await asyncio.to_thread(bystander.subscribe, f"ctpl/v1/{bystander_vid}/down/#") == [1]
    for variant, data in _cases(attacker_vid)[attack]:
        closed, got = await _send_and_wait_closed(cloud, attacker_vid, data)
        # What the broker may send first: a CONNACK to the valid CONNECT, nothing else.
        extra = got[4:] if got.startswith(b"\x20\x02") else got
        healthy = (
            not bystander.closed
            and cloud.broker.proc is not None
            and cloud.broker.proc.poll() is None
        )
        row.record(
            refused=closed,
            leaked=bool(extra),
            crashed=not healthy,
            what=f"{variant}: closed={closed}, sent {got[:16]!r}",
        )
    await asyncio.sleep(QUIET_S)
    from_attacker = [m.topic for m in watch.messages if attacker_vid in m.topic]
    row.leaked += len(from_attacker)  # nothing of a broken stream reached anyone
    assert not bystander.closed, f"the bystander was dropped: {bystander.state()}"
    if not await cloud.answers(bystander_vid) or cloud.crashed():
        row.crashed("the worker no longer answers a signed request")
    row.check()
