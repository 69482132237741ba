"""The car's MQTT link: one MQTT v5 session over mutual TLS, QoS 1, with presence and a will.

The only module that imports aiomqtt/paho; their errors become LinkError here.
The session is persistent (clean_start False, a session expiry interval), so the
broker queues the car's down messages while it is away. The CONNECT tells the broker
the largest packet the car takes (``MAX_PACKET_BYTES``): an MQTT 5 broker never sends
a larger one (it drops the message instead), so junk of any size costs the car nothing.
"""

import asyncio
import logging
import math
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .config import AgentConfig
from .errors import ConfigError, LinkError
from .protocol import topics
from .protocol.envelope import MAX_ENVELOPE_BYTES

QOS: Final = 1
MAX_PACKET_BYTES: Final = 2 * MAX_ENVELOPE_BYTES
"""MQTT 5 Maximum Packet Size the car announces: 16 KiB. The largest valid message is an
envelope of at most 8 KiB (a 4 KiB body in base64url is ≈ 5.5 KiB, plus the signature
and fields, with room for whitespace); its PUBLISH adds a fixed header (≤ 5 bytes), the
topic (≈ 50 bytes), a packet id and any properties the broker forwards. Doubling the
envelope limit keeps a margin of 8 KiB for those and still refuses anything absurd (the
broker's own limit, for every client, is 64 KiB)."""
ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
_NODELAY: Final = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
TCP_KEEPIDLE_S: Final = 20
TCP_KEEPINTVL_S: Final = 10
TCP_KEEPCNT: Final = 3
"""TCP keep-alive: a peer silent for 20 s is probed every 10 s; 3 misses drop it (50 s)."""


def _keepalive_options() -> list[tuple[int, int, int]]:
    """SO_KEEPALIVE plus the probe timing where this platform has the options."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", TCP_KEEPIDLE_S),
        ("TCP_KEEPINTVL", TCP_KEEPINTVL_S),
        ("TCP_KEEPCNT", TCP_KEEPCNT),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Received:
    """One message as it came off the wire."""

    topic: str
    payload: bytes
    retained: bool


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    """A client TLS context: TLS 1.2 or newer, the device CA only, the car's certificate."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up TLS: {exc}") from exc
    return ctx


class _SessionFlag:
    """Records the CONNACK's session-present flag, which aiomqtt does not pass on."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.present: bool | None = None
        paho = client._client
        self._inner = paho.on_connect
        paho.on_connect = self._on_connect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, *rest: Any) -> None:
        self.present = bool(getattr(flags, "session_present", False))
        if self._inner is not None:
            self._inner(client, userdata, flags, *rest)


class _TopicGuard:
    """Ends the session on a PUBLISH whose topic is not UTF-8 (MQTT requires it), as on any
    other broken MQTT: DISCONNECT 0x90 "Topic Name invalid". Without it aiomqtt's callback
    decodes the topic and raises inside paho's read, and paho, its read state never reset,
    handles the same packet again on every read: a wedged link and a flood of log lines."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.refused = 0
        paho = client._client
        self._inner = paho.on_message
        paho.on_message = self._on_message

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            msg.topic  # noqa: B018 - paho decodes the topic here
        except UnicodeDecodeError:
            self.refused += 1
            log.warning("broker sent a topic that is not UTF-8: ending the session")
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x90))
            return
        if self._inner is not None:
            self._inner(client, userdata, msg)


def _client(config: AgentConfig, tls: ssl.SSLContext) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = config.session_expiry_s
    props.MaximumPacketSize = MAX_PACKET_BYTES
    return aiomqtt.Client(
        config.broker_host,
        config.broker_port,
        identifier=config.vid,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=aiomqtt.Will(topics.presence(config.vid), OFFLINE, qos=QOS, retain=True),
        clean_start=False,
        properties=props,
        keepalive=config.keepalive_s,
        # aiomqtt's own timeouts use asyncio.wait_for, which on Python 3.11 can swallow a
        # cancellation that races the result (gh-86296) and leave a task running after its
        # TaskGroup ended. Every wait is bounded here with asyncio.timeout instead.
        timeout=math.inf,
        tls_context=tls,
        # paho leaves Nagle on; QoS 1 request/response then waits on delayed ACKs.
        # MQTT keep-alive notices a silent broker only when paho's loop runs; TCP
        # keep-alive also notices a peer gone without a FIN (a tunnel, a dead NAT).
        socket_options=[_NODELAY, *_keepalive_options()],
    )


class Link:
    """A connected session; get one from ``open_link``."""

    def __init__(
        self, client: aiomqtt.Client, config: AgentConfig, session_present: bool | None = None
    ) -> None:
        self._client = client
        self._config = config
        self.session_present = session_present
        """Whether the broker said it kept this client's session (None if not told)."""

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1; raise LinkError if the broker refuses."""
        try:
            async with asyncio.timeout(self._config.operation_timeout_s):
                granted = await self._client.subscribe(topic_filter, qos=QOS)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise LinkError(f"subscribe {topic_filter}: {exc!r}", reason="subscribe") from exc
        codes = [g.value if isinstance(g, ReasonCode) else int(g) for g in granted]
        if any(code >= 0x80 for code in codes):
            raise LinkError(f"subscribe {topic_filter} refused: {codes}", reason="subscribe")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raise LinkError."""
        try:
            async with asyncio.timeout(self._config.operation_timeout_s):
                await self._client.publish(topic, payload, qos=QOS, retain=retain)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise LinkError(f"publish {topic}: {exc!r}", reason="publish") from exc

    async def messages(self) -> AsyncIterator[Received]:
        """Incoming messages until the link drops (then LinkError)."""
        try:
            async for msg in self._client.messages:
                payload = msg.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = str(payload).encode("utf-8")
                yield Received(msg.topic.value, bytes(payload), bool(msg.retain))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"link dropped: {exc}", reason="dropped") from exc

    def tcp_nodelay(self) -> bool:
        """Whether the connection's socket has Nagle's algorithm off."""
        # aiomqtt does not expose the socket; paho does.
        sock = self._client._client.socket()
        if not isinstance(sock, socket.socket):
            return False
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def tcp_keepalive(self) -> dict[str, int]:
        """The connection's TCP keep-alive settings by option name (empty without a socket)."""
        sock = self._client._client.socket()
        if not isinstance(sock, socket.socket):
            return {}
        found = {"SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
        for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
            if hasattr(socket, name):
                found[name] = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
        return found


@asynccontextmanager
async def open_link(config: AgentConfig, tls: ssl.SSLContext) -> AsyncIterator[Link]:
    """Connect and announce retained ``online``; on a clean exit announce ``offline``."""
    client = _client(config, tls)
    flag = _SessionFlag(client)
    _TopicGuard(client)
    where = f"{config.broker_host}:{config.broker_port}"
    try:
        # paho bounds TCP and TLS by itself; this bounds them and the CONNACK together.
        async with asyncio.timeout(config.operation_timeout_s + config.keepalive_s):
            await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise LinkError(f"connect to {where}: {exc}", reason="connect") from exc
    except (OSError, TimeoutError) as exc:
        # A CONNACK that never came leaves paho's socket open on our loop: close it.
        client._client.disconnect()
        raise LinkError(f"connect to {where}: {exc!r}", reason="connect") from exc
    link = Link(client, config, flag.present)
    presence = topics.presence(config.vid)
    clean = False
    try:
        await link.publish(presence, ONLINE, retain=True)
        yield link
        clean = True
    finally:
        await _close(client, link, presence, clean=clean, timeout_s=config.operation_timeout_s)


async def _close(
    client: aiomqtt.Client, link: Link, presence: str, *, clean: bool, timeout_s: float
) -> None:
    if clean:
        try:
            await link.publish(presence, OFFLINE, retain=True)
        except LinkError as exc:
            log.info("could not announce offline: %s", exc)
    try:
        async with asyncio.timeout(timeout_s):
            await client.__aexit__(None, None, None)
    except (aiomqtt.MqttError, TimeoutError) as exc:
        log.info("disconnect was not clean: %r", exc)
    finally:
        # aiomqtt leaves a lost connection's error in this future when nothing awaited it;
        # read it here so asyncio does not log "Future exception was never retrieved".
        gone = client._disconnected
        if gone.done() and not gone.cancelled():
            gone.exception()
