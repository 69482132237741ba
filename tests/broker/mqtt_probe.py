"""A bare paho-mqtt v5 client that records what the broker answers, every wait bounded.

A ``Probe`` connects once (no automatic reconnect), and keeps the CONNACK, every
SUBACK and PUBACK reason code, every message received and how and when the connection
ended, so that a test can assert on what the broker really did. A probe's client id is
its certificate's CN unless a test says otherwise: the broker refuses any other.
"""

import contextlib
import itertools
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cloud.pki import CLOUD_IDENTITY, DevPki, issue_cloud_identity
from simulator.broker import Mosquitto

WAIT_S: Final = 5.0
"""The longest any single wait on the broker may take."""

QUIET_S: Final = 0.5
"""How long to listen when asserting that nothing arrives."""

NOT_AUTHORIZED: Final = 135
"""MQTT 5 reason code 0x87 "Not authorized"."""

GRANTED: Final = [1]
"""The SUBACK of one filter granted at QoS 1."""

REFUSED: Final = [NOT_AUTHORIZED]
"""The SUBACK of one filter the broker refused."""


def poll_until(what: str, pred: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll ``pred`` until it holds; raise AssertionError naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.01)


class TrackingContext(ssl.SSLContext):
    """An SSLContext that remembers the sockets it wraps.

    paho drops the TLS socket without closing it when the handshake fails in
    ``connect()``; the probe closes what this context remembers, so no socket leaks.
    """

    sockets: list[socket.socket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        raw = args[0] if args else kwargs["sock"]
        self.sockets.append(raw)  # closed too: a handshake that fails in here leaves it open
        sock = super().wrap_socket(*args, **kwargs)
        self.sockets.append(sock)
        return sock


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    tls_min: ssl.TLSVersion | None = None,
    tls_max: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> TrackingContext:
    """A client TLS context trusting ``ca``, presenting ``cert``/``key`` when given."""
    ctx = TrackingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sockets = []
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    # Old protocol versions are deprecated in Python; they are set here on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if tls_min is not None:
            ctx.minimum_version = tls_min
        if tls_max is not None:
            ctx.maximum_version = tls_max
    return ctx


@dataclass
class Received:
    """One PUBLISH the probe received."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


@dataclass
class Probe:
    """One paho client on one connection; ``close()`` always releases it."""

    name: str
    host: str
    port: int
    context: TrackingContext | None
    client_id: str = ""
    username: str | None = None
    clean_start: bool = True
    session_expiry_s: int | None = None
    connack: ReasonCode | None = None
    connack_properties: Properties | None = None
    connect_error: BaseException | None = None
    disconnect: ReasonCode | None = None
    closed: bool = False
    closed_at: float | None = None
    """time.monotonic() when the connection ended."""
    messages: list[Received] = field(default_factory=list)
    subacks: dict[int, list[int]] = field(default_factory=dict)
    pubacks: dict[int, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._started = False
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        if self.context is not None:
            self.client.tls_set_context(self.context)
        if self.username is not None:
            self.client.username_pw_set(self.username, "any password")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_log = self._on_log

    # ---- callbacks (paho's network thread) --------------------------------
    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, props: Any) -> None:
        with self._cond:
            self.connack = rc
            self.connack_properties = props
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.disconnect = rc
            self.closed = True
            self.closed_at = time.monotonic()
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), msg.retain, msg.qos))
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self.subacks[mid] = [rc.value for rc in rcs]
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self.pubacks[mid] = rc.value
            self._cond.notify_all()

    def _on_log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        if level <= mqtt.MQTT_LOG_WARNING:
            self.log.append(text)

    # ---- waiting ----------------------------------------------------------
    def wait_for(self, what: str, pred: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        """Wait until ``pred()`` holds; raise AssertionError naming ``what`` after the timeout."""
        with self._cond:
            if not self._cond.wait_for(pred, timeout_s):
                raise AssertionError(f"{self.name}: no {what} within {timeout_s} s; {self.state()}")

    def holds_within(self, pred: Callable[[], bool], timeout_s: float) -> bool:
        """Whether ``pred()`` comes to hold within ``timeout_s``; never raises on timeout."""
        with self._cond:
            return self._cond.wait_for(pred, timeout_s)

    def state(self) -> str:
        """A one-line account of the connection, for assertion messages."""
        return (
            f"connack={self.connack!s} connect_error={self.connect_error!r} "
            f"closed={self.closed} disconnect={self.disconnect!s} log={self.log[-3:]}"
        )

    # ---- actions ----------------------------------------------------------
    def try_connect(self, timeout_s: float = WAIT_S) -> bool:
        """Connect and wait for CONNACK or the end of the connection; True if accepted."""
        props = None
        if self.session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry_s
        try:
            self.client.connect(
                self.host, self.port, keepalive=30, clean_start=self.clean_start, properties=props
            )
        except OSError as exc:
            self.connect_error = exc
            return False
        self.client.loop_start()
        self._started = True
        self.wait_for(
            "CONNACK or disconnect", lambda: self.connack is not None or self.closed, timeout_s
        )
        return self.connack is not None and not self.connack.is_failure and not self.closed

    def connect(self, timeout_s: float = WAIT_S) -> "Probe":
        """Connect; raise AssertionError unless the broker accepts."""
        if not self.try_connect(timeout_s):
            raise AssertionError(f"{self.name}: connection refused; {self.state()}")
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        """Subscribe and return the SUBACK reason codes."""
        rc, mid = self.client.subscribe(topic_filter, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None, f"{self.name}: not sent: {rc}"
        self.wait_for(f"SUBACK for {topic_filter}", lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Publish; for QoS 1 return the PUBACK reason code, for QoS 0 None."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish not queued: {info.rc}"
        if qos == 0:
            return None
        self.wait_for(f"PUBACK on {topic}", lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def wait_messages(self, count: int, timeout_s: float = WAIT_S) -> list[Received]:
        """Wait until at least ``count`` messages have arrived; return them all."""
        self.wait_for(f"{count} message(s)", lambda: len(self.messages) >= count, timeout_s)
        with self._cond:
            return list(self.messages)

    def wait_closed(self, timeout_s: float = WAIT_S) -> None:
        """Wait until the broker (or the network) has ended the connection."""
        self.wait_for("end of connection", lambda: self.closed, timeout_s)

    def close(self) -> None:
        """Disconnect cleanly if connected, stop the network thread and close every socket."""
        if self._started:
            if not self.closed:
                self.client.disconnect()
                with contextlib.suppress(AssertionError):
                    self.wait_for("clean disconnect", lambda: self.closed, 2.0)
            self.client.loop_stop()
            # paho's loop_start makes a wake-up socket pair that loop_stop leaves open.
            for name in ("_sockpairR", "_sockpairW"):
                pair_end = getattr(self.client, name, None)
                if pair_end is not None:
                    pair_end.close()
        if self.context is not None:
            for sock in self.context.sockets:
                sock.close()


class Clients:
    """Makes probes against the test broker and closes every one of them afterwards."""

    def __init__(self, pki: DevPki, broker: Mosquitto) -> None:
        self.pki = pki
        self.broker = broker
        self._probes: list[Probe] = []
        self._ids = itertools.count(1)

    def probe(
        self,
        name: str,
        context: TrackingContext | None,
        *,
        client_id: str | None = None,
        username: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
    ) -> Probe:
        """A probe with any TLS context, or none for plain TCP; not yet connected.

        Its client id is ``name`` (for a car, its vid: its certificate's CN) unless given.
        """
        probe = Probe(
            f"{name}#{next(self._ids)}",
            self.broker.host,
            self.broker.port,
            context,
            client_id=name if client_id is None else client_id,
            username=username,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
        )
        self._probes.append(probe)
        return probe

    def car(
        self,
        vid: str,
        *,
        cert: Path | None = None,
        key: Path | None = None,
        tls_min: ssl.TLSVersion | None = None,
        tls_max: ssl.TLSVersion | None = None,
        ciphers: str | None = None,
        client_id: str | None = None,
        username: str | None = None,
        clean_start: bool = True,
        session_expiry_s: int | None = None,
    ) -> Probe:
        """A probe presenting car ``vid``'s certificate (or ``cert``/``key``); not yet connected."""
        ctx = client_context(
            self.pki.ca_cert,
            cert or self.pki.car_dir(vid) / "car.crt",
            key or self.pki.car_dir(vid) / "car.key",
            tls_min=tls_min,
            tls_max=tls_max,
            ciphers=ciphers,
        )
        return self.probe(
            vid,
            ctx,
            client_id=client_id,
            username=username,
            clean_start=clean_start,
            session_expiry_s=session_expiry_s,
        )

    def cloud_probe(self, worker: str = CLOUD_IDENTITY, *, client_id: str | None = None) -> Probe:
        """A probe with cloud worker ``worker``'s own certificate (issued if new); not connected."""
        identity = issue_cloud_identity(self.pki, worker)
        ctx = client_context(self.pki.ca_cert, identity.cert, identity.key)
        return self.probe(identity.cn, ctx, client_id=client_id)

    def cloud(self, worker: str = CLOUD_IDENTITY, *, subscribe: bool = True) -> Probe:
        """A connected cloud worker ``worker``, in the cloud's shared subscription."""
        probe = self.cloud_probe(worker).connect()
        if subscribe:
            codes = probe.subscribe("$share/cloud/ctpl/v1/+/up/#")
            assert codes == GRANTED, f"cloud SUBACK {codes}"
        return probe

    def close_all(self) -> None:
        for probe in reversed(self._probes):
            probe.close()
