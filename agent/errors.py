"""Errors of the in-vehicle agent; library errors are translated into these at the boundary.

AgentError               root
├── ConfigError          a config file, key or certificate that cannot be used
├── StoreError           the local SQLite store failed
├── LinkError            the MQTT link failed (connect, subscribe, publish, or dropped)
│   └── NotConnectedError  an operation needed the link while there is none
├── StateTimeoutError    no verified policy state arrived in time (also a TimeoutError)
├── KeySetError          a key set that does not verify, or is not newer than the one held
└── EnrollmentError      enrollment or certificate renewal failed; nothing was installed
    ├── IdentityExistsError     an identity is already in place (enroll --force replaces it)
    ├── CloudUnreachableError   no HTTPS answer: connection, TLS or timeout
    ├── CloudRefusedError       the cloud answered with an error status and code
    ├── MalformedAnswerError    the answer is not the documented shape
    └── VerificationError       the answer does not verify (key, CN, chain, key set)
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


class NotRunningError(AgentError):
    """An operation needed the running agent (its open store) while it is not running."""

    def __init__(self, message: str = "the agent is not running") -> None:
        super().__init__(message)


class StateTimeoutError(AgentError, TimeoutError):
    """No verified policy state arrived within ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no verified policy state within {timeout_s} s")
        self.timeout_s = timeout_s


class KeySetError(AgentError):
    """A key set that does not verify or is not newer than the one held; ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EnrollmentError(AgentError):
    """Enrollment or certificate renewal failed; nothing was installed."""


class IdentityExistsError(EnrollmentError):
    """An identity is already in place at ``path``."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path} already holds an identity (--force replaces it)")
        self.path = path


class CloudUnreachableError(EnrollmentError):
    """No HTTPS answer from the cloud: connection, TLS or timeout."""


class CloudRefusedError(EnrollmentError):
    """The cloud answered ``status`` with the stable error ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"cloud refused ({status} {code}): {message}")
        self.status = status
        self.code = code


class MalformedAnswerError(EnrollmentError):
    """The cloud's answer is not the documented shape."""


class VerificationError(EnrollmentError):
    """The cloud's answer does not verify: key, CN, chain or key set."""
