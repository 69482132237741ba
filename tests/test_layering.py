"""The import rules between the parts, checked on the source with ast (nothing is imported).

- agent/ never imports cloud or simulator;
- agent/protocol/ imports only the standard library, cryptography and itself (no pydantic:
  the agent loads the contract, and pydantic alone would cost it ~12 MiB resident);
- cloud/ imports nothing of the agent but agent.protocol;
- only cloud.outbound imports httpcore (every connection to an address an operator gave goes
  through its policy: no internal targets, checked on the address connected to);
- simulator/ may import the agent (it runs real agent instances).
"""

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_THIRD_PARTY = frozenset({"cryptography"})
OWNERS: dict[str, str] = {"httpcore": "cloud.outbound"}
"""A library only one module may import (the one that enforces a policy over it)."""


@dataclass(frozen=True)
class Import:
    """One imported module, as an absolute dotted name, and where it is imported."""

    module: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a source file under ``root``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    """Every name ``source`` imports, as ``pkg.mod`` or ``pkg.mod.name``, relative ones resolved.

    ``from X import a`` yields ``X.a``: ``a`` may be a submodule of X (``from agent import
    store``) or a name in it; either way it lies within X, which is what the rules ask.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    found.append(Import("<beyond top-level>", node.lineno))
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = ".".join(p for p in (base, node.module) if p)
            found += [Import(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The layering rules that ``module`` (with this ``source``) breaks."""
    found = []
    for imp in imports_of(source, module, is_package=is_package):
        name, top = imp.module, _top(imp.module)
        where = f"{module}:{imp.line} imports {name}"
        if _within(module, "agent.protocol") and not (
            _within(name, "agent.protocol")
            or top in sys.stdlib_module_names
            or top in PROTOCOL_THIRD_PARTY
        ):
            found.append(f"{where}: agent.protocol is a leaf (stdlib, cryptography)")
        if _within(module, "agent") and top in {"cloud", "simulator"}:
            found.append(f"{where}: the agent never imports {top}")
        if _within(module, "cloud") and top == "agent" and not _within(name, "agent.protocol"):
            found.append(f"{where}: cloud may import only agent.protocol of the agent")
        owner = OWNERS.get(top)
        if owner is not None and module != owner:
            found.append(f"{where}: only {owner} imports {top}")
    return found


def source_files() -> list[Path]:
    """Every Python file of the three parts."""
    return sorted(
        p for part in ("agent", "cloud", "simulator") for p in (ROOT / part).rglob("*.py")
    )


# ---- the real tree -----------------------------------------------------------


def test_the_walk_sees_the_contract_package() -> None:
    names = {module_name(p) for p in source_files()}
    for expected in (
        "agent.protocol",
        "agent.protocol.envelope",
        "agent.protocol.messages",
        "agent.protocol.topics",
        "agent.protocol.keys",
        "agent.protocol.calendar",
        "agent.protocol.clock",
        "agent.protocol.errors",
        "agent.protocol.strict",
        "cloud.pki",
        "simulator.broker",
    ):
        assert expected in names


def test_protocol_imports_something_so_the_check_is_not_vacuous() -> None:
    path = ROOT / "agent" / "protocol" / "envelope.py"
    names = {i.module for i in imports_of(path.read_text(), "agent.protocol.envelope")}
    assert "agent.protocol.errors.EnvelopeError" in names
    assert "json" in names


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    name = module_name(path)
    assert violations(source, name, is_package=path.name == "__init__.py") == []


# ---- the checker catches what it should --------------------------------------


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("agent.protocol.envelope", "import httpx"),
        ("agent.protocol.envelope", "import paho.mqtt.client as mqtt"),
        ("agent.protocol.envelope", "from aiomqtt import Client"),
        ("agent.protocol.envelope", "from agent.store import Store"),
        ("agent.protocol.envelope", "from agent import store"),
        ("agent.protocol.envelope", "from .. import store"),
        ("agent.protocol.envelope", "from ..link import Link"),
        ("agent.protocol.envelope", "import cloud.pki"),
        ("agent.protocol.envelope", "def f():\n    import numpy\n"),
        ("agent.protocol.envelope", "try:\n    import orjson\nexcept ImportError:\n    pass\n"),
        ("agent.protocol", "from ..store import Store"),
        ("agent.link", "import cloud"),
        ("agent.link", "from cloud.pki import DevPki"),
        ("agent.link", "from simulator.broker import Mosquitto"),
        ("agent.link", "from ..cloud import pki"),
        ("agent.sub.deep", "from ...simulator import fleet"),
        ("cloud.worker", "from agent.store import Store"),
        ("cloud.worker", "from agent import link"),
        ("cloud.worker", "from agent import protocol, store"),
        ("cloud.worker", "import agent.link"),
        ("cloud.worker", "import agent"),
        ("cloud.worker", "def f():\n    from agent.reminders import decide\n"),
        ("cloud.worker", "from ..agent import store"),
        ("cloud.worker", "from agent import *"),
        ("agent.protocol.envelope", "from .... import x"),
        ("agent.protocol.messages", "from pydantic import BaseModel"),
        ("agent.protocol.messages", "import pydantic_core"),
        ("cloud.alert_delivery", "import httpcore"),
        ("cloud.fleet_api", "from httpcore import AsyncConnectionPool"),
    ],
)
def test_checker_catches(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("agent.protocol.envelope", "import base64, json\nfrom typing import Final"),
        ("agent.protocol.envelope", "from .errors import EnvelopeError"),
        ("agent.protocol.envelope", "from . import keys"),
        ("agent.protocol.envelope", "from agent.protocol.keys import kid_for"),
        ("agent.protocol.envelope", "from agent import protocol"),
        ("agent.protocol.messages", "from .strict import Record"),
        ("agent.protocol.keys", "from cryptography.hazmat.primitives import hashes"),
        ("agent.protocol.envelope", "from __future__ import annotations"),
        ("agent.link", "import paho.mqtt.client\nfrom agent.protocol import topics"),
        ("agent.link", "from .store import Store"),
        ("cloud.worker", "from agent.protocol import envelope"),
        ("cloud.worker", "from agent import protocol"),
        ("cloud.worker", "import agent.protocol.topics"),
        ("cloud.worker", "from .pki import DevPki"),
        ("simulator.fleet", "from agent.link import Link\nfrom agent.store import Store"),
        ("simulator.fleet", "from cloud.worker import Worker"),
        ("cloud.outbound", "import httpcore"),
    ],
)
def test_checker_allows(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_package_relative_imports_resolve_from_the_package_itself() -> None:
    # In agent/protocol/__init__.py, "from .keys" is agent.protocol.keys, "from .." is agent.
    names = {i.module for i in imports_of("from .keys import x", "agent.protocol", is_package=True)}
    assert names == {"agent.protocol.keys.x"}
    assert violations("from .keys import x", "agent.protocol", is_package=True) == []
    assert violations("from ..link import x", "agent.protocol", is_package=True) != []


def test_module_name_of_files() -> None:
    assert module_name(ROOT / "agent" / "protocol" / "__init__.py") == "agent.protocol"
    assert module_name(ROOT / "cloud" / "pki.py") == "cloud.pki"
