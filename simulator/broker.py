"""Run Mosquitto from ``broker-config/`` on a free local port, for tests, the demo and benches.

Only site values change (listener port, file paths, log destination); every policy
setting, the ACL file and the identity plugin (built by ``make broker-plugin``) are used
exactly as shipped.
"""

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Final

from cloud.pki import DevPki

BROKER_CONFIG_DIR: Final = Path(__file__).resolve().parent.parent / "broker-config"
PLUGIN_SOURCE: Final = BROKER_CONFIG_DIR / "plugin" / "ctpl_identity.c"
PLUGIN_PATH: Final = BROKER_CONFIG_DIR.parent / "var" / "broker-plugin" / "ctpl_identity.so"
"""Where ``make broker-plugin`` (a step of ``make bootstrap``) builds the identity plugin."""
_SITE_KEYS: Final = frozenset(
    {
        "user",
        "pid_file",
        "listener",
        "acl_file",
        "plugin",
        "plugin_opt_crl_file",
        "persistence_location",
        "cafile",
        "certfile",
        "keyfile",
        "crlfile",
        "log_dest",
    }
)


class BrokerError(RuntimeError):
    """Mosquitto is missing, would not start, or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    """The path of the mosquitto binary; raise BrokerError if it is not installed."""
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )
    if path is None:
        raise BrokerError("mosquitto is not installed (make bootstrap installs it with apt-get)")
    return path


def find_plugin(path: Path = PLUGIN_PATH) -> Path:
    """The built identity plugin; raise BrokerError if it is missing or older than its source."""
    if not path.exists():
        raise BrokerError(
            f"the broker's identity plugin {path} is missing: build it with `make broker-plugin` "
            "(make bootstrap, make test and make demo do); a broker without it would refuse "
            "every client"
        )
    if PLUGIN_SOURCE.exists() and path.stat().st_mtime < PLUGIN_SOURCE.stat().st_mtime:
        raise BrokerError(
            f"the broker's identity plugin {path} is older than {PLUGIN_SOURCE.name}: "
            "rebuild it with `make broker-plugin`"
        )
    return path


def render_config(pki: DevPki, workdir: Path, port: int, host: str = "127.0.0.1") -> Path:
    """Write broker-config/mosquitto.conf with this site's values into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    site = {
        # Whoever runs the harness owns the temp files, so the broker stays that user.
        "user": getpass.getuser(),
        "pid_file": str(workdir / "mosquitto.pid"),
        "listener": f"{port} {host}",
        "acl_file": str(BROKER_CONFIG_DIR / "acl"),
        "plugin": str(find_plugin()),
        "plugin_opt_crl_file": str(pki.crl),
        "persistence_location": f"{workdir / 'data'}/",
        "cafile": str(pki.ca_cert),
        "certfile": str(pki.broker_cert),
        "keyfile": str(pki.broker_key),
        "crlfile": str(pki.crl),
        "log_dest": f"file {workdir / 'mosquitto.log'}",
    }
    lines = []
    for line in (BROKER_CONFIG_DIR / "mosquitto.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        lines.append(
            f"{key} {site[key]}" if key in _SITE_KEYS and not line.startswith("#") else line
        )
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


class Mosquitto:
    """A Mosquitto process started from broker-config/; stop() ends it."""

    def __init__(self, pki: DevPki, workdir: Path, port: int | None = None) -> None:
        self.pki = pki
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        """Where the broker writes its pid (the cloud signals it there after a revocation)."""
        return self.workdir / "mosquitto.pid"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self, timeout_s: float = 10.0) -> "Mosquitto":
        """Start the broker and wait until its port accepts connections."""
        conf = render_config(self.pki, self.workdir, self.port, self.host)
        with (self.workdir / "mosquitto.stderr").open("wb") as stderr:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed binary, our own config file
                [find_mosquitto(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and stderr, for error messages."""
        text = ""
        for p in (self.log_path, self.workdir / "mosquitto.stderr"):
            if p.exists():
                text += p.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def reload(self) -> None:
        """Ask Mosquitto to reread its configuration (SIGHUP)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
