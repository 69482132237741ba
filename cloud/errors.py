"""Errors of the cloud.

CloudError            root
├── StoreError        the store could not be read or written
├── LinkError         the MQTT link could not connect or was refused
├── FleetFileError    a vehicles or policies file that cannot be imported (``path``, ``reason``)
├── ConfigError       a configured file that is missing or unusable (``path``, ``reason``)
├── ApiServeError     the HTTP API could not start listening
└── Refused           an HTTP API request refused (``status``, ``code``: the stable wire code)
"""

from pathlib import Path


class CloudError(Exception):
    """Root of the cloud's errors."""


class StoreError(CloudError):
    """The store could not be read or written."""


class LinkError(CloudError):
    """The MQTT link could not connect, or the broker refused it."""


class FleetFileError(CloudError):
    """A vehicles or policies file that cannot be imported."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ConfigError(CloudError):
    """A configured file (key, certificate) that is missing or unusable."""

    def __init__(self, path: Path | None, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path is not None else reason)
        self.path = path
        self.reason = reason


class ApiServeError(CloudError):
    """The HTTP API could not start listening (address in use, bad TLS files)."""


class Refused(CloudError):
    """An HTTP API request refused with ``status`` and a stable ``code``; nothing was stored."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
