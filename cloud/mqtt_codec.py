"""A sans-I/O codec for the subset of MQTT 3.1.1 a cloud worker speaks.

Bytes in, packets out; packets in, bytes out. No sockets, no clocks. The worker's link
(``cloud/link.py``) moves the bytes. Kept this small on purpose: paho's per-packet
Python work cost more CPU than the signature check on the hot path (docs/benchmarks.md).
"""

import struct
from dataclasses import dataclass
from typing import Final

MAX_PACKET_BYTES: Final = 65536
"""Larger packets are refused; the broker enforces the same limit (max_packet_size)."""

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x80, 0x90, 0xC0, 0xD0, 0xE0


class CodecError(Exception):
    """The peer sent bytes that are not MQTT 3.1.1 as this codec knows it."""


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    retain: bool


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


Packet = ConnAck | SubAck | Publish | PubAck | PingResp


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def connect(client_id: str, keepalive_s: int, clean_session: bool = True) -> bytes:
    """A CONNECT packet (no credentials: identity comes from the TLS client certificate)."""
    flags = 0x02 if clean_session else 0x00
    return _packet(CONNECT, _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive_s)
                   + _str(client_id))  # fmt: skip


def subscribe(packet_id: int, filters: tuple[str, ...], qos: int = 1) -> bytes:
    """A SUBSCRIBE packet for ``filters`` at ``qos``."""
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes((qos,)) for f in filters)
    return _packet(SUBSCRIBE | 0x02, body)


def publish(topic: str, payload: bytes, packet_id: int, *, retain: bool = False,
            dup: bool = False) -> bytes:  # fmt: skip
    """A QoS 1 PUBLISH packet."""
    first = PUBLISH | 0x02 | (0x08 if dup else 0) | (0x01 if retain else 0)
    return _packet(first, _str(topic) + struct.pack("!H", packet_id) + payload)


def puback(packet_id: int) -> bytes:
    """A PUBACK for ``packet_id``."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


PINGREQ_BYTES: Final = b"\xc0\x00"
DISCONNECT_BYTES: Final = b"\xe0\x00"


class Decoder:
    """Turns a byte stream into packets; keeps a partial packet until the rest arrives."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """Every complete packet in the stream so far; raise CodecError on a malformed one."""
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first = buf[pos]
            length, mult, i, complete = 0, 1, pos + 1, False
            for _ in range(4):
                if i >= end:
                    break
                b = buf[i]
                i += 1
                length += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    complete = True
                    break
            else:
                raise CodecError("remaining length takes more than 4 bytes")
            if not complete:
                break  # the length itself is still incomplete
            if length > MAX_PACKET_BYTES:
                raise CodecError(f"packet of {length} bytes exceeds {MAX_PACKET_BYTES}")
            if end - i < length:
                break
            out.append(_decode(first, bytes(buf[i : i + length])))
            pos = i + length
        del buf[:pos]
        return out


def _decode(first: int, body: bytes) -> Packet:
    kind = first & 0xF0
    try:
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            tlen = struct.unpack_from("!H", body)[0]
            topic = body[2 : 2 + tlen].decode("utf-8")
            pos = 2 + tlen
            packet_id = None
            if qos:
                packet_id = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            if qos > 1:
                raise CodecError("QoS 2 is not used here")
            return Publish(topic, body[pos:], qos, packet_id, bool(first & 0x01))
        if kind == PUBACK:
            return PubAck(struct.unpack("!H", body)[0])
        if kind == CONNACK:
            return ConnAck(bool(body[0] & 0x01), body[1])
        if kind == SUBACK:
            return SubAck(struct.unpack_from("!H", body)[0], tuple(body[2:]))
        if kind == PINGRESP:
            return PingResp()
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CodecError(f"malformed packet type {kind:#x}") from exc
    raise CodecError(f"unexpected packet type {kind:#x}")
