"""The agent's import lines: one module per library, nothing from cloud/ or simulator/,
and no pydantic (about 12 MiB resident, against a 45 MB budget; the cloud may use it)."""

import ast
import subprocess
import sys
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
EVERY_MODULE = sorted(AGENT.rglob("*.py"))


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


@pytest.mark.parametrize("path", EVERY_MODULE, ids=lambda p: str(p.relative_to(AGENT)))
def test_no_agent_module_imports_pydantic(path: Path) -> None:
    assert not top_level_imports(path) & {"pydantic", "pydantic_core"}


def test_the_agent_process_does_not_load_pydantic() -> None:
    """What ``ctpl-agent run`` imports, in a fresh interpreter: no library pulls it in either."""
    code = (
        "import sys, agent.runner, agent.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=AGENT.parent, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"
