"""The hostile suite: attacks replayed against the real broker, worker, API and agent, each
tallied (attempts, refused, leaked, crashes) by one collector for the run.

- The table is printed at the end of the run and written to ``var/hostile-figures.md``.
- Tests marked ``hostile`` (slow: the real 10 s HTTP deadlines, schemathesis) run only with
  ``CTPL_HOSTILE=1`` (``make hostile``); ``make test`` deselects them and runs the rest.
- Hypothesis profiles: ``ci`` (default: modest, derandomized, a few seconds a test) and
  ``hostile`` (many more examples), chosen by ``CTPL_HYPOTHESIS_PROFILE``.
"""

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import pytest
from _pytest.terminal import TerminalReporter
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.database import DirectoryBasedExampleDatabase

from cloud.pki import DevPki
from simulator.broker import Mosquitto
from tests.e2e.test_renewal import world  # noqa: F401 - the renewal world, as a fixture here

from .figures import Figures, Tally
from .harness import Cloud, running_cloud

FULL_ENV: Final = "CTPL_HOSTILE"
PROFILE_ENV: Final = "CTPL_HYPOTHESIS_PROFILE"
FIGURES_FILE: Final = Path("var") / "hostile-figures.md"
_ROOT: Final = Path(__file__).resolve().parents[2]

# Hypothesis keeps its caches (and the hostile profile's examples) in var/, not the work tree.
set_hypothesis_home_dir(_ROOT / "var" / "hypothesis")
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "hostile",
    max_examples=5000,
    deadline=None,
    database=DirectoryBasedExampleDatabase(_ROOT / "var" / "hypothesis" / "examples"),
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE: Final = os.environ.get(PROFILE_ENV, "ci")
settings.load_profile(PROFILE)

_FIGURES = pytest.StashKey[Figures]()


def full_run() -> bool:
    """Whether the slow attacks run too (``make hostile``)."""
    return os.environ.get(FULL_ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if full_run():
        return
    slow = [item for item in items if item.get_closest_marker("hostile") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("hostile") is None]


def figures_of(config: pytest.Config) -> Figures:
    if _FIGURES not in config.stash:
        config.stash[_FIGURES] = Figures()
    return config.stash[_FIGURES]


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    """The run's collector."""
    return figures_of(pytestconfig)


TallyFactory = Callable[..., Tally]


@pytest.fixture
def tally(figures: Figures, request: pytest.FixtureRequest) -> TallyFactory:
    """``tally(attack, group=…, expected=…)``: the attack's row, proved by this test."""

    def make(attack: str, *, group: str, expected: str) -> Tally:
        return figures.tally(attack, group=group, expected=expected, proof=request.node.nodeid)

    return make


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    found = config.stash.get(_FIGURES, None)
    if found is None or not found.tallies:
        return
    command = "make hostile" if full_run() else "make test (the hostile suite's fast slice)"
    terminalreporter.write_sep("=", f"hostile suite: {len(found.tallies)} attacks ({command})")
    for line in found.terminal_lines():
        terminalreporter.write_line(line)
    path = config.rootpath / FIGURES_FILE
    found.write(path, command, PROFILE)
    terminalreporter.write_line(f"written to {path}")


@pytest.fixture
async def cloud(own_pki: DevPki, own_broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Cloud]:
    """A worker on a fresh store and this test's own broker (three cars)."""
    async with running_cloud(own_pki, own_broker, tmp_path) as running:
        yield running
