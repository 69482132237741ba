"""Errors of the in-vehicle agent; library errors are translated into these at the boundary.

AgentError               root
├── ConfigError          a config file, key or certificate that cannot be used
├── StoreError           the local SQLite store failed
├── LinkError            the MQTT link failed (connect, subscribe, publish, or dropped)
│   └── NotConnectedError  an operation needed the link while there is none
└── StateTimeoutError    no verified policy state arrived in time (also a TimeoutError)
"""


class AgentError(Exception):
    """Root of the agent's errors."""


class ConfigError(AgentError):
    """A config file, key or certificate that cannot be used."""


class StoreError(AgentError):
    """The local SQLite store failed."""


class LinkError(AgentError):
    """The MQTT link failed; ``reason`` names the failing step."""

    def __init__(self, message: str, *, reason: str = "link") -> None:
        super().__init__(message)
        self.reason = reason


class NotConnectedError(LinkError):
    """An operation needed the link while there is none."""

    def __init__(self, message: str = "not connected to the broker") -> None:
        super().__init__(message, reason="not_connected")


class StateTimeoutError(AgentError, TimeoutError):
    """No verified policy state arrived within ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no verified policy state within {timeout_s} s")
        self.timeout_s = timeout_s
