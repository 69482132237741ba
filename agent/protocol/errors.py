"""Errors of the contract.

ProtocolError            root; ``code`` is the stable wire code of an ``error`` reply
├── TopicError           a topic or vid that is malformed or holds wildcards
├── EnvelopeError        an envelope that is not well formed (size, JSON, base64, fields)
├── SignatureError       a signature that does not verify, or an unknown ``kid``
└── BodyError            a body that fails its schema (type, fields, size)
"""


class ProtocolError(Exception):
    """Root of the contract's errors; ``code`` goes on the wire."""

    code = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class TopicError(ProtocolError):
    code = "bad_topic"


class EnvelopeError(ProtocolError):
    code = "bad_envelope"


class SignatureError(ProtocolError):
    code = "bad_signature"


class BodyError(ProtocolError):
    code = "bad_body"
