"""The simulated national platform (authoritative, but late) and third-party platforms.

Insurers ``report`` every policy they issue or cancel; the platform shows a report only
once ``lag_s`` (a knob, read at answer time) has passed since it was made. Seeded
policies (``add_policy``) are known at once. For one policy number the latest visible
report wins, so a cancellation replaces the policy it cancels.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agent.protocol.clock import Clock

from .common import Knobs, Policy, SimService


@dataclass(frozen=True, slots=True)
class _Report:
    policy: Policy
    reported_at: datetime | None
    """None: seeded, visible at once."""


class NationalPlatform(SimService):
    """``GET /v1/policies`` over everything insurers reported, ``lag_s`` late."""

    def __init__(
        self,
        *,
        source: str = "national",
        lag_s: float | None = None,
        knobs: Knobs | Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        seed: int | None = None,
        port: int = 0,
    ) -> None:
        self.source = source
        super().__init__(knobs=knobs, clock=clock, seed=seed, port=port)
        if lag_s is not None:
            self.knobs.lag_s = lag_s
        self._reports: list[_Report] = []

    def add_policy(self, policy: Policy | Mapping[str, Any]) -> Policy:
        """Seed ``policy``: on record at once, whatever the lag."""
        p = policy if isinstance(policy, Policy) else Policy.model_validate(policy)
        self._reports.append(_Report(p, None))
        return p

    def report(self, policy: Policy, at: datetime | None = None) -> None:
        """An insurer's report of ``policy`` (issued or cancelled) made at ``at`` (now)."""
        self._reports.append(_Report(policy, at or self.clock.now()))

    def visible_policies(self, now: datetime) -> list[Policy]:
        lag = timedelta(seconds=self.knobs.lag_s)
        latest: dict[str, Policy] = {}
        for r in self._reports:
            if r.reported_at is None or r.reported_at + lag <= now:
                latest[r.policy.policy_no] = r.policy
        return list(latest.values())


class ThirdPartyPlatform(NationalPlatform):
    """A third-party platform: the same answer shape and lag, a lower trust."""

    def __init__(self, *, source: str = "thirdparty", **kw: Any) -> None:
        super().__init__(source=source, **kw)
