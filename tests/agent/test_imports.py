"""The agent's import lines: one module per library, and nothing from cloud/ or simulator/."""

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "agent"
OWNERS = {
    "aiomqtt": "link.py",
    "paho": "link.py",
    "aiosqlite": "store.py",
    "httpx": "cloud_api.py",
}
FORBIDDEN = {"cloud", "simulator"}
MODULES = sorted(p for p in AGENT.glob("*.py"))


def top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_imports(path: Path) -> None:
    names = top_level_imports(path)
    assert not names & FORBIDDEN
    for library, owner in OWNERS.items():
        if library in names:
            assert path.name == owner, f"{path.name} imports {library}; only {owner} may"
