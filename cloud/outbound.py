"""Outbound HTTP to URLs an operator gives (fleet alert webhooks): the policy, and a client
that enforces it on the address each connection is actually made to.

A fleet operator is never trusted with the addresses the cloud connects to (DESIGN.md).
The rules, each refusal with a stable ``reason`` code:

1. ``not_a_url``: unparsable, a bad or zero port, whitespace, control characters or a
   backslash, a non-ASCII path or query (percent-encode it), over ``MAX_URL_CHARS``.
2. ``scheme``: https only. Plain http only with ``allow_loopback`` (a development setting)
   and only to this host's loopback.
3. ``credentials``: no user or password in the URL (the secret signs every delivery).
4. ``fragment``: no ``#…``.
5. ``host``: a DNS name (IDNA 2008 / UTS 46; LDH labels; a last label that is not a number,
   so ``127.1`` or ``2130706433`` are not names) or an IP literal.
6. Every address the host stands for must be public (``address_class``):
   ``loopback`` (allowed with ``allow_loopback``), ``private_address`` (RFC 1918, fc00::/7,
   fec0::/10), ``link_local`` (169.254/16 with 169.254.169.254, fe80::/10), ``shared_address``
   (CGNAT 100.64/10), ``multicast``, ``unspecified``, ``reserved`` (everything else not
   globally reachable: reserved, broadcast, documentation, benchmarking, 192.0.0/24, 6to4
   relays, Teredo, …). An IPv6 address that embeds an IPv4 one (mapped ::ffff:0:0/96,
   compatible ::/96, 6to4 2002::/16, NAT64 64:ff9b::/96) is judged by that IPv4 address.
   ``localhost`` and ``*.localhost`` are loopback without asking DNS (RFC 6761).
7. ``host_not_public``: when a URL is saved, a name that does not resolve, or resolves to any
   forbidden address. One code whatever the cause, so that the API tells an operator nothing
   about the cloud's own DNS (which internal names exist, and where they point).

Rules 1–6 on a literal are pure (``judge_url``, ``judge_address``). At delivery the same
rules run again on the stored URL, and ``OutboundClient``'s network backend resolves the
name itself, refuses the target if any address is forbidden (rule 6), connects to a vetted
address and judges the peer the socket is connected to, before a byte is sent. TLS still
verifies the certificate against the name (SNI and ``Host`` are the name): a DNS answer
that changes between save and delivery (rebinding) meets the check where it matters.
Redirects are never followed (httpcore has no redirect logic), and no proxy is used.

Errors::

    OutboundError(CloudError)   an outbound request that got no HTTP answer
    ├── TargetRefused           the policy refused the target (``reason``); nothing was sent
    └── TransportFailed         connecting, TLS or HTTP failed (``kind``; for logs only)
"""

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import certifi
import httpcore
import idna

from .errors import CloudError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses`` as text; raises OSError when the name does not resolve."""

MAX_URL_CHARS: Final = 2048
RESOLVE_TIMEOUT_S: Final = 5.0
KEEPALIVE_S: Final = 30.0

REASONS: Final[Mapping[str, str]] = {
    "not_a_url": "not a URL (a bad port, spaces, or non-ASCII outside the host?)",
    "scheme": "https is needed (plain http only to this host's loopback, in development)",
    "credentials": "no credentials in the URL: the secret signs every delivery",
    "fragment": "no fragment (#...) in the URL",
    "host": "the host must be a DNS name or an IP address",
    "loopback": "the address is a loopback address",
    "private_address": "the address is private (RFC 1918, fc00::/7)",
    "link_local": "the address is link-local (169.254.0.0/16, fe80::/10)",
    "shared_address": "the address is shared carrier-grade NAT space (100.64.0.0/10)",
    "multicast": "the address is multicast",
    "unspecified": "the address is unspecified (0.0.0.0, ::)",
    "reserved": "the address is reserved or not globally reachable",
    "host_not_public": "the host must resolve, from the cloud, to public addresses only",
}
"""Every refusal's reason code and what it tells a person."""

_SHARED: Final = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE: Final = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)
"""Only to name the reason: whether an address is public does not depend on this table."""
_NOT_GLOBAL: Final = (
    ipaddress.IPv4Network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.IPv4Network("192.88.99.0/24"),  # 6to4 relay anycast (deprecated, RFC 7526)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("2001::/23"),  # IETF protocol assignments, Teredo among them
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637)
)
"""Ranges that ``is_global`` of some Python 3.11 releases still calls global."""
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_UNSAFE_CHAR: Final = re.compile(r"[\x00-\x20\x7f\\]")
"""Controls, spaces and backslashes (which some URL parsers read as ``/``)."""


class OutboundError(CloudError):
    """An outbound request that got no HTTP answer."""


class TargetRefused(OutboundError):
    """The policy refused the target (``reason``, a key of ``REASONS``); nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason}: {REASONS[reason]}")
        self.reason = reason


class TransportFailed(OutboundError):
    """Connecting, TLS or HTTP failed (``kind``: connect, timeout, network, protocol)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a URL cannot be an outbound target: a ``REASONS`` code and its text."""

    reason: str

    @property
    def message(self) -> str:
        return REASONS[self.reason]


@dataclass(frozen=True, slots=True)
class Target:
    """A URL the static rules accept: ASCII host (a name, or an IP without brackets)."""

    scheme: str
    host: str
    port: int
    path: str
    """Path and query, as sent."""
    address: IPAddress | None
    """The host when it is an IP literal."""

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped, compatible (``::a.b.c.d``), 6to4 or
    NAT64 (64:ff9b::/96); None if it carries none."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def address_class(ip: IPAddress) -> str | None:
    """None if ``ip`` is public, else the reason code of the class it is in."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = address_class(inner)
            compatible = int(ip) >> 32 == 0  # deprecated (RFC 4291): never a webhook
            return "reserved" if why is None and compatible else why
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip in _SHARED:
        return "shared_address"
    if any(ip in net for net in _PRIVATE) or getattr(ip, "is_site_local", False):
        return "private_address"
    if ip.is_reserved or not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return "reserved"
    return None


def judge_address(
    ip: IPAddress, *, allow_loopback: bool = False, plain_http: bool = False
) -> Refusal | None:
    """Whether the policy lets a connection go to ``ip``; ``plain_http``: loopback only."""
    why = address_class(ip)
    if why == "loopback":
        return None if allow_loopback else Refusal("loopback")
    if why is None and plain_http:
        return Refusal("scheme")
    return None if why is None else Refusal(why)


def is_localhost_name(host: str) -> bool:
    """``localhost`` and its subdomains, which always mean this host (RFC 6761)."""
    return host == "localhost" or host.endswith(".localhost")


def _host(raw: str) -> tuple[str, IPAddress | None] | None:
    """The host as sent (ASCII) and its address when a literal; None if it is neither."""
    raw = raw.removesuffix(".")
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        pass
    else:
        return (str(ip), ip) if not getattr(ip, "scope_id", None) else None
    try:
        name = idna.encode(raw, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None
    if len(name) > 253 or _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return None
    return name, None


def judge_url(url: str, *, allow_loopback: bool = False) -> Target | Refusal:
    """Rules 1–6 without DNS: the target to connect to, or why there is none."""
    if len(url) > MAX_URL_CHARS or _UNSAFE_CHAR.search(url):
        return Refusal("not_a_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Refusal("not_a_url")
    if parts.scheme not in ("https", "http"):
        return Refusal("scheme")
    if parts.username is not None or parts.password is not None:
        return Refusal("credentials")
    if parts.fragment or "#" in url:
        return Refusal("fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if port == 0 or not path.isascii():
        return Refusal("not_a_url")
    host = _host(parts.hostname) if parts.hostname else None
    if host is None:
        return Refusal("host")
    name, address = host
    loopback_name = address is None and is_localhost_name(name)
    loopback = loopback_name or (address is not None and address_class(address) == "loopback")
    plain_http = parts.scheme == "http"
    if plain_http and not (allow_loopback and loopback):
        return Refusal("scheme")
    if loopback_name and not allow_loopback:
        return Refusal("loopback")
    if address is not None:
        refusal = judge_address(address, allow_loopback=allow_loopback, plain_http=plain_http)
        if refusal is not None:
            return refusal
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, name, port or default, path, address)


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system's resolver gives for ``host`` (getaddrinfo, TCP)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def vetted_addresses(
    host: str, port: int, *, resolver: Resolver, allow_loopback: bool, plain_http: bool
) -> list[IPAddress]:
    """``host``'s addresses, every one allowed; TargetRefused if any is not (a name with
    one forbidden address among public ones is refused whole). OSError: no address."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    texts = [host] if literal is not None else await resolver(host, port)
    addresses = [ipaddress.ip_address(t) for t in texts]
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address")
    for ip in addresses:
        refusal = judge_address(ip, allow_loopback=allow_loopback, plain_http=plain_http)
        if refusal is not None:
            raise TargetRefused(refusal.reason)
    return addresses


async def check_url(
    url: str,
    *,
    allow_loopback: bool = False,
    resolver: Resolver = system_resolver,
    timeout_s: float = RESOLVE_TIMEOUT_S,
) -> Refusal | None:
    """Whether ``url`` may be saved as an outbound target: rules 1–6, then rule 7 (its name
    resolved now). Delivery checks again, on the address it connects to."""
    target = judge_url(url, allow_loopback=allow_loopback)
    if isinstance(target, Refusal):
        return target
    if target.address is not None:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            await vetted_addresses(
                target.host, target.port, resolver=resolver, allow_loopback=allow_loopback,
                plain_http=target.scheme == "http",
            )  # fmt: skip
    except (TargetRefused, OSError, ValueError, TimeoutError):
        return Refusal("host_not_public")
    return None


class _VettingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows."""

    def __init__(self, *, resolver: Resolver, allow_loopback: bool, plain_http: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolver = resolver
        self._allow_loopback = allow_loopback
        self._plain_http = plain_http

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore names it so
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        judge = {"allow_loopback": self._allow_loopback, "plain_http": self._plain_http}
        try:
            async with asyncio.timeout(timeout):
                addresses = await vetted_addresses(host, port, resolver=self._resolver, **judge)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host}") from exc
        except (OSError, ValueError) as exc:
            raise httpcore.ConnectError(f"resolving {host}: {exc}") from exc
        failed: Exception = httpcore.ConnectError(f"{host}: no address")
        for ip in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failed = exc
                continue
            peer = stream.get_extra_info("server_addr")
            refusal = (
                judge_address(ipaddress.ip_address(peer[0]), **judge) if peer else Refusal("host")
            )
            if refusal is not None:  # the socket is connected elsewhere than vetted
                await stream.aclose()
                raise TargetRefused(refusal.reason)
            return stream
        raise failed

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore names it so
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("host")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def default_tls() -> ssl.SSLContext:
    """Certificates verified against certifi's roots (as httpx does), TLS 1.2 or later."""
    context = ssl.create_default_context(cafile=certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class OutboundClient:
    """POSTs to operator-given URLs under the policy; answers the HTTP status only.

    One connection pool per scheme, each behind a vetting backend; the http pool exists
    only with ``allow_loopback`` and connects to loopback addresses only.
    """

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        resolver: Resolver = system_resolver,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
        max_connections: int = 8,
    ) -> None:
        self.allow_loopback = allow_loopback
        self.timeout_s = timeout_s
        self.is_closed = False
        tls = tls or default_tls()

        def pool(plain_http: bool) -> httpcore.AsyncConnectionPool:
            return httpcore.AsyncConnectionPool(
                ssl_context=tls, max_connections=max_connections,
                keepalive_expiry=KEEPALIVE_S,
                network_backend=_VettingBackend(
                    resolver=resolver, allow_loopback=allow_loopback, plain_http=plain_http
                ),
            )  # fmt: skip

        self._pools = {"https": pool(False)} | ({"http": pool(True)} if allow_loopback else {})

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """POST ``body`` to ``url``; the answer's status (a 3xx is not followed).

        TargetRefused before anything is sent; TransportFailed if no answer came.
        """
        target = judge_url(url, allow_loopback=self.allow_loopback)
        if isinstance(target, Refusal):
            raise TargetRefused(target.reason)
        pool = self._pools[target.scheme]  # http is refused above without allow_loopback
        t = self.timeout_s
        try:
            async with asyncio.timeout(t):
                async with pool.stream(
                    "POST",
                    httpcore.URL(
                        scheme=target.scheme, host=target.host, port=target.port,
                        target=target.path,
                    ),
                    headers=[("Host", target.host_header), *headers.items()],
                    content=body,
                    extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
                ) as response:  # fmt: skip
                    return response.status  # the body is never read
        except (TimeoutError, httpcore.TimeoutException) as exc:
            raise TransportFailed("timeout") from exc
        except httpcore.ConnectError as exc:  # TLS failures included
            raise TransportFailed("connect") from exc
        except httpcore.ProtocolError as exc:
            raise TransportFailed("protocol") from exc
        except (httpcore.NetworkError, httpcore.UnsupportedProtocol) as exc:
            raise TransportFailed("network") from exc

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self.is_closed = True
        for pool in self._pools.values():
            await pool.aclose()
