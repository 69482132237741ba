"""The cloud's log lines: JSON (one object per line) or text, and the scrubber both go through.

Every record a handler set up here writes is scrubbed as it is formatted: the message
with its arguments, the exception and stack text, and every extra field (keys too).
``scrub`` masks, in this order:

- a VIN (17 characters of the VIN alphabet, with a letter and a digit; either case):
  all but the last 4 hidden, ``*************3294``. A vid as minted (``v`` and 16 of
  ``a-z2-7``) can have that shape and is left alone: it is the pseudonym logs use; so
  are fleet ids (``f`` and 16) and lower-case hex. (A lower-case VIN of exactly that
  shape would pass: VINs are upper case wherever this system takes one.)
- a policy number, or anything shaped like one (10 or more letters and digits, a letter
  and 4 digits among them: a VIN inside a longer word, an ID card number): the first 4
  and the last 4 kept, ``PDZA****5678``. Masked ones (``****``), vids, fleet ids and
  lower-case hex (digests, intent ids) are left alone.
- a Chinese plate (a province character, a letter, an optional ``·``, then 5–6 letters or
  digits, or 4 and a suffix such as 挂 or 港; half- or full-width): ``沪A·****5``.

The same is caught written another way: percent-encoded (a query string in an HTTP
client's line, ``plate=%E6%B2%AAA31676``) or JSON-escaped (``\\u6caaA31676`` in a logged
body): such a run is decoded, scrubbed, and shown decoded and masked when it held any.

JSON lines are scrubbed field by field before encoding (a pass over the encoded line
could break its escapes); text lines are scrubbed whole.
"""

import json
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, Literal, TextIO
from urllib.parse import unquote

from agent.protocol.vin import mask_vin

__all__ = ["JsonFormatter", "LogFormat", "TextFormatter", "configure", "scrub"]

LogFormat = Literal["json", "text"]

PROVINCES: Final = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
"""The one-character province abbreviations that open a civilian plate."""
_ALNUM: Final = "A-Za-z0-9"
_VIN_CHAR: Final = "A-HJ-NPR-Za-hj-npr-z0-9"
_VIN: Final = re.compile(
    rf"(?<![{_ALNUM}])"
    rf"(?=[{_VIN_CHAR}]{{0,16}}[0-9])(?=[{_VIN_CHAR}]{{0,16}}[A-Za-z])"
    rf"[{_VIN_CHAR}]{{17}}(?![{_ALNUM}])"
)
_POLICY_NO: Final = re.compile(rf"(?<![{_ALNUM}*])[{_ALNUM}]{{10,}}(?![{_ALNUM}*])")
_OPAQUE_ID: Final = re.compile(r"[0-9a-f]+|[vf][a-z2-7]{16}")
"""Lower-case hex (digests, intent ids), vids and fleet ids as minted: never personal data."""
_W_LETTER: Final = "A-Za-zＡ-Ｚａ-ｚ"
_W_ALNUM: Final = f"{_W_LETTER}0-9０-９"
_PLATE: Final = re.compile(
    rf"([{PROVINCES}])\s?([{_W_LETTER}])\s?[·•・.\- ]?\s?"
    rf"([{_W_ALNUM}]{{5,6}}|[{_W_ALNUM}]{{4}}[挂学警港澳领使试超])"
)
_RESERVED: Final = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"]
)
"""LogRecord attributes that are not extra fields."""
_DROPPED: Final = frozenset({"color_message"})
"""Extra fields not worth a line (uvicorn's copy of the message with ANSI colours)."""


def _vin(m: re.Match[str]) -> str:
    token = m.group(0)
    return token if _OPAQUE_ID.fullmatch(token) else mask_vin(token)


def _policy_no(m: re.Match[str]) -> str:
    token = m.group(0)
    if sum(c.isdigit() for c in token) < 4 or token.isdigit() or _OPAQUE_ID.fullmatch(token):
        return token
    return f"{token[:4]}****{token[-4:]}"


def _plate(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2).upper()}·****{m.group(3)[-1]}"


_PERCENT_RUN: Final = re.compile(r"[^\s&?=/\"',;<>]*%[0-9A-Fa-f]{2}[^\s&?=/\"',;<>]*")
_JSON_RUN: Final = re.compile(r"(?:\\u[0-9A-Fa-f]{4}|[A-Za-z0-9·.\-])*\\u[0-9A-Fa-f]{4}"
                              r"(?:\\u[0-9A-Fa-f]{4}|[A-Za-z0-9·.\-])*")  # fmt: skip
_JSON_ESCAPE: Final = re.compile(r"\\u([0-9A-Fa-f]{4})")


def _plain(text: str) -> str:
    text = _VIN.sub(_vin, text)
    text = _POLICY_NO.sub(_policy_no, text)
    return _PLATE.sub(_plate, text)


def _decoded(decode: "re.Pattern[str] | None", m: re.Match[str]) -> str:
    """A percent-encoded or JSON-escaped run, decoded and scrubbed if it held anything."""
    token = m.group(0)
    try:
        clear = (
            unquote(token, errors="strict")
            if decode is None
            else decode.sub(lambda e: chr(int(e.group(1), 16)), token)
        )
    except UnicodeDecodeError:
        return token
    masked = _plain(clear)
    return masked if masked != clear else token


def scrub(text: str) -> str:
    """``text`` with every VIN, policy number and plate in it masked, also when written
    percent-encoded or JSON-escaped (see the module doc)."""
    if "%" in text:
        text = _PERCENT_RUN.sub(lambda m: _decoded(None, m), text)
    if "\\u" in text:
        text = _JSON_RUN.sub(lambda m: _decoded(_JSON_ESCAPE, m), text)
    return _plain(text)


def _scrubbed(value: object, depth: int = 0) -> object:
    """A JSON-ready copy of an extra field's value, every string in it scrubbed."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if depth < 4 and isinstance(value, Mapping):
        return {scrub(str(k)): _scrubbed(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v, depth + 1) for v in value]
    return scrub(_text(value))


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def _message(record: logging.LogRecord) -> str:
    """The record's message with its arguments; never raises (bad arguments are shown)."""
    try:
        return record.getMessage()
    except Exception:
        return f"{_text(record.msg)} (log arguments did not fit: {_text(record.args)})"


def _exception(record: logging.LogRecord) -> str | None:
    if not record.exc_info or record.exc_info[0] is None:
        return None
    return "".join(traceback.format_exception(*record.exc_info)).rstrip()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, extra fields, exc, stack."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, object] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(_message(record)),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in _DROPPED:
                name = scrub(key)
                line[name if name not in line else f"extra.{name}"] = _scrubbed(value)
        exc = _exception(record)
        if exc is not None:
            line["exc"] = scrub(exc)
        if record.stack_info:
            line["stack"] = scrub(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=_text)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>`` and any traceback, scrubbed whole."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        lines = [f"{self.formatTime(record)} {record.levelname} {record.name}: {_message(record)}"]
        exc = _exception(record)
        if exc is not None:
            lines.append(exc)
        if record.stack_info:
            lines.append(record.stack_info)
        return scrub("\n".join(lines))


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs (so that a second call replaces it)."""


def configure(fmt: LogFormat, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as ``fmt``, scrubbed.

    Like ``logging.basicConfig``, it leaves a root logger that someone else has given
    handlers alone (a test runner's, say); a handler of an earlier call is replaced.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return
    for h in ours:
        root.removeHandler(h)
        h.close()
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
