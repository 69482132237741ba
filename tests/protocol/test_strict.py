"""The strict record kit: fields checked against their annotations, JSON in and out."""

import dataclasses
import importlib
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_type_hints

import pytest

from agent.protocol import strict
from agent.protocol.strict import Invalid, Length, Pattern, Range


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Item(strict.Record):
    name: Annotated[str, Pattern(r"[a-z]+"), Length(max=8)]
    at: datetime | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Box(strict.Record):
    kind: Literal["box"]
    size: Annotated[int, Range(ge=1, le=10)]
    ratio: Annotated[float, Range(gt=0)] = 1.0
    day: date | None = None
    items: Annotated[tuple[Item, ...], Length(min=1, max=2)]
    where: Path | None = None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Lenient(strict.Record):
    ignore_unknown: ClassVar[bool] = True
    name: str


GOOD: dict[str, Any] = {
    "kind": "box",
    "size": 3,
    "day": "2025-06-01",
    "items": [{"name": "a", "at": "2025-06-01T04:00:00+08:00"}],
}


def test_a_record_from_json_and_back() -> None:
    box = strict.build(Box, strict.loads(strict.dumps(strict.build(Box, GOOD))))
    assert box.items[0].at == datetime(2025, 5, 31, 20, tzinfo=UTC)
    assert box.day == date(2025, 6, 1)
    assert strict.dumps(box) == (
        b'{"kind":"box","size":3,"ratio":1.0,"day":"2025-06-01",'
        b'"items":[{"name":"a","at":"2025-06-01T04:00:00+08:00"}],"where":null}'
    )


def test_construction_widens_ints_and_reads_paths_and_lists() -> None:
    box = Box(kind="box", size=3, ratio=2, items=[Item(name="a")], where="x/y")  # type: ignore[arg-type]
    assert (box.ratio, box.items, box.where) == (2.0, (Item(name="a"),), Path("x/y"))
    assert isinstance(box.ratio, float)
    assert strict.dumps(box).endswith(b'"where":"x/y"}')


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"kind": "crate"}, "kind"),
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": 3.0}, "size"),
        ({"ratio": 0}, "ratio"),
        ({"ratio": "1"}, "ratio"),
        ({"day": "2025-06-01T00:00:00Z"}, "day"),
        ({"items": []}, "items"),
        ({"items": [{"name": "a"}] * 3}, "items"),
        ({"items": [{"name": "a"}, {"name": "A"}]}, "items.1.name"),
        ({"items": [{"name": "abcdefghi"}]}, "items.0.name"),
        ({"items": [{"name": "a", "at": "2025-06-01T04:00:00"}]}, "items.0.at"),
        ({"items": [{"name": "a", "colour": "red"}]}, "items.0.colour"),
        ({"items": {"name": "a"}}, "items"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_json_that_breaks_a_rule_names_the_field(change: dict[str, Any], where: str) -> None:
    with pytest.raises(Invalid) as info:
        strict.build(Box, GOOD | change)
    assert info.value.where == where
    assert str(info.value).startswith(where + ": ")


def test_missing_fields_are_refused_and_defaults_filled() -> None:
    with pytest.raises(Invalid, match="size: missing"):
        strict.build(Box, {k: v for k, v in GOOD.items() if k != "size"})
    assert strict.build(Box, GOOD).where is None


def test_unknown_keys_are_ignored_only_when_the_class_says_so() -> None:
    assert strict.build(Lenient, {"name": "x", "other": 1}) == Lenient(name="x")
    with pytest.raises(Invalid, match="should be an object"):
        strict.build(Lenient, ["name"])


@pytest.mark.parametrize(
    "data", [b"", b"{", b"\xff", b'"\\ud800"', b"[" * 1500 + b"]" * 1500, b"1 2"]
)
def test_loads_refuses_what_is_not_strict_json_text(data: bytes) -> None:
    with pytest.raises(Invalid):
        strict.loads(data)


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b'{"a":1,"a":2}', "a"),
        (b'{"a":1,"b":{"c":1,"c":1}}', "c"),
        (b'[{"x":[{"k":"v","k":"w"}]}]', "k"),
        (b'{"\\u0061":1,"a":2}', "a"),
    ],
    ids=["top", "nested", "in-array", "escaped-spelling"],
)
def test_loads_refuses_a_key_repeated_in_one_object(data: bytes, where: str) -> None:
    with pytest.raises(Invalid, match="repeated") as info:
        strict.loads(data)
    assert info.value.where == where


def test_loads_reads_the_same_key_in_different_objects() -> None:
    assert strict.loads(b'[{"a":1},{"a":2}]') == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("depth", range(1, strict.MAX_JSON_DEPTH + 1))
def test_loads_reads_nesting_up_to_the_limit(depth: int) -> None:
    assert strict.loads(b'{"a":' * depth + b"1" + b"}" * depth) is not None
    assert strict.loads(b"[" * depth + b"]" * depth) is not None


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 9 + b"]" * 9,
        b'{"a":' * 9 + b"1" + b"}" * 9,
        b"[{" * 5 + b"}]" * 5,
        b"[" * 3000 + b"]" * 3000,
        b"[" * 100_000,
    ],
    ids=["arrays-9", "objects-9", "mixed-10", "arrays-3000", "unclosed"],
)
def test_loads_refuses_nesting_past_the_limit_before_parsing(data: bytes) -> None:
    with pytest.raises(Invalid, match=f"nested deeper than {strict.MAX_JSON_DEPTH}"):
        strict.loads(data)


@pytest.mark.parametrize(
    ("data", "deep"),
    [
        (b'["[[[[[[[[[[[[[[[[[[["]', False),
        (b'["\\\\",' + b"[" * 8 + b"]" * 8 + b"]", True),
        (b'["\\"[[[[[[[[[[[",[[[]]]]', False),
        (b"[{},{},{},{},{},{},{},{},{},{},{}]", False),
        (b'"unterminated [[[[[[[[[[[[', False),
        (b'"\\' + b"[" * 20, False),
    ],
    ids=["brackets-in-text", "escaped-backslash", "escaped-quote", "wide", "unterminated", "end"],
)
def test_depth_ignores_brackets_inside_strings(data: bytes, deep: bool) -> None:
    assert strict.too_deep(data) is deep


@pytest.mark.parametrize(
    "text",
    [b'"\\"' * 2700, b'"' + b'\\"' * 4000, b'["' * 4000, b"[]" * 4000, b'"' + b"\\" * 8000],
    ids=["quote-escape-quote", "escaped-quotes", "open-strings", "wide", "backslashes"],
)
def test_depth_check_stays_linear_on_hostile_text(text: bytes) -> None:
    data = b"[" * 9 + text  # past the bracket count, so the strings are skipped one by one
    start = time.perf_counter()
    strict.too_deep(data)
    assert time.perf_counter() - start < 0.01


def test_unsupported_annotations_are_a_programming_error() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
    class Odd(strict.Record):
        values: list[int]

    with pytest.raises(TypeError, match="do not support"):
        Odd(values=[1])


def _strict_marks(hint: Any) -> list[object]:
    found = [
        m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Pattern | Length | Range)
    ]
    return found + [m for arg in get_args(hint) for m in _strict_marks(arg)]


def test_no_pydantic_model_of_the_cloud_carries_a_strict_rule() -> None:
    """pydantic ignores metadata it does not know: a strict rule there would check nothing."""
    pydantic = pytest.importorskip("pydantic")
    cloud = Path(__file__).resolve().parents[2] / "cloud"
    models = []
    for path in sorted(cloud.glob("[!_]*.py")):  # not __main__: it runs the CLI
        module = importlib.import_module(f"cloud.{path.stem}")
        models += [
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and issubclass(v, pydantic.BaseModel)
            and v.__module__ == module.__name__
        ]
    assert len(models) > 5
    for model in models:
        for name, hint in get_type_hints(model, include_extras=True).items():
            assert not _strict_marks(hint), f"{model.__name__}.{name}"
