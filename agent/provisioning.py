"""Enrollment, certificate renewal and key set refresh: the I/O shell around the rules.

``enroll`` makes a key, sends a CSR with the claim token, verifies the answer and
installs the identity directory whole. ``renew`` signs a CSR for a new key with the
current one, verifies the answer and swaps key and certificate without a torn pair.
Both raise EnrollmentError (its subclasses say what failed) or ConfigError.
``refresh_keyset`` fetches the cloud's key set and keeps it only if the pinned root
signed it and it is newer than the one held (KeySetError otherwise).
"""

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509

from . import enrollment, identity, keyset
from .config import AgentConfig, dumps_toml
from .enrollment import Identity
from .errors import ConfigError, EnrollmentError, IdentityExistsError, KeySetError
from .keyring import load_keyset, load_root_key
from .keystore import FileKeyStore, KeyFactory, KeySigner
from .protocol.keys import PublicKey
from .store import Store

ENROLL_TIMEOUT_S: Final = 30.0
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Renewed:
    """A new key and certificate are installed; ``keyset_version`` if a newer key set was too."""

    not_after: datetime
    keyset_version: int | None


@dataclass(frozen=True, slots=True)
class NotDue:
    """More than a third of the certificate's life is left; nothing was sent."""

    not_after: datetime


async def _post(
    base_url: str, path: str, body: dict[str, Any], ca_file: Path | None, timeout_s: float
) -> bytes:
    # Imported here: a running agent loads httpx only on the day it renews.
    from . import cloud_api

    tls = cloud_api.tls_context(ca_file)
    status, content = await cloud_api.post_json(base_url + path, body, tls=tls, timeout_s=timeout_s)
    if not 200 <= status < 300:
        raise enrollment.refusal(status, content)
    return content


async def _get(base_url: str, path: str, ca_file: Path | None, timeout_s: float) -> bytes:
    from . import cloud_api

    tls = cloud_api.tls_context(ca_file)
    status, content = await cloud_api.get(base_url + path, tls=tls, timeout_s=timeout_s)
    if status != 200:
        raise enrollment.refusal(status, content)
    return content


def _url(url: str) -> str:
    try:
        return enrollment.check_cloud_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def enrolled_config(found: Identity, url: str, root_key: Path, api_ca_file: Path | None) -> str:
    """The agent.toml of a freshly enrolled identity directory (paths relative to it)."""
    return dumps_toml(
        {
            "vid": found.vid,
            "key_file": identity.KEY_FILE,
            "cert_file": identity.CERT_FILE,
            "ca_file": identity.CA_FILE,
            "keyset_file": identity.KEYSET_FILE,
            "root_key": root_key.absolute(),
            "cloud_url": url,
            "api_ca_file": None if api_ca_file is None else api_ca_file.absolute(),
            "broker_host": found.broker_host,
            "broker_port": found.broker_port,
            "db_path": identity.DB_FILE,
        }
    )


async def enroll(
    cloud_url: str,
    claim_token: str,
    dest: Path,
    root_key: Path,
    *,
    vin: str | None = None,
    fleet_id: str | None = None,
    api_ca_file: Path | None = None,
    force: bool = False,
    timeout_s: float = ENROLL_TIMEOUT_S,
    new_key: KeyFactory = FileKeyStore.generate,
) -> Identity:
    """Enroll with a one-time claim and install the identity directory ``dest`` whole."""
    url = _url(cloud_url)
    # Checked before the claim is spent, and again when the directory is renamed in.
    if identity.holds_identity(dest) and not force:
        raise IdentityExistsError(dest)
    root = load_root_key(root_key)
    key = new_key()
    body = enrollment.enroll_request(claim_token, key.csr_pem(), vin=vin, fleet_id=fleet_id)
    content = await _post(url, enrollment.ENROLL_PATH, body, api_ca_file, timeout_s)
    found = enrollment.verify_answer(content, key.public_key(), root)
    assert found.keyset is not None  # verify_answer checks it when given a root
    files = {
        identity.CERT_FILE: found.certificate_pem,
        identity.CA_FILE: found.ca_chain_pem,
        identity.KEYSET_FILE: found.keyset.envelope,
        identity.CONFIG_FILE: enrolled_config(found, url, root_key, api_ca_file).encode(),
    }
    try:
        identity.install(dest, key, files, force=force)
    except FileExistsError:
        raise IdentityExistsError(dest) from None
    except OSError as exc:
        raise EnrollmentError(f"{dest}: cannot install the identity: {exc}") from exc
    return found


def certificate_validity(cert_file: Path) -> tuple[datetime, datetime]:
    """The certificate's not_before and not_after (UTC); raise ConfigError."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{cert_file}: cannot load the car's certificate: {exc}") from exc
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _accept_keyset(config: AgentConfig, found: Identity, root: PublicKey) -> int | None:
    offered = found.keyset
    if offered is None or config.keyset_file is None:
        return None
    try:
        held = load_keyset(config.keyset_file, root)
    except ConfigError as exc:
        log.warning("held key set is unusable, replacing it: %s", exc)
        held = None
    if held is not None and offered.version <= held.version:
        if offered.version < held.version:
            log.warning("key set v%d is older than held v%d", offered.version, held.version)
        return None
    identity.replace_file(config.keyset_file, offered.envelope)
    return offered.version


async def renew(
    config: AgentConfig,
    store: Store,
    now: datetime,
    *,
    force: bool = False,
    timeout_s: float | None = None,
    new_key: KeyFactory = FileKeyStore.generate,
) -> Renewed | NotDue:
    """Renew the certificate with a new key when due (or ``force``); install it atomically."""
    if config.cloud_url is None:
        raise ConfigError("no cloud_url in the config: renewal needs the cloud's API")
    identity.recover(config.key_file, config.cert_file)
    not_before, not_after = certificate_validity(config.cert_file)
    if not force and not enrollment.needs_renewal(not_before, not_after, now):
        return NotDue(not_after)
    current = KeySigner(FileKeyStore.load(config.key_file))
    root = None if config.root_key is None else load_root_key(config.root_key)
    key = new_key()
    seq = await store.next_seq()
    body = enrollment.renewal_body(config.vid, seq, key.csr_pem())
    sealed = current.seal(enrollment.renew_topic(config.vid), body)
    content = await _post(
        config.cloud_url,
        enrollment.RENEW_PATH,
        {"envelope": sealed.decode("ascii")},
        config.api_ca_file,
        config.operation_timeout_s if timeout_s is None else timeout_s,
    )
    found = enrollment.verify_answer(content, key.public_key(), root, expected_vid=config.vid)
    try:
        identity.swap_key_and_cert(config.key_file, config.cert_file, key, found.certificate_pem)
        version = None if root is None else _accept_keyset(config, found, root)
    except OSError as exc:
        raise EnrollmentError(f"{config.key_file}: cannot install the renewal: {exc}") from exc
    return Renewed(found.not_after, version)


async def refresh_keyset(config: AgentConfig, *, timeout_s: float | None = None) -> keyset.KeySet:
    """Fetch the cloud's key set; install it as ``keyset_file`` if the root signed it and
    it is newer than the one held, and return it.

    Raise KeySetError (``reason``: the verification's, ``rollback``, ``bad_answer``),
    EnrollmentError (unreachable, refused) or ConfigError; the held key set then stays.
    """
    if config.cloud_url is None or config.root_key is None or config.keyset_file is None:
        raise ConfigError("a key set refresh needs cloud_url, root_key and keyset_file")
    root = load_root_key(config.root_key)
    content = await _get(
        config.cloud_url,
        keyset.PATH,
        config.api_ca_file,
        config.operation_timeout_s if timeout_s is None else timeout_s,
    )
    data = keyset.from_answer(content)
    # The held version is read only now, with no await until the file is replaced: a
    # renewal may have installed a newer key set while this one was on its way.
    try:
        held = load_keyset(config.keyset_file, root)
    except ConfigError as exc:
        log.warning("held key set is unusable; a verified one replaces it: %s", exc)
        held = None
    fetched = keyset.verify(data, root, held_version=None if held is None else held.version)
    try:
        identity.replace_file(config.keyset_file, fetched.envelope)
    except OSError as exc:
        raise KeySetError(f"{config.keyset_file}: cannot install: {exc}", reason="io") from exc
    return fetched
