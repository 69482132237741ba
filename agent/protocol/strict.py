"""Strict records: frozen dataclasses whose fields are checked against their annotations.

A ``Record`` subclass is a ``@dataclass(frozen=True, kw_only=True, slots=True)``; building
one (or a ``dataclasses.replace`` copy) checks every field and raises ``Invalid`` (a
ValueError) naming the field, never echoing the value; a subclass may translate it into
its own error in ``__post_init__``. The annotations understood:

- ``str``, ``int`` (bool is not an int), ``float`` (an int is widened), ``Path`` (from text);
- ``datetime`` (aware only) and ``date`` (not a datetime);
- ``Literal[...]``, ``X | None``, ``tuple[X, ...]`` (a list is taken too), a nested Record;
- ``Annotated[X, Pattern(...), Length(...), Range(...)]`` for the rules below.

``loads`` + ``build`` read a record from JSON: ``loads`` refuses a key repeated in an
object and nesting deeper than ``MAX_JSON_DEPTH`` (one text, one meaning, and never a
RecursionError); unknown keys refused (ignored when the class sets ``ignore_unknown``),
JSON text turned into datetimes (RFC 3339 with an offset) and dates (YYYY-MM-DD), arrays
into tuples, objects into nested records. ``dumps`` writes a record as compact UTF-8 JSON,
fields in declaration order. Standard library only.
"""

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, Union

R = TypeVar("R", bound="Record")

MAX_JSON_DEPTH: Final = 8
"""The deepest nesting of arrays and objects ``loads`` reads. The contract's deepest text
is 3 (a renewal update's quotes: body → array → quote); the key set and enrollment
answers are as shallow. 8 leaves room for new fields and keeps json's recursive C
scanner (RecursionError near 1,000, sooner on a deep stack) out of reach."""


class Invalid(ValueError):
    """A value that breaks its field's rule; ``where`` is the field's path (may be empty)."""

    def __init__(self, reason: str, where: str = "") -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.where = where

    def within(self, outer: str | int) -> "Invalid":
        """The same error seen from the record (or array) that holds the field."""
        return Invalid(self.reason, f"{outer}.{self.where}" if self.where else str(outer))


@dataclasses.dataclass(frozen=True, slots=True)
class Pattern:
    """Text must match ``regex`` in full (no implicit ``^``/``$``; ASCII classes only)."""

    regex: str


@dataclasses.dataclass(frozen=True, slots=True)
class Length:
    """Text (in characters) or a tuple (in items) must be ``min``..``max`` long."""

    min: int = 0
    max: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """A number must be ``>= ge``, ``<= le`` and ``> gt``, those given."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None


class Record:
    """Base of strict records; subclasses are frozen, keyword-only, slotted dataclasses."""

    __slots__ = ()
    ignore_unknown: ClassVar[bool] = False
    """``build`` ignores keys that are not fields (else refuses them)."""
    omit_when_none: ClassVar[frozenset[str]] = frozenset()
    """Fields ``dumps`` leaves out while None (fields added later, so that records
    without them keep their earlier bytes)."""

    def __post_init__(self) -> None:
        check(self)


Check = Callable[[Any], Any]
"""Returns the value (widened or converted) or raises ValueError with a reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Rule:
    check: Check
    """A Python value, as given to the constructor."""
    parse: Check
    """A JSON value → the Python value to construct with (checked afterwards)."""
    required: bool = True


def _same(value: Any) -> Any:
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("should be an integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("should be text")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("should be Unicode text (a lone surrogate is not)") from None
    return value


def _float(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError("should be a number")
    return float(value)


def _path(value: Any) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ValueError("should be a path")
    return Path(value)


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError("should be a datetime")
    if value.utcoffset() is None:
        raise ValueError("should have a timezone offset")
    return value


def _date(value: Any) -> date:
    if not isinstance(value, date) or isinstance(value, datetime):
        raise ValueError("should be a date")
    return value


_DATETIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(?:[Zz]|([+-])([0-9]{2}):?([0-9]{2}))"
)
_DATE: Final = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def parse_datetime(text: str) -> datetime:
    """An aware datetime from RFC 3339 text (``T``, ``t`` or space; seconds and fraction
    optional, a fraction cut to microseconds; ``Z`` or ``±HH:MM``/``±HHMM``); ValueError if not."""
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise ValueError("should be a date-time with an offset, as in 2025-06-01T04:00:00Z")
    y, mo, d, h, mi, s, frac, sign, oh, om = m.groups()
    offset = timedelta(0)
    if sign is not None:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    micro = int((frac or "")[:6].ljust(6, "0"))
    try:
        return datetime(
            int(y), int(mo), int(d), int(h), int(mi), int(s or 0), micro, timezone(offset)
        )
    except ValueError:
        raise ValueError("not a real date and time") from None


def parse_date(text: str) -> date:
    """A date from ``YYYY-MM-DD`` text; ValueError if not (or not a real date)."""
    m = _DATE.fullmatch(text)
    if m is None:
        raise ValueError("should be a date as YYYY-MM-DD")
    try:
        return date(*map(int, m.groups()))
    except ValueError:
        raise ValueError("not a real date") from None


def _from_text(parse: Callable[[str], Any]) -> Check:
    return lambda value: parse(value) if isinstance(value, str) else value


def _literal(options: tuple[Any, ...]) -> Check:
    def check(value: Any) -> Any:
        if not any(type(value) is type(o) and value == o for o in options):
            raise ValueError("should be one of " + ", ".join(map(str, options)))
        return value

    return check


def _optional(rule: _Rule) -> _Rule:
    return _Rule(
        lambda v: None if v is None else rule.check(v),
        lambda v: None if v is None else rule.parse(v),
    )


def _tuple(rule: _Rule) -> _Rule:
    def each(convert: Check, items: Any) -> tuple[Any, ...]:
        done = []
        for i, item in enumerate(items):
            try:
                done.append(convert(item))
            except Invalid as exc:
                raise exc.within(i) from None
            except ValueError as exc:
                raise Invalid(str(exc), str(i)) from None
        return tuple(done)

    def check(value: Any) -> Any:
        if not isinstance(value, tuple | list):
            raise ValueError("should be an array")
        return each(rule.check, value)

    return _Rule(check, lambda v: each(rule.parse, v) if isinstance(v, list) else v)


def _record(cls: type["Record"]) -> _Rule:
    def check(value: Any) -> Any:
        if not isinstance(value, cls):
            raise ValueError(f"should be a {cls.__name__}")
        return value

    return _Rule(check, lambda v: build(cls, v) if isinstance(v, dict) else v)


def _constrained(rule: _Rule, marks: tuple[Any, ...]) -> _Rule:
    patterns = [re.compile(m.regex) for m in marks if isinstance(m, Pattern)]
    lengths = [m for m in marks if isinstance(m, Length)]
    ranges = [m for m in marks if isinstance(m, Range)]

    def check(value: Any) -> Any:
        value = rule.check(value)
        for length in lengths:
            unit = "characters" if isinstance(value, str) else "items"
            if len(value) < length.min:
                raise ValueError(f"should have at least {length.min} {unit}")
            if length.max is not None and len(value) > length.max:
                raise ValueError(f"should have at most {length.max} {unit}")
        for pattern in patterns:
            if pattern.fullmatch(value) is None:
                raise ValueError(f"should match {pattern.pattern}")
        for r in ranges:
            if r.ge is not None and not value >= r.ge:
                raise ValueError(f"should be at least {r.ge}")
            if r.le is not None and not value <= r.le:
                raise ValueError(f"should be at most {r.le}")
            if r.gt is not None and not value > r.gt:
                raise ValueError(f"should be greater than {r.gt}")
        return value

    return _Rule(check, rule.parse)


_PLAIN: Final[dict[Any, _Rule]] = {
    str: _Rule(_text, _same),
    int: _Rule(_int, _same),
    float: _Rule(_float, _same),
    Path: _Rule(_path, _same),
    datetime: _Rule(_aware, _from_text(parse_datetime)),
    date: _Rule(_date, _from_text(parse_date)),
}


def _rule(hint: Any) -> _Rule:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _constrained(_rule(args[0]), hint.__metadata__)
    if origin is Literal:
        return _Rule(_literal(args), _same)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _optional(_rule(next(a for a in args if a is not type(None))))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple(_rule(args[0]))
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record(hint)
    if hint in _PLAIN:
        return _PLAIN[hint]
    raise TypeError(f"strict records do not support {hint!r}")


_RULES: Final[dict[type, dict[str, _Rule]]] = {}


def _rules(cls: type[Record]) -> dict[str, _Rule]:
    """The rule of each field of ``cls`` in declaration order, made once per class."""
    rules = _RULES.get(cls)
    if rules is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        rules = {
            f.name: dataclasses.replace(
                _rule(hints[f.name]),
                required=f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        }
        _RULES[cls] = rules
    return rules


def check(record: Record) -> None:
    """Check every field of ``record``, storing widened values (int → float, text → Path)."""
    for name, rule in _rules(type(record)).items():
        value = getattr(record, name)
        try:
            checked = rule.check(value)
        except Invalid as exc:
            raise exc.within(name) from None
        except ValueError as exc:
            raise Invalid(str(exc), name) from None
        if checked is not value:
            object.__setattr__(record, name, checked)


def build(cls: type[R], obj: object) -> R:
    """A ``cls`` from a JSON object (or any mapping of plain values); raise Invalid."""
    if not isinstance(obj, Mapping):
        raise Invalid("should be an object")
    rules = _rules(cls)
    if not cls.ignore_unknown:
        for key in obj:
            if key not in rules:
                raise Invalid("unknown field", str(key))
    values = {}
    for name, rule in rules.items():
        if name not in obj:
            if rule.required:
                raise Invalid("missing", name)
            continue
        try:
            values[name] = rule.parse(obj[name])
        except Invalid as exc:
            raise exc.within(name) from None
        except ValueError as exc:
            raise Invalid(str(exc), name) from None
    return cls(**values)


_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text ``data`` nests arrays and objects deeper than ``limit``.

    Read before parsing, as the parser would read it up to its first error; brackets
    inside strings do not count. A text with no more opening brackets than ``limit``
    cannot be deeper, which decides almost every message with two ``bytes.count``."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Strings out: escaped backslashes, then escaped quotes, then every other run between
    # quotes. A backslash outside a string ends the parse anyway, so pairing them from
    # the left is right for everything the parser reads. All in C, linear.
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(plain.split(b'"')[::2]).translate(None, _NOT_BRACKET)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its pairs (an ``object_pairs_hook``); raise Invalid, naming the
    key, if one is repeated: a reader keeping the first value and one keeping the last
    would disagree on what a signed text says."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Invalid("key repeated in one object", key[:64])
            seen.add(key)
    return obj


_DECODER: Final = json.JSONDecoder(object_pairs_hook=unique_keys)


def loads(data: bytes) -> Any:
    """The JSON value in UTF-8 ``data``; raise Invalid if it is not JSON text, repeats a
    key within an object, or nests deeper than ``MAX_JSON_DEPTH``."""
    if too_deep(data):
        raise Invalid(f"nested deeper than {MAX_JSON_DEPTH} arrays or objects")
    try:
        text = data.decode("utf-8")
        value = _DECODER.decode(text)
        if "\\u" in text:
            # An escape can spell a lone surrogate, which is not text: nothing could write
            # it back as UTF-8, so it is refused here.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeError:
        raise Invalid("not UTF-8 text") from None
    except Invalid:
        raise
    except json.JSONDecodeError as exc:
        raise Invalid(f"not JSON: {exc}") from None
    except (ValueError, RecursionError):
        raise Invalid("not JSON: too deeply nested or too long a number") from None
    return value


def datetime_text(value: datetime) -> str:
    """RFC 3339: microseconds only when not zero, ``Z`` for UTC, else ``±HH:MM``."""
    offset = typing.cast(timedelta, value.utcoffset())
    if not offset:
        return value.isoformat()[:-6] + "Z"  # isoformat ends in +00:00 here
    if not offset.microseconds and not offset.seconds % 60:
        return value.isoformat()  # …±HH:MM, as isoformat writes whole-minute offsets
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    seconds = int(offset.total_seconds())
    minutes = abs(seconds) // 60
    return f"{text}{'-' if seconds < 0 else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


_AS_IS: Final = frozenset({str, int, float, bool, type(None)})
"""Types that JSON writes as they are."""


def _plain(value: Any) -> Any:
    if type(value) in _AS_IS:
        return value
    if isinstance(value, Record):
        omit = value.omit_when_none
        out: dict[str, Any] = {}
        for name in _rules(type(value)):
            field = getattr(value, name)
            if field is None and name in omit:
                continue
            out[name] = field if type(field) in _AS_IS else _plain(field)
        return out
    if isinstance(value, datetime):
        return datetime_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(record: Record) -> bytes:
    """``record`` as compact JSON (fields in declaration order, UTF-8 unescaped)."""
    text = json.dumps(_plain(record), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")
