"""The footprint benchmark's harness: its store probe, report and section (no timing here)."""

import sqlite3
from pathlib import Path

from agent.store import Store
from simulator import footprint
from simulator.bench import _write_section
from simulator.footprint import Footprint, Start


def _status(rss_mib: float) -> dict[str, int]:
    kib = int(rss_mib * 1024)
    return {"VmRSS": kib, "VmHWM": kib, "RssAnon": kib // 2, "RssFile": kib - kib // 2}


def _footprint(rss_mib: float, first_s: float, idle_cpu_s: float) -> Footprint:
    def start() -> Start:
        return Start(first_s, _status(rss_mib), _status(rss_mib), 30.0, idle_cpu_s, 0.2)

    ladder = [("Python, nothing imported", 10.0), ("+ agent.runner (the rest)", rss_mib - 5)]
    return Footprint([start()] * 3, [start()] * 3, start(), ladder, "evicted")


async def test_the_probe_reads_the_agents_real_schema(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    assert footprint._stored_state(db) is None  # no store yet
    async with Store(db):
        pass
    with sqlite3.connect(db) as conn:  # the columns exist: the query prepares
        assert conn.execute(footprint.STATE_QUERY).fetchone() is None
    assert footprint._stored_state(db) is None  # a store, no state yet


def test_the_report_marks_each_target() -> None:
    good = footprint.report(_footprint(40.0, 0.4, 0.03), "ctpl-sim footprint")
    assert "**FAIL**" not in good
    bad = footprint.report(_footprint(51.0, 2.0, 0.6), "ctpl-sim footprint")
    assert bad.count("**FAIL**") == 9  # 2 start rows, 3 memory rows, idle CPU, the verdict's 3


def test_the_section_replaces_itself_and_keeps_the_others(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Signed status round trips\n\nfigures\n")
    for rss in (51.0, 40.0):
        _write_section(doc, "## Agent footprint", footprint.report(_footprint(rss, 0.4, 0.0), "x"))
    text = doc.read_text()
    assert text.count("## Agent footprint") == 1
    assert "## Signed status round trips\n\nfigures\n" in text
    assert "**FAIL**" not in text
