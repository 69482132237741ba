"""Errors of the cloud.

CloudError            root
├── StoreError        the store could not be read or written
├── LinkError         the MQTT link could not connect or was refused
└── FleetFileError    a vehicles or policies file that cannot be imported (``path``, ``reason``)
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
