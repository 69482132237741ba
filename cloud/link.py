"""The cloud's MQTT link: MQTT 3.1.1 over TLS on an asyncio Protocol, with ``mqtt_codec``.

Measured first (docs/benchmarks.md): driving paho from asyncio cost ≈ 150 µs of CPU
per round trip in paho's per-packet Python, more than the ES256 verify itself, and
held one worker near a quarter of the crypto ceiling. This link parses packets with
the sans-I/O codec and writes each batch of outgoing packets in one TLS write.
Identity is the TLS client certificate; the broker's ACL does the rest.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from . import mqtt_codec as codec
from .errors import LinkError

log = logging.getLogger(__name__)
MessageHandler = Callable[[str, bytes], None]
MAX_INFLIGHT = 65535


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, server verified against ``ca_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


class _Protocol(asyncio.Protocol):
    def __init__(self, link: "MqttLink") -> None:
        self.link = link
        self.decoder = codec.Decoder()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.decoder.feed(data)
        except codec.CodecError as exc:
            log.error("broker sent malformed MQTT: %s", exc)
            self.link._abort()
            return
        for packet in packets:
            self.link._packet(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(exc)


class MqttLink:
    """One MQTT 3.1.1 connection at QoS 1; incoming messages go to ``on_message``."""

    def __init__(
        self,
        *,
        client_id: str,
        tls: ssl.SSLContext,
        on_message: MessageHandler,
        subscriptions: tuple[str, ...] = (),
        clean_start: bool = True,
        keepalive_s: int = 30,
    ) -> None:
        self.client_id = client_id
        self._tls = tls
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._clean = clean_start
        self._keepalive_s = keepalive_s
        self._transport: asyncio.Transport | None = None
        self._out = bytearray()
        self._flush_scheduled = False
        self._next_id = 0
        self._inflight: set[int] = set()
        self._connack: asyncio.Future[codec.ConnAck] | None = None
        self._suback: asyncio.Future[codec.SubAck] | None = None
        self._pong = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._pinger: asyncio.Task[None] | None = None
        self.publish_failures = 0

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection and it is up."""
        return self._transport is not None and not self._disconnected.is_set()

    @property
    def inflight(self) -> int:
        """QoS 1 messages sent and not yet acknowledged."""
        return len(self._inflight)

    async def connect(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        """Connect and subscribe; raise LinkError if refused or not done within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        self._connack, self._suback = loop.create_future(), loop.create_future()
        self._disconnected.clear()
        self._inflight.clear()
        try:
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self), host, port, ssl=self._tls, server_hostname=host
                )
                sock = transport.get_extra_info("socket")
                if sock is not None:  # QoS 1 request/response dies by Nagle without this
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._transport = transport
                self._write(codec.connect(self.client_id, self._keepalive_s, self._clean))
                ack = await self._connack
                if ack.return_code != 0:
                    raise LinkError(f"broker refused the connection: return code {ack.return_code}")
                if self._subscriptions:
                    self._write(codec.subscribe(self._new_id(), self._subscriptions))
                    sub = await self._suback
                    if any(c >= 0x80 for c in sub.codes):
                        raise LinkError(f"broker refused the subscriptions: {sub.codes}")
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._abort()
            raise LinkError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        except LinkError:
            self._abort()
            raise
        self._pinger = asyncio.create_task(self._ping_loop(), name=f"mqtt-ping-{self.client_id}")

    async def wait_disconnected(self) -> None:
        """Return once the connection is lost."""
        await self._disconnected.wait()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS 1 publish; False (and counted) when not connected or the window is full."""
        if not self.connected or len(self._inflight) >= MAX_INFLIGHT:
            self.publish_failures += 1
            return False
        packet_id = self._new_id()
        self._inflight.add(packet_id)
        self._write(codec.publish(topic, payload, packet_id, retain=retain))
        return True

    async def close(self) -> None:
        """Disconnect cleanly."""
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None and not self._disconnected.is_set():
            self._write(codec.DISCONNECT_BYTES)
            self._flush()
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._disconnected.wait()
        self._transport = None

    # -- inside -----------------------------------------------------------------

    def _new_id(self) -> int:
        for _ in range(MAX_INFLIGHT):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight:
                return self._next_id
        raise LinkError("no free packet id")  # publish() keeps the window below this

    def _write(self, data: bytes) -> None:
        self._out += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(bytes(self._out))
        self._out.clear()

    def _packet(self, packet: codec.Packet) -> None:
        if isinstance(packet, codec.Publish):
            if packet.packet_id is not None:
                self._write(codec.puback(packet.packet_id))
            self._on_message(packet.topic, packet.payload)
        elif isinstance(packet, codec.PubAck):
            self._inflight.discard(packet.packet_id)
        elif isinstance(packet, codec.PingResp):
            self._pong.set()
        elif isinstance(packet, codec.ConnAck):
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(packet)
        elif (
            isinstance(packet, codec.SubAck)
            and self._suback is not None
            and not self._suback.done()
        ):
            self._suback.set_result(packet)

    async def _ping_loop(self) -> None:
        """Send PINGREQ every half keep-alive; a missing PINGRESP means the link is dead."""
        while True:
            await asyncio.sleep(self._keepalive_s / 2)
            self._pong.clear()
            self._write(codec.PINGREQ_BYTES)
            try:
                async with asyncio.timeout(self._keepalive_s / 2):
                    await self._pong.wait()
            except TimeoutError:
                log.warning("no PINGRESP from the broker; dropping the link")
                self._abort()
                return

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lost(None)

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("broker link lost: %s", exc)
        if self._inflight:
            log.warning("%d replies were unacknowledged when the link went", len(self._inflight))
        self._disconnected.set()
        for fut in (self._connack, self._suback):
            if fut is not None and not fut.done():
                fut.set_exception(LinkError(f"connection lost: {exc!r}"))
                fut.exception()  # retrieved here so an unawaited one does not warn
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
