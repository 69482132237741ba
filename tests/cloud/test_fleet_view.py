"""The fleet's per-vehicle truths, as tables (pure)."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from cloud.fleet_view import Filters, matches, summarize, to_csv

from .test_handler import policy

NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
END = date(2026, 12, 1)


def test_link_is_online_offline_or_unknown_by_when_the_car_was_last_seen() -> None:
    record = policy(end=END, verified_at=NOW - timedelta(hours=1))
    assert summarize("v1", record, NOW - timedelta(minutes=30), False, NOW).link == "online"
    assert summarize("v1", record, NOW - timedelta(hours=3), False, NOW).link == "offline"
    unseen = summarize("v1", record, None, False, NOW)
    assert (unseen.link, unseen.status, unseen.days_left, unseen.data_age_s) == (
        "unknown", "expiring", 6, 3600.0,
    )  # fmt: skip


def test_a_bought_next_term_is_not_expiring_and_a_revoked_car_says_so() -> None:
    renewed = replace(policy(end=END), next_end=date(2027, 12, 1), next_insurer_code="PINGAN")
    row = summarize("v1", renewed, None, False, NOW)
    assert (row.status, row.next_coverage_end) == ("renewal_pending", date(2027, 12, 1))
    assert not matches(row, Filters(expires_within_days=30))
    assert matches(summarize("v2", policy(end=END), None, False, NOW),
                   Filters(expires_within_days=30))  # fmt: skip
    assert summarize("v3", policy(end=END), None, True, NOW).status == "revoked"
    assert summarize("v4", None, None, False, NOW).status == "unknown"


def test_csv_has_a_header_and_empty_cells_for_none() -> None:
    text = to_csv([summarize("v1", None, None, False, NOW)])
    assert text.splitlines() == [
        "vid,status,insurer_code,coverage_end,days_left,next_coverage_end,link,last_seen,"
        "data_age_s,starts_at",
        "v1,unknown,,,,,unknown,,,",
    ]


def test_a_car_whose_term_starts_tomorrow_is_pending_with_its_start_instant() -> None:
    tomorrow = date(2026, 11, 26)  # NOW is 14:00 on 25 Nov in China
    record = policy(end=date(2027, 11, 25), coverage_start=tomorrow)
    row = summarize("v1", record, NOW, False, NOW)
    assert (row.status, row.starts_at) == ("pending", datetime(2026, 11, 25, 16, 0, tzinfo=UTC))
    assert not matches(row, Filters(expires_within_days=400))  # uncovered, not expiring
    assert matches(row, Filters(status=frozenset({"pending"})))
    assert to_csv([row]).splitlines()[1].endswith(",2026-11-26T00:00:00+08:00")
    covered = summarize("v1", record, NOW, False, NOW + timedelta(hours=10))
    assert (covered.status, covered.starts_at) == ("active", None)
