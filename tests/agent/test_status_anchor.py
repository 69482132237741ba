"""``ctpl-agent status`` in a process of its own: the agent's anchor counts only in its boot."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.boot import current_boot_id
from agent.cli import _TimeRows, _trusted
from agent.store import Store
from agent.trusted_time import Anchor, Confidence

ISSUED = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
ANCHOR = Anchor(ISSUED, sent=100.0, received=100.2)


@pytest.mark.parametrize(
    ("saved_boot", "this_boot", "confidence"),
    [
        ("boot-a", "boot-a", Confidence.FRESH),
        ("boot-a", "boot-b", Confidence.CARRIED),  # monotonic readings mean nothing across boots
        ("boot-a", None, Confidence.CARRIED),  # a system that does not tell its boot id
    ],
)
def test_a_saved_anchor_counts_only_in_the_boot_it_was_made_in(
    saved_boot: str, this_boot: str | None, confidence: Confidence
) -> None:
    floor = ISSUED + timedelta(seconds=30)
    rows = _TimeRows(floor=floor, anchor=(saved_boot, ANCHOR))
    now, fault = _trusted(None, "no state", rows, this_boot, mono=160.0)
    assert fault is None  # another boot's anchor is no fault: that is every reboot
    assert now is not None and now.confidence == confidence
    assert now.earliest >= floor  # never behind the persisted floor
    if confidence == Confidence.FRESH:
        assert (
            now.latest is not None and now.earliest <= ISSUED + timedelta(seconds=60) <= now.latest
        )


def test_no_anchor_leaves_only_the_floor() -> None:
    now, fault = _trusted(None, "no state", _TimeRows(floor=ISSUED), "boot-a", mono=5.0)
    assert fault is None
    assert now is not None and now.confidence == Confidence.CARRIED and now.earliest == ISSUED


async def test_the_store_keeps_the_last_anchor_with_its_boot(tmp_path: Path) -> None:
    async with Store(tmp_path / "agent.db") as store:
        assert await store.anchor() is None
        await store.save_anchor("boot-a", ANCHOR)
        await store.save_anchor("boot-b", Anchor(ISSUED + timedelta(hours=1), 5.0, 5.5))
    async with Store(tmp_path / "agent.db") as store:
        assert await store.anchor() == ("boot-b", Anchor(ISSUED + timedelta(hours=1), 5.0, 5.5))


def test_this_machine_tells_its_boot_id() -> None:
    boot = current_boot_id()
    assert boot is not None and len(boot) >= 16
    assert current_boot_id(Path("/nonexistent/boot_id")) is None
