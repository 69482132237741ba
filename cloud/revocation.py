"""Cutting a revoked car off the broker: the CRL file and a broker reload.

Mosquitto 2.0 checks the CRL when a connection is made and rereads it only on SIGHUP. The
broker's identity plugin (broker-config/plugin/) rereads the same CRL on SIGHUP, and
Mosquitto then re-authenticates every connected client through it: one whose certificate
is now revoked is disconnected at once, and its reconnect fails the TLS handshake. So
revoking takes two steps, in this order: write the new CRL (atomically), then make the
broker reload it.

(Before the plugin, the cloud ended the car's session by connecting with the car's vid as
client id; the broker now refuses any client id that is not the certificate's CN.)
"""

import asyncio
import logging
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from .errors import CloudError
from .pki import CertificateAuthority

log = logging.getLogger(__name__)
CRL_DAYS = 7
"""A CRL's validity. Mosquitto refuses every client once its CRL has expired, so the
cloud rewrites it at least daily (``refresh_every_s``)."""


class RevocationError(CloudError):
    """The broker could not be told about a revocation (the store already holds it)."""


def write_crl(ca: CertificateAuthority, path: Path, revoked_serials: list[int]) -> None:
    """Write a CRL revoking ``revoked_serials`` to ``path`` atomically (temp, fsync, rename).

    Each writer has a temp file of its own: several workers may write the CRL at once.
    """
    data = ca.crl(sorted(set(revoked_serials)), days=CRL_DAYS).public_bytes(Encoding.PEM)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # the broker drops to its own user before reading it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sighup_from_pid_file(pid_file: Path) -> Callable[[], None]:
    """A reload action: SIGHUP to the process whose pid ``pid_file`` holds."""

    def reload() -> None:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise RevocationError(f"cannot signal the broker via {pid_file}: {exc}") from exc

    return reload


class BrokerControl:
    """Tells the broker about revocations; one instance per cloud process."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        crl_path: Path,
        reload: Callable[[], None],
    ) -> None:
        self._ca = ca
        self._crl_path = crl_path
        self._reload = reload
        self._lock = asyncio.Lock()

    async def publish_crl(self, revoked_serials: list[int]) -> None:
        """Rewrite the CRL and make the broker reload it, which disconnects revoked clients."""
        async with self._lock:
            await asyncio.to_thread(write_crl, self._ca, self._crl_path, revoked_serials)
            self._reload()

    async def revoke(self, vid: str, revoked_serials: list[int]) -> None:
        """CRL, reload: after this the car is off and cannot come back."""
        await self.publish_crl(revoked_serials)
        log.info("revoked %s: CRL rewritten, broker reloaded (it disconnects the car)", vid)

    async def refresh_every(
        self, serials: Callable[[], Awaitable[list[int]]], period_s: float = 86400.0
    ) -> None:
        """Rewrite the CRL every ``period_s`` so it never expires under the broker."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.publish_crl(await serials())
            except (RevocationError, OSError) as exc:
                log.error("CRL refresh failed: %s", exc)
