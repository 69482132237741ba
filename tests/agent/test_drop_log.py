"""The drop log's rules (agent/drop_log.py) as a table: what is logged, what is counted."""

import pytest

from agent.drop_log import DropLog, Summary

W = 60.0


def test_the_first_drop_of_a_reason_is_logged_and_the_rest_of_its_minute_counted() -> None:
    d = DropLog(W)
    assert d.dropped("bad_envelope", 0.0) is True
    assert [d.dropped("bad_envelope", t) for t in (0.1, 1.0, 59.9)] == [False] * 3
    assert d.due(59.9) == []
    assert d.due(60.0) == [Summary("bad_envelope", 3, 60.0)]
    assert d.due(61.0) == []


def test_reasons_have_windows_of_their_own() -> None:
    d = DropLog(W)
    assert d.dropped("bad_envelope", 0.0)
    assert d.dropped("bad_signature", 30.0)
    assert not d.dropped("bad_envelope", 31.0)
    assert not d.dropped("bad_signature", 31.0)
    assert d.due(60.0) == [Summary("bad_envelope", 1, 60.0)]
    assert d.due(90.0) == [Summary("bad_signature", 1, 60.0)]


def test_a_flood_gives_one_summary_a_minute_and_never_a_second_full_line() -> None:
    d = DropLog(W)
    logged = summaries = 0
    for i in range(6000):  # 100 drops a second for a minute, as the agent notes each one
        now = i / 100
        summaries += len(d.due(now))
        logged += d.dropped("bad_envelope", now)
    assert logged == 1
    assert summaries == 0  # the first window (0 .. 60 s) has not ended yet
    assert d.due(60.0) == [Summary("bad_envelope", 5999, 60.0)]
    assert not d.dropped("bad_envelope", 60.5)  # the flood goes on: still counted only
    assert d.due(120.0) == [Summary("bad_envelope", 1, 60.0)]


def test_a_reason_quiet_for_a_whole_window_is_logged_in_full_again() -> None:
    d = DropLog(W)
    assert d.dropped("rollback", 0.0)
    assert d.due(60.0) == []  # nothing counted: the reason is quiet again
    assert d.dropped("rollback", 61.0)


def test_flush_gives_the_open_counts_and_forgets_them() -> None:
    d = DropLog(W)
    d.dropped("a", 0.0)
    d.dropped("a", 1.0)
    d.dropped("b", 2.0)
    assert d.flush(10.0) == [Summary("a", 1, 10.0)]
    assert d.flush(11.0) == []
    assert d.dropped("a", 12.0)


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DropLog(0.0)
