"""Aggregation as tables (pure), the cache, then the same rules end to end against the real
simulated national platform, insurers and a third party."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from agent.protocol.clock import ManualClock
from cloud.aggregate import (
    Aggregate,
    AggregateCache,
    SourceAnswer,
    SourceFailure,
    SourceKind,
    SourcePolicy,
    aggregate,
    mask_policy_no,
)
from cloud.policy import status_of
from cloud.source_registry import SourceRegistry
from cloud.sources import SourceConfig, SourcesConfig
from simulator.sources import Insurer, NationalPlatform, ThirdPartyPlatform

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 25 Nov 2026, 10:00 in China
VIN = "LSVAM4187C2184847"
PLATE = "沪A12345"
OLD = (date(2026, 1, 1), date(2026, 12, 31))
NEW = (date(2027, 1, 1), date(2027, 12, 31))
ENDED = (date(2025, 11, 1), date(2026, 10, 31))
AFTER = (date(2026, 11, 26), date(2027, 11, 25))  # bought after a lapse: starts tomorrow


def pol(no: str, insurer: str, term: tuple[date, date], status: str = "in_force") -> SourcePolicy:
    return SourcePolicy(f"PDZA2026{no:0>12}", insurer, f"{insurer} 产险", PLATE, VIN, term[0],
                        term[1], status, NOW - timedelta(days=30))  # type: ignore[arg-type]  # fmt: skip


def ans(source: str, *policies: SourcePolicy, age_s: float = 0) -> SourceAnswer:
    kind: SourceKind = (
        "national" if source == "national" else "third_party" if source == "tp" else "insurer"
    )
    at = NOW - timedelta(seconds=age_s)
    return SourceAnswer(source, kind, at, NOW, policies)


def fail(source: str, last_good_s: float | None = None) -> SourceFailure:
    kind: SourceKind = (
        "national" if source == "national" else "third_party" if source == "tp" else "insurer"
    )
    last = None if last_good_s is None else NOW - timedelta(seconds=last_good_s)
    return SourceFailure(source, kind, "timeout", NOW, last)


P_OLD, P_NEW = pol("1", "PICC", OLD), pol("2", "PINGAN", NEW)
P_ENDED, P_AFTER = pol("3", "PICC", ENDED), pol("4", "PINGAN", AFTER)


@dataclass(frozen=True)
class Case:
    name: str
    outcomes: list[SourceAnswer | SourceFailure]
    verdict: str
    current: SourcePolicy | None
    renewal: SourcePolicy | None = None
    source: str | None = None
    status: str | None = None
    """What ``status_of`` makes of the record (None: no record)."""


CASES = [
    Case("national alone", [ans("national", P_OLD), ans("PICC"), ans("PINGAN")],
         "confirmed", P_OLD, source="national", status="active"),
    Case("national and the insurer agree", [ans("national", P_OLD), ans("PICC", P_OLD),
         ans("PINGAN")], "confirmed", P_OLD, source="national", status="active"),
    Case("national wins a disagreement on the same term",
         [ans("national", P_OLD), ans("PICC", pol("1", "PICC", OLD, "cancelled")), ans("PINGAN")],
         "confirmed", P_OLD, source="national", status="active"),
    Case("the insurer wins over a third party on the same term",
         [fail("national"), ans("PICC", P_OLD), ans("PINGAN"),
          ans("tp", pol("1", "PICC", OLD, "cancelled"))],
         "unconfirmed", P_OLD, source="PICC", status="active"),
    Case("lag: the new insurer's renewal is not on the national record yet",
         [ans("national", P_OLD), ans("PICC", P_OLD), ans("PINGAN", P_NEW)],
         "renewed", P_OLD, P_NEW, "national", "renewal_pending"),
    Case("the national platform confirms the renewal",
         [ans("national", P_OLD, P_NEW), ans("PICC", P_OLD), ans("PINGAN", P_NEW)],
         "confirmed", P_OLD, P_NEW, "national", "renewal_pending"),
    Case("a renewal known while the old insurer is down",
         [ans("national", P_OLD), fail("PICC"), ans("PINGAN", P_NEW)],
         "renewed", P_OLD, P_NEW, "national", "renewal_pending"),
    Case("lapsed: cover ended, every source answered",
         [ans("national", P_ENDED), ans("PICC", P_ENDED), ans("PINGAN")],
         "lapsed", P_ENDED, source="national", status="lapsed"),
    Case("a failed insurer never makes lapsed",
         [ans("national", P_ENDED), ans("PICC", P_ENDED), fail("PINGAN", 3600)],
         "unknown", P_ENDED, source="national", status="unknown"),
    Case("a failed national platform never makes lapsed",
         [fail("national"), ans("PICC", P_ENDED), ans("PINGAN")],
         "unknown", P_ENDED, source="PICC", status="unknown"),
    Case("a failed third party does not stop a lapse",
         [ans("national", P_ENDED), ans("PICC", P_ENDED), ans("PINGAN"), fail("tp")],
         "lapsed", P_ENDED, source="national", status="lapsed"),
    Case("a lapse made good by the insurer, national lagging: uncovered until it starts",
         [ans("national", P_ENDED), ans("PICC", P_ENDED), ans("PINGAN", P_AFTER)],
         "renewed", P_AFTER, source="PINGAN", status="pending"),
    Case("every source failed", [fail("national", 90), fail("PICC", 60), fail("PINGAN")],
         "unknown", None),
    Case("nothing on record anywhere", [ans("national"), ans("PICC"), ans("PINGAN")],
         "none", None),
    Case("nothing, but an insurer failed", [ans("national"), ans("PICC"), fail("PINGAN")],
         "unknown", None),
    Case("a first policy the national platform does not know yet",
         [ans("national"), ans("PICC", P_OLD), ans("PINGAN")],
         "renewed", P_OLD, source="PICC", status="active"),
    Case("the national platform down, the insurer covers",
         [fail("national"), ans("PICC", P_OLD), ans("PINGAN")],
         "unconfirmed", P_OLD, source="PICC", status="active"),
    Case("a third party alone is not believed when national answered",
         [ans("national", P_OLD), ans("PICC", P_OLD), fail("PINGAN"), ans("tp", P_NEW)],
         "confirmed", P_OLD, source="national", status="active"),
    Case("a third party alone is not believed when the insurer answered",
         [fail("national"), ans("PICC", P_OLD), ans("PINGAN"), ans("tp", P_NEW)],
         "unconfirmed", P_OLD, source="PICC", status="active"),
    Case("a third party alone counts when those who would know are down",
         [fail("national"), fail("PICC"), fail("PINGAN"), ans("tp", P_OLD)],
         "unconfirmed", P_OLD, source="tp", status="active"),
    Case("an insurer's word on another insurer's policy is ignored",
         [ans("national", P_ENDED), ans("PICC", P_ENDED, P_NEW), ans("PINGAN")],
         "lapsed", P_ENDED, source="national", status="lapsed"),
    Case("a cancelled term gives no cover",
         [ans("national", P_ENDED, pol("5", "PICC", OLD, "cancelled")), ans("PICC"),
          ans("PINGAN")], "lapsed", P_ENDED, source="national", status="lapsed"),
    Case("only a cancelled term", [ans("national", pol("5", "PICC", OLD, "cancelled")),
         ans("PICC"), ans("PINGAN")], "none", None),
    Case("overlapping terms: the national one",
         [ans("national", P_OLD), ans("PICC", P_OLD, pol("6", "PICC", (OLD[0], NEW[1]))),
          ans("PINGAN")], "confirmed", P_OLD, source="national", status="active"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_aggregation_table(case: Case) -> None:
    result = aggregate(case.outcomes, NOW)
    assert result.verdict == case.verdict
    assert (result.current.policy if result.current else None) == case.current
    assert (result.renewal.policy if result.renewal else None) == case.renewal
    record = result.record("v1")
    if case.status is None:
        assert record is None
        return
    assert record is not None and record.source == case.source
    assert status_of(record, NOW, 30) == case.status
    assert case.current is not None and record.insurer_code == case.current.insurer_code
    assert record.plate_masked == "沪A·****5" and "****" in record.policy_no_masked


def test_provenance_keeps_every_sighting() -> None:
    result = aggregate([ans("national", P_OLD, age_s=120), ans("PICC", P_OLD), ans("PINGAN")], NOW)
    assert result.current is not None
    assert [(s.source, s.verified_at) for s in result.current.sightings] == [
        ("national", NOW - timedelta(seconds=120)), ("PICC", NOW),
    ]  # fmt: skip
    assert result.current.verified_at == NOW - timedelta(seconds=120)
    assert result.current.on_national_record and result.current.from_insurer
    record = result.record("v1")
    assert record is not None and record.verified_at == NOW - timedelta(seconds=120)


def test_a_source_clock_ahead_does_not_make_an_answer_fresher() -> None:
    ahead = SourceAnswer("national", "national", NOW + timedelta(hours=1), NOW, (P_OLD,))
    assert ahead.verified_at == NOW


def test_unknown_carries_the_age_of_the_last_good_answer() -> None:
    result = aggregate([fail("national", 90), fail("PICC", 60), fail("PINGAN")], NOW)
    assert result.verdict == "unknown" and result.last_good_age_s == 60
    assert aggregate([fail("national")], NOW).last_good_age_s is None
    assert not result.complete and len(result.failures) == 3


def test_the_record_tells_the_car_a_renewal_is_in_hand() -> None:
    record = aggregate([ans("national", P_OLD), ans("PICC", P_OLD), ans("PINGAN", P_NEW)],
                       NOW).record("v1")  # fmt: skip
    assert record is not None
    assert (record.override, record.coverage_end, record.insurer_code) == (
        "renewal_pending", OLD[1], "PICC",
    )  # fmt: skip
    # Once the new term has begun, it is simply active.
    later = datetime(2027, 1, 1, 0, 0, tzinfo=UTC)
    record = aggregate([ans("national", P_OLD), ans("PICC", P_OLD), ans("PINGAN", P_NEW)],
                       later).record("v1")  # fmt: skip
    assert record is not None and record.override is None and record.coverage_start == NEW[0]


@pytest.mark.parametrize(
    ("no", "masked"),
    [("PDZA20261100000012345", "PDZA2026****2345"), ("AB123456", "AB****56"), ("ABCD", "****")],
)
def test_mask_policy_no(no: str, masked: str) -> None:
    assert mask_policy_no(no) == masked


# ---- the cache (pure) --------------------------------------------------------


def result(*outcomes: SourceAnswer | SourceFailure, at: datetime = NOW) -> Aggregate:
    return aggregate(list(outcomes), at)


def test_cache_ttl_retry_after_and_last_good() -> None:
    cache = AggregateCache(ttl_s=60, retry_after_s=10, max_entries=2)
    good = result(ans("national", P_OLD), ans("PICC", P_OLD))
    cache.put("A", good, NOW)
    assert cache.get("A", NOW + timedelta(seconds=59)) is good
    assert cache.get("A", NOW + timedelta(seconds=60)) is None
    partial = result(ans("national", P_OLD), fail("PICC"))
    cache.put("B", partial, NOW)
    assert cache.get("B", NOW + timedelta(seconds=9)) is partial
    assert cache.get("B", NOW + timedelta(seconds=10)) is None
    assert cache.last_good_at("B", "national") == NOW and cache.last_good_at("B", "PICC") is None
    cache.put("C", good, NOW)  # over max_entries: the oldest goes
    assert cache.get("A", NOW) is None and cache.get("C", NOW) is good
    cache.invalidate("C")
    assert cache.get("C", NOW) is None and cache.last_good_at("C", "PICC") == NOW


# ---- end to end over the real simulated services -----------------------------


@dataclass
class World:
    clock: ManualClock
    national: NationalPlatform
    picc: Insurer
    pingan: Insurer
    thirdparty: ThirdPartyPlatform
    registry: SourceRegistry


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = ManualClock(NOW)
    async with (
        NationalPlatform(clock=clock, lag_s=3600) as national,
        ThirdPartyPlatform(clock=clock, lag_s=7200) as tp,
        Insurer("PICC", "中国人保财险", clock=clock, reports_to=[national, tp]) as picc,
        Insurer("PINGAN", "平安产险", clock=clock, reports_to=[national, tp],
                number_prefix="22") as pingan,
    ):  # fmt: skip
        fast: dict[str, Any] = {"attempts": 2, "timeout_s": 1.0, "backoff_base_s": 0.005,
                                "backoff_cap_s": 0.01}  # fmt: skip
        sources = tuple(
            SourceConfig(name=name, kind=kind, base_url=url, **fast)
            for name, kind, url in (("national", "national", national.url),
                                    ("PICC", "insurer", picc.url),
                                    ("PINGAN", "insurer", pingan.url),
                                    ("thirdparty", "third_party", tp.url))
        )  # fmt: skip
        async with SourceRegistry(SourcesConfig(sources=sources), clock=clock) as registry:
            yield World(clock, national, picc, pingan, tp, registry)


async def test_lag_renewed_then_confirmed(world: World) -> None:
    old = world.picc.issue_policy(PLATE, VIN, OLD[0])
    world.clock.advance(7200)  # reported long ago: on every record
    new = world.pingan.issue_policy(PLATE, VIN, NEW[0])
    first = await world.registry.refresh(PLATE, VIN)
    assert first.verdict == "renewed" and first.complete
    assert first.current is not None and first.current.policy.policy_no == old.policy_no
    assert first.renewal is not None and first.renewal.source == "PINGAN"
    assert first.renewal.policy.policy_no == new.policy_no
    assert await world.registry.refresh(PLATE, VIN) is first  # cached for the TTL
    world.clock.advance(3600)  # the national platform's lag
    confirmed = await world.registry.refresh(PLATE, VIN)
    assert confirmed.verdict == "confirmed"
    assert confirmed.renewal is not None and confirmed.renewal.on_national_record
    record = confirmed.record("v1")
    assert record is not None and record.override == "renewal_pending"


async def test_a_failing_source_never_makes_lapsed(world: World) -> None:
    world.picc.issue_policy(PLATE, VIN, ENDED[0])
    world.clock.advance(7200)
    world.pingan.set_knobs(outage=True)
    down = await world.registry.refresh(PLATE, VIN)
    assert down.verdict == "unknown" and [f.source for f in down.failures] == ["PINGAN"]
    record = down.record("v1")
    assert record is not None and status_of(record, world.clock.now(), 30) == "unknown"
    world.pingan.set_knobs(outage=False, malformed="html")
    assert (await world.registry.refresh(PLATE, VIN, force=True)).verdict == "unknown"
    world.pingan.set_knobs(malformed="off")
    lapsed = await world.registry.refresh(PLATE, VIN, force=True)
    assert lapsed.verdict == "lapsed" and not lapsed.failures
    # The national platform down, a minute later: unknown, with the last good answer's age.
    for s in (world.national, world.picc, world.pingan, world.thirdparty):
        s.set_knobs(outage=True)
    world.clock.advance(60)
    dark = await world.registry.refresh(PLATE, VIN, force=True)
    assert dark.verdict == "unknown" and dark.last_good_age_s == 60
    assert world.registry.counters["national.unavailable"] == 1


async def test_the_third_party_only_when_others_are_down(world: World) -> None:
    world.picc.issue_policy(PLATE, VIN, OLD[0])
    world.clock.advance(7200)
    world.national.set_knobs(outage=True)
    world.picc.set_knobs(outage=True)
    result = await world.registry.refresh(PLATE, VIN)
    assert result.verdict == "unconfirmed"
    assert result.current is not None and result.current.source == "thirdparty"
    record = result.record("v1")
    assert record is not None and status_of(record, world.clock.now(), 30) == "active"


def test_a_term_that_starts_on_payment_is_pending_until_that_instant() -> None:
    """Bought after a lapse from an insurer that starts cover on payment (10:32 UTC, 18:32
    in China): uninsured until then, covered from then, on the same China day."""
    at = datetime(2026, 11, 25, 10, 32, tzinfo=UTC)
    paid = replace(pol("5", "PINGAN", (date(2026, 11, 25), date(2027, 11, 24))), starts_at=at)
    outcomes = [ans("national", P_ENDED, paid), ans("PICC", P_ENDED), ans("PINGAN", paid)]
    before = aggregate(outcomes, at - timedelta(minutes=1))
    assert before.current is not None and before.current.policy == paid
    record = before.record("vaaaaaaaaaaaaaaa1")
    assert record is not None and record.starts_at == at and record.override is None
    assert status_of(record, at - timedelta(seconds=1), 30) == "pending"
    assert status_of(record, at, 30) == "active"
    after = aggregate(outcomes, at + timedelta(minutes=1))
    assert after.current is not None and after.current.policy == paid
    assert after.verdict == "confirmed"
