"""A lean MQTT 3.1.1 QoS 1 client over asyncio streams, for load generation only.

The benchmark's generator must cost less CPU per message than the worker it drives;
paho's per-packet Python work made the generator, not the worker, the bottleneck.
This client speaks just enough MQTT: CONNECT, SUBSCRIBE, PUBLISH (QoS 1) and PUBACK.
"""

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Callable

_CONNACK, _PUBLISH, _PUBACK, _SUBACK = 0x20, 0x30, 0x40, 0x90


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


class LeanClient:
    """One MQTT 3.1.1 connection; ``on_publish(topic, payload)`` is called for each message."""

    def __init__(self, client_id: str, on_publish: Callable[[str, bytes], None]) -> None:
        self.client_id = client_id
        self.on_publish = on_publish
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._acks: asyncio.Queue[int] = asyncio.Queue()

    async def connect(self, host: str, port: int, tls: ssl.SSLContext, subs: list[str]) -> None:
        """Connect (clean session), subscribe at QoS 1, and start reading."""
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
        self._writer = writer
        var = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60)
        writer.write(_packet(0x10, var + _string(self.client_id)))
        head = await reader.readexactly(4)
        if head[0] != _CONNACK or head[3] != 0:
            raise ConnectionError(f"CONNACK refused: {head!r}")
        body = struct.pack("!H", 1) + b"".join(_string(s) + b"\x01" for s in subs)
        writer.write(_packet(0x82, body))
        first = await reader.readexactly(1)
        length = (await reader.readexactly(1))[0]
        granted = (await reader.readexactly(length))[2:]
        if first[0] != _SUBACK or any(g >= 0x80 for g in granted):
            raise ConnectionError(f"SUBACK refused: {granted!r}")
        self._reader_task = asyncio.create_task(self._read(reader), name=f"lean-{self.client_id}")

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a QoS 1 PUBLISH (PUBACKs are read and dropped)."""
        assert self._writer is not None
        self._next_id = self._next_id % 65535 + 1
        body = _string(topic) + struct.pack("!H", self._next_id) + payload
        self._writer.write(_packet(0x32, body))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            first = (await reader.readexactly(1))[0]
            length, mult = 0, 1
            while True:
                b = (await reader.readexactly(1))[0]
                length += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            data = await reader.readexactly(length)
            if first & 0xF0 == _PUBLISH:
                tlen = struct.unpack_from("!H", data)[0]
                topic = data[2 : 2 + tlen].decode()
                pos = 2 + tlen
                if first & 0x06:  # QoS 1: acknowledge
                    assert self._writer is not None
                    self._writer.write(b"\x40\x02" + data[pos : pos + 2])
                    pos += 2
                self.on_publish(topic, data[pos:])

    async def close(self) -> None:
        """Disconnect."""
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")
            self._writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await self._writer.wait_closed()
