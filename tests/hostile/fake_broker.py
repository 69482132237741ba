"""A hostile MQTT 5 broker over TLS, for the agent to connect to: it speaks just enough of
the protocol to be connected to (CONNACK, SUBACK, PUBACK, PINGRESP), then sends whatever
the test tells it (junk, packets past the Maximum Packet Size the agent announced, forged or
replayed states, broken MQTT), as a compromised broker or a man in the middle with the
broker's key could.

It holds the broker's certificate from the dev PKI, so the agent's TLS checks pass: the
attack is on everything after TLS.
"""

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from cloud.pki import DevPki

WAIT_S = 5.0


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def publish_packet(
    topic: str | bytes, payload: bytes, packet_id: int, *, retain: bool = False
) -> bytes:
    """An MQTT 5 QoS 1 PUBLISH (no properties)."""
    body = _utf8(topic) + packet_id.to_bytes(2, "big") + b"\x00" + payload
    return bytes((0x32 | (0x01 if retain else 0),)) + remaining_length(len(body)) + body


async def _read_varint(reader: asyncio.StreamReader) -> int:
    value, mult = 0, 1
    for _ in range(4):
        byte = (await reader.readexactly(1))[0]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value
        mult *= 128
    raise ValueError("remaining length takes more than 4 bytes")


def _skip_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, pos
        mult *= 128


@dataclass
class Session:
    """One connection of the agent to the hostile broker."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    client_id: str = ""
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[tuple[str, bytes]] = field(default_factory=list)
    """What the agent published: (topic, payload)."""
    acked: set[int] = field(default_factory=set)
    _next_id: int = 0

    def new_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as it is (the agent may hang up meanwhile)."""
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            self.writer.write(data)
            await self.writer.drain()

    async def publish(self, topic: str | bytes, payload: bytes, *, retain: bool = False) -> int:
        """PUBLISH at QoS 1, whatever its size; the packet id."""
        packet_id = self.new_id()
        await self.send_raw(publish_packet(topic, payload, packet_id, retain=retain))
        return packet_id

    async def wait_acked(self, packet_id: int, timeout_s: float = WAIT_S) -> bool:
        """Whether the agent sent PUBACK for ``packet_id`` within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while packet_id not in self.acked and not self.closed.is_set():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return packet_id in self.acked

    async def serve(self) -> None:
        """Answer the agent's packets until it hangs up."""
        try:
            while True:
                first = (await self.reader.readexactly(1))[0]
                body = await self.reader.readexactly(await _read_varint(self.reader))
                await self._handle(first, body)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            self.closed.set()
            self.writer.close()

    async def _handle(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == 0x10:  # CONNECT: protocol name, level, flags, keepalive, properties, id
            pos = 2 + int.from_bytes(body[:2], "big") + 4
            props, pos = _skip_varint(body, pos)
            pos += props
            size = int.from_bytes(body[pos : pos + 2], "big")
            self.client_id = body[pos + 2 : pos + 2 + size].decode()
            await self.send_raw(b"\x20\x03\x00\x00\x00")
        elif kind == 0x80:  # SUBSCRIBE: packet id, properties, filters (each with options)
            packet_id = body[:2]
            props, pos = _skip_varint(body, 2)
            pos += props
            filters = 0
            while pos < len(body):
                pos += 2 + int.from_bytes(body[pos : pos + 2], "big") + 1
                filters += 1
            suback = packet_id + b"\x00" + b"\x01" * filters
            await self.send_raw(b"\x90" + remaining_length(len(suback)) + suback)
            self.subscribed.set()
        elif kind == 0x30:  # PUBLISH from the agent (QoS 1)
            size = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + size].decode()
            pos = 2 + size
            packet_id = b""
            if (first >> 1) & 0x03:
                packet_id, pos = body[pos : pos + 2], pos + 2
            props, pos = _skip_varint(body, pos)
            self.received.append((topic, body[pos + props :]))
            if packet_id:
                await self.send_raw(b"\x40\x02" + packet_id)
        elif kind == 0x40:  # PUBACK for one of ours
            self.acked.add(int.from_bytes(body[:2], "big"))
        elif kind == 0xC0:  # PINGREQ
            await self.send_raw(b"\xd0\x00")
        elif kind == 0xE0:  # DISCONNECT
            raise ConnectionError("the agent disconnected")


@dataclass
class HostileBroker:
    """Accepts the agent's connections over TLS; each becomes a ``Session``."""

    port: int = 0
    sessions: "asyncio.Queue[Session]" = field(default_factory=asyncio.Queue)
    all: list[Session] = field(default_factory=list)

    async def next_session(self, timeout_s: float = WAIT_S) -> Session:
        """The agent's next connection, once it has subscribed."""
        async with asyncio.timeout(timeout_s):
            session = await self.sessions.get()
            await session.subscribed.wait()
        return session


@asynccontextmanager
async def hostile_broker(pki: DevPki) -> AsyncIterator[HostileBroker]:
    """A HostileBroker on a free loopback port with the dev PKI's broker certificate."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.broker_cert, pki.broker_key)
    broker = HostileBroker()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(reader, writer)
        broker.all.append(session)
        broker.sessions.put_nowait(session)
        await session.serve()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0, ssl=tls)
    broker.port = int(server.sockets[0].getsockname()[1])
    try:
        yield broker
    finally:
        server.close()
        for session in broker.all:
            # At once: a graceful TLS close waits for a peer that may be wedged.
            session.writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                for session in broker.all:
                    await session.closed.wait()  # each session's task ends by itself
                await server.wait_closed()
