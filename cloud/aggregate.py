"""Which CTPL policy a vehicle has, from sources that disagree and lag. Pure: no I/O, no clock.

The input is one outcome per source: a ``SourceAnswer`` (its policies, its ``as_of``, when
we received it) or a ``SourceFailure`` (why, when, and when that source last answered
well). ``aggregate`` decides:

1. One term (policy number) seen by several sources: the most trusted source's version
   wins (national > insurer > third party); every sighting is kept as provenance.
2. An insurer speaks only for its own policies. A term that only a third party knows
   counts only when neither the national platform nor the term's insurer answered.
3. A cancelled term gives no cover.
4. The current term is the in-force term covering now (China time), else the earliest
   one yet to begin, else the latest one that ended. A later in-force term is the renewal.
5. The verdict, from the newest in-force term (the renewal, else the current one):

   ==============  ==========================================================================
   ``confirmed``   on the national platform's record
   ``renewed``     from its insurer; the national platform answered without it (it lags)
   ``unconfirmed`` the national platform did not answer (or only a third party knows it)
   ``lapsed``      cover ended, nothing follows, and the national platform and every insurer
                   answered
   ``none``        no in-force term at all, and the national platform and every insurer
                   answered
   ``unknown``     anything else: a source that failed might hold a renewal, so a failure
                   never makes ``lapsed``; ``last_good_at`` says how old the last good
                   answer is
   ==============  ==========================================================================

6. ``Aggregate.record`` is what the cloud stores and tells the car (docs/sources.md): a
   current term that has not begun is told as ``pending`` by its dates (uncovered until
   its start instant), one followed by a renewal as ``renewal_pending``.

``AggregateCache`` keeps the last result per vehicle for a TTL (shorter when a source
failed) and when each source last answered well.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Final, Literal

from agent.protocol import calendar

from .policy import Override, PolicyRecord, mask_plate, mask_policy_no

SourceKind = Literal["national", "insurer", "third_party"]
PolicyStatus = Literal["in_force", "cancelled"]
Verdict = Literal["confirmed", "renewed", "unconfirmed", "lapsed", "none", "unknown"]
TRUST: Final[dict[str, int]] = {"national": 0, "insurer": 1, "third_party": 2}
"""Lower is trusted more."""
CACHE_TTL_S: Final = 300.0
RETRY_AFTER_S: Final = 30.0
MAX_CACHED: Final = 100_000


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """One policy as a source states it, validated."""

    policy_no: str
    insurer_code: str
    insurer_name: str
    plate: str
    vin: str
    start: date
    end: date
    status: PolicyStatus
    issued_at: datetime
    starts_at: datetime | None = None
    """The exact instant cover begins when not 00:00 China time of ``start``."""


@dataclass(frozen=True, slots=True)
class SourceAnswer:
    """A source's usable answer: its policies for the vehicle (maybe none)."""

    source: str
    kind: SourceKind
    as_of: datetime
    received_at: datetime
    policies: tuple[SourcePolicy, ...] = ()

    @property
    def verified_at(self) -> datetime:
        """When the answer held: its ``as_of``, never later than we received it."""
        return min(self.as_of, self.received_at)


@dataclass(frozen=True, slots=True)
class SourceFailure:
    """A source that gave no usable answer (``reason`` as ``sources.SourceError``'s)."""

    source: str
    kind: SourceKind
    reason: str
    at: datetime
    last_good_at: datetime | None = None


Outcome = SourceAnswer | SourceFailure


@dataclass(frozen=True, slots=True)
class Sighting:
    """Provenance: ``source`` said the term is ``status``, as of ``verified_at``."""

    source: str
    kind: SourceKind
    status: PolicyStatus
    verified_at: datetime


@dataclass(frozen=True, slots=True)
class Term:
    """One policy term, in the version of the most trusted source that knows it."""

    policy: SourcePolicy
    source: str
    kind: SourceKind
    verified_at: datetime
    sightings: tuple[Sighting, ...]

    @property
    def on_national_record(self) -> bool:
        return any(s.kind == "national" for s in self.sightings)

    @property
    def from_insurer(self) -> bool:
        return any(s.kind == "insurer" for s in self.sightings)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The decision for one vehicle at ``decided_at``, with what every source said."""

    verdict: Verdict
    decided_at: datetime
    current: Term | None
    renewal: Term | None
    terms: tuple[Term, ...]
    outcomes: tuple[Outcome, ...]
    complete: bool
    """The national platform and every insurer answered (third parties may have failed)."""
    last_good_at: datetime | None
    """When a source last answered well for this vehicle (None: never)."""

    @property
    def last_good_age_s(self) -> float | None:
        if self.last_good_at is None:
            return None
        return (self.decided_at - self.last_good_at).total_seconds()

    @property
    def failures(self) -> tuple[SourceFailure, ...]:
        return tuple(o for o in self.outcomes if isinstance(o, SourceFailure))

    def record(self, vid: str) -> PolicyRecord | None:
        """The record to store for ``vid``; None when no term is known (``none``, or
        ``unknown`` with nothing to go on): the caller keeps what it had."""
        term = self.current
        if term is None:
            return None
        override: Override | None = None
        if self.verdict == "unknown":
            override = "unknown"
        elif self.verdict != "lapsed" and self.renewal is not None:
            override = "renewal_pending"
        p = term.policy
        return PolicyRecord(
            vid=vid,
            insurer_code=p.insurer_code,
            insurer_name=p.insurer_name,
            policy_no_masked=mask_policy_no(p.policy_no),
            coverage_start=p.start,
            coverage_end=p.end,
            source=term.source,
            verified_at=term.verified_at,
            override=override,
            plate_masked=mask_plate(p.plate),
            starts_at=p.starts_at,
        )


def _starts(p: SourcePolicy) -> datetime:
    return calendar.start_instant(p.start, p.starts_at)


def _ends(p: SourcePolicy) -> datetime:
    return calendar.coverage_end_instant(p.end)


def _merge(answers: Sequence[SourceAnswer]) -> list[Term]:
    """Group sightings by policy number; the most trusted, then freshest, version wins."""
    seen: dict[str, list[tuple[SourceAnswer, SourcePolicy]]] = {}
    for a in answers:
        for p in a.policies:
            if a.kind == "insurer" and p.insurer_code != a.source:
                continue  # an insurer speaks only for its own policies
            seen.setdefault(p.policy_no.strip().upper(), []).append((a, p))
    terms = []
    for group in seen.values():
        group.sort(key=lambda ap: (TRUST[ap[0].kind], -ap[0].verified_at.timestamp()))
        best_answer, best = group[0]
        sightings = tuple(Sighting(a.source, a.kind, p.status, a.verified_at) for a, p in group)
        terms.append(Term(best, best_answer.source, best_answer.kind, best_answer.verified_at,
                          sightings))  # fmt: skip
    return terms


def _credible(term: Term, answered: set[str], national_answered: bool) -> bool:
    """A third party alone is believed only when nobody who would know better answered."""
    if term.kind != "third_party":
        return True
    return not national_answered and term.policy.insurer_code not in answered


def _rank(term: Term) -> tuple[int, float]:
    return (TRUST[term.kind], -_ends(term.policy).timestamp())


def _pick(terms: Iterable[Term], now: datetime) -> tuple[Term | None, Term | None]:
    """(current, renewal) among in-force terms, by rule 4."""
    live = [t for t in terms if t.policy.status == "in_force"]
    covering = sorted((t for t in live if _starts(t.policy) <= now < _ends(t.policy)), key=_rank)
    future = sorted((t for t in live if now < _starts(t.policy)),
                    key=lambda t: (t.policy.start, _rank(t)))  # fmt: skip
    ended = sorted((t for t in live if _ends(t.policy) <= now),
                   key=lambda t: (-_ends(t.policy).timestamp(), _rank(t)))  # fmt: skip
    if covering:
        current = covering[0]
        later = [t for t in future if t.policy.end > current.policy.end]
        return current, (later[0] if later else None)
    if future:
        return future[0], None
    return (ended[0] if ended else None), None


def aggregate(outcomes: Sequence[Outcome], now: datetime) -> Aggregate:
    """Decide the vehicle's policy at ``now`` from every source's outcome (module docstring)."""
    answers = [o for o in outcomes if isinstance(o, SourceAnswer)]
    failures = [o for o in outcomes if isinstance(o, SourceFailure)]
    complete = not any(f.kind != "third_party" for f in failures)
    goods = [a.received_at for a in answers] + [
        f.last_good_at for f in failures if f.last_good_at is not None
    ]
    answered = {a.source for a in answers}
    national_answered = any(a.kind == "national" for a in answers)
    terms = [t for t in _merge(answers) if _credible(t, answered, national_answered)]
    terms.sort(key=lambda t: (t.policy.start, t.policy.policy_no), reverse=True)
    current, renewal = _pick(terms, now)
    verdict: Verdict
    if current is None:
        verdict = "none" if complete and answers else "unknown"
    elif _ends(current.policy) <= now:
        verdict = "lapsed" if complete else "unknown"
    else:
        newest = renewal or current
        if newest.on_national_record:
            verdict = "confirmed"
        elif national_answered and newest.from_insurer:
            verdict = "renewed"
        else:
            verdict = "unconfirmed"
    return Aggregate(
        verdict=verdict,
        decided_at=now,
        current=current,
        renewal=renewal,
        terms=tuple(terms),
        outcomes=tuple(outcomes),
        complete=complete,
        last_good_at=max(goods, default=None),
    )


@dataclass(slots=True)
class _Entry:
    result: Aggregate
    expires_at: datetime


@dataclass
class AggregateCache:
    """Results per vehicle key for ``ttl_s`` (``retry_after_s`` when a source failed),
    and when each source last answered well for it."""

    ttl_s: float = CACHE_TTL_S
    retry_after_s: float = RETRY_AFTER_S
    max_entries: int = MAX_CACHED
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _good: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def get(self, key: str, now: datetime) -> Aggregate | None:
        """The cached result for ``key`` while it is fresh, else None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires_at:
            return None
        return entry.result

    def put(self, key: str, result: Aggregate, now: datetime) -> None:
        """Hold ``result`` for ``key`` and note each source that answered."""
        full = result.complete and not result.failures
        ttl = self.ttl_s if full else min(self.ttl_s, self.retry_after_s)
        self._entries.pop(key, None)  # re-inserted last: the dict's order is the age order
        self._entries[key] = _Entry(result, now + timedelta(seconds=ttl))
        for o in result.outcomes:
            if isinstance(o, SourceAnswer):
                self._good.pop((key, o.source), None)
                self._good[(key, o.source)] = o.received_at
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        while len(self._good) > self.max_entries * 4:
            del self._good[next(iter(self._good))]

    def last_good_at(self, key: str, source: str) -> datetime | None:
        """When ``source`` last answered well for ``key``."""
        return self._good.get((key, source))

    def invalidate(self, key: str) -> None:
        """Forget the result for ``key`` (not when its sources last answered)."""
        self._entries.pop(key, None)
