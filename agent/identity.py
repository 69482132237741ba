"""The car's identity on disk: installed whole or not at all, renewed without a torn pair.

Enrollment builds the whole directory (key, certificate, CA, key set, config) in a
temporary directory beside its destination, fsyncs every file and the directory, and
renames it into place: after a crash at any point the destination holds either no
identity or a complete one. Renewal cannot rename two files at once, so it writes
``car.key.new`` and ``car.crt.new`` first, fsynced, then renames the key, then the
certificate; ``recover`` finishes a pair whose new halves match, and discards one that
does not, before anything loads the key.
"""

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .keystore import FileKeyStore, KeyStore

KEY_FILE: Final = "car.key"
CERT_FILE: Final = "car.crt"
CA_FILE: Final = "ca.crt"
KEYSET_FILE: Final = "keyset.json"
CONFIG_FILE: Final = "agent.toml"
DB_FILE: Final = "agent.db"
PENDING: Final = ".new"
log = logging.getLogger(__name__)


def pending(path: Path) -> Path:
    """Where the next version of ``path`` is staged."""
    return path.with_name(path.name + PENDING)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable (a rename is not, until this)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a new file (never an existing one) with ``mode`` from creation on, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (staged beside it, renamed)."""
    staged = pending(path)
    staged.unlink(missing_ok=True)
    write_new(staged, data, mode)
    os.replace(staged, path)
    fsync_dir(path.parent)


def holds_identity(dest: Path) -> bool:
    """Whether ``dest`` exists and is not an empty directory."""
    if not dest.exists() and not dest.is_symlink():
        return False
    return not (dest.is_dir() and not any(dest.iterdir()))


def install(dest: Path, key: KeyStore, files: Mapping[str, bytes], *, force: bool) -> None:
    """Build the identity (``key`` as car.key, plus ``files`` by name) and rename it to ``dest``.

    Raise FileExistsError if ``dest`` holds an identity and not ``force``; OSError.
    With ``force`` the old identity is moved aside, the new one renamed in, the old removed;
    a crash between those two renames leaves no identity at ``dest`` (the old one beside it).
    """
    if holds_identity(dest) and not force:
        raise FileExistsError(dest)
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".new", dir=parent))
    old = None
    try:
        key.save(staged / KEY_FILE)
        for name, data in files.items():
            write_new(staged / name, data)
        fsync_dir(staged)
        if holds_identity(dest):
            old = parent / f".{dest.name}.old-{secrets.token_hex(4)}"
            os.rename(dest, old)
        os.rename(staged, dest)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        if old is not None and old.exists() and not dest.exists():
            os.rename(old, dest)  # an error, not a crash: put the old identity back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _spki_of_key(path: Path) -> bytes | None:
    try:
        key = FileKeyStore.load(path).public_key()
    except Exception:  # a torn or missing file is simply not a match
        return None
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _spki_of_cert(path: Path) -> bytes | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def recover(key_file: Path, cert_file: Path) -> str | None:
    """Finish or discard an interrupted renewal; say which (None when there was none)."""
    new_key, new_cert = pending(key_file), pending(cert_file)
    if not new_key.exists() and not new_cert.exists():
        return None
    cert_spki = _spki_of_cert(new_cert)
    if new_key.exists():
        done = cert_spki is not None and cert_spki == _spki_of_key(new_key)
        if done:
            os.replace(new_key, key_file)
    else:
        # The key was renamed already: the staged certificate must be for it.
        done = cert_spki is not None and cert_spki == _spki_of_key(key_file)
    if done:
        os.replace(new_cert, cert_file)
        outcome = "finished"
    else:
        new_key.unlink(missing_ok=True)
        new_cert.unlink(missing_ok=True)
        outcome = "discarded"
    for folder in {key_file.parent, cert_file.parent}:
        fsync_dir(folder)
    log.warning("%s: an interrupted renewal was %s", key_file, outcome)
    return outcome


def swap_key_and_cert(key_file: Path, cert_file: Path, key: KeyStore, cert_pem: bytes) -> None:
    """Install a renewed key and certificate so that a crash never leaves a torn pair."""
    recover(key_file, cert_file)
    new_key, new_cert = pending(key_file), pending(cert_file)
    key.save(new_key)
    write_new(new_cert, cert_pem)
    folders = {key_file.parent, cert_file.parent}
    for folder in folders:
        fsync_dir(folder)
    os.replace(new_key, key_file)
    os.replace(new_cert, cert_file)
    for folder in folders:
        fsync_dir(folder)
