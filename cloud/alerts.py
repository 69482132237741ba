"""Fleet alerts: what an operator must hear about, derived from fleet state. Pure.

``derive`` turns the fleet's vehicle summaries, the cars' recent ``vehicle.event``
intents and the set of vehicles with an open renewal into ``AlertRow``s:

- ``lapsed_while_driving``: the car reported driving without cover (one per event);
- ``pending_while_driving``: the car reported driving before its new term starts
  (待生效: uninsured until then; one per event);
- ``vin_mismatch``: the car reported that the bus VIN is not the enrolled one (one per event);
- ``expiring_no_renewal``: 0..7 days left, no next term, no open renewal (one per term);
- ``offline_and_expiring``: link offline or never seen, 7 days left or fewer (lapsed
  included), no next term (one per term).

Every alert id is a digest of (kind, vid, dedup key), so each worker process derives the
same id for the same fact; the store keeps the first copy. Details never carry a VIN,
plate or clear policy number. ``retry_delay_s`` is the webhook retry schedule.
"""

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final, Literal

from agent.protocol import messages
from agent.protocol.errors import ProtocolError
from agent.protocol.messages import VehicleEvent

from .fleet_view import VehicleSummary
from .handler import IntentRow
from .store import AlertRow

AlertKind = Literal[
    "lapsed_while_driving",
    "pending_while_driving",
    "expiring_no_renewal",
    "offline_and_expiring",
    "vin_mismatch",
]
KINDS: Final[tuple[AlertKind, ...]] = (
    "lapsed_while_driving",
    "pending_while_driving",
    "expiring_no_renewal",
    "offline_and_expiring",
    "vin_mismatch",
)
ALERT_WITHIN_DAYS: Final = 7
"""Days left at or below which an unrenewed term raises an alert."""
EVENT_KINDS: Final = frozenset({"lapsed_while_driving", "pending_while_driving", "vin_mismatch"})

FleetEvent = tuple[str, VehicleEvent, str]
"""(vid, the car's vehicle.event, its intent_id)."""


_SAFE_DETAIL: Final = re.compile(r"[A-Za-z0-9_:.\-]{1,64}")
_VIN_LIKE: Final = re.compile(r"[A-Za-z0-9]{17}")


def safe_detail(text: str | None) -> str | None:
    """A car's event detail as screens may show it: short plain tokens (``d15:accept``)
    pass; anything else (which might hold a VIN or a plate) becomes ``[redacted]``."""
    if text is None:
        return None
    if _SAFE_DETAIL.fullmatch(text) is None or _VIN_LIKE.search(text) is not None:
        return "[redacted]"
    return text


def decode_events(rows: Iterable[IntentRow]) -> list[FleetEvent]:
    """The ``vehicle.event`` intents among ``rows``, decoded; undecodable ones skipped."""
    out: list[FleetEvent] = []
    for row in rows:
        if row.type != "vehicle.event":
            continue
        try:
            body = messages.decode(row.body)
        except ProtocolError:
            continue
        if isinstance(body, VehicleEvent):
            out.append((row.vid, body, row.intent_id))
    return out


def alert_id(kind: str, vid: str, key: str) -> str:
    """The deterministic id of the alert of ``kind`` for ``vid`` deduplicated by ``key``."""
    return hashlib.sha256(f"{kind}|{vid}|{key}".encode()).hexdigest()[:32]


def _detail(**fields: object) -> str:
    plain = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in fields.items()}
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)


def _row(fleet_id: str, kind: str, vid: str, key: str, now: datetime, detail: str) -> AlertRow:
    return AlertRow(
        alert_id=alert_id(kind, vid, key),
        fleet_id=fleet_id,
        vid=vid,
        kind=kind,
        raised_at=now,
        detail=detail,
    )


def needs_renewal(v: VehicleSummary) -> bool:
    """Whether ``v``'s term ends within ALERT_WITHIN_DAYS (or has) with nothing bought after."""
    return (
        v.status != "revoked"
        and v.days_left is not None
        and v.days_left <= ALERT_WITHIN_DAYS
        and v.next_coverage_end is None
    )


def derive(
    fleet_id: str,
    summaries: Sequence[VehicleSummary],
    events: Iterable[FleetEvent],
    open_renewal_vids: set[str] | frozenset[str],
    now: datetime,
) -> list[AlertRow]:
    """Every alert the given state calls for (the store drops the ones it already has).

    A vehicle whose status is ``renewal_pending`` counts as being renewed, like one with
    an open renewal flow.
    """
    out: list[AlertRow] = []
    by_vid = {v.vid: v for v in summaries}
    for vid, event, intent_id in events:
        if event.event not in EVENT_KINDS:
            continue
        v = by_vid.get(vid)
        detail = _detail(
            event_at=event.at,
            status=None if v is None else v.status,
            coverage_end=None if v is None or v.coverage_end is None else v.coverage_end,
            **({} if v is None or v.starts_at is None else {"starts_at": v.starts_at}),
        )
        out.append(_row(fleet_id, event.event, vid, intent_id, now, detail))
    for v in summaries:
        if not needs_renewal(v) or v.coverage_end is None or v.days_left is None:
            continue
        key = v.coverage_end.isoformat()
        renewing = v.vid in open_renewal_vids or v.status == "renewal_pending"
        if v.days_left >= 0 and not renewing:
            detail = _detail(coverage_end=key, days_left=v.days_left, insurer_code=v.insurer_code)
            out.append(_row(fleet_id, "expiring_no_renewal", v.vid, key, now, detail))
        if v.link != "online":
            detail = _detail(
                coverage_end=key, days_left=v.days_left, link=v.link, last_seen=v.last_seen
            )
            out.append(_row(fleet_id, "offline_and_expiring", v.vid, key, now, detail))
    return out


def _what(a: AlertRow) -> dict[str, object]:
    """What an alert says (``detail`` parsed), without its delivery state."""
    return {
        "alert_id": a.alert_id,
        "fleet_id": a.fleet_id,
        "vid": a.vid,
        "kind": a.kind,
        "raised_at": a.raised_at.isoformat(),
        "detail": json.loads(a.detail),
    }


def to_json(a: AlertRow) -> dict[str, object]:
    """The alert as the API and the dashboard show it, with its delivery state."""
    return _what(a) | {
        "delivered": a.delivered_at is not None,
        "attempts": a.attempts,
        "gave_up": a.gave_up,
    }


def webhook_body(a: AlertRow) -> bytes:
    """The exact bytes POSTed to the fleet's webhook (and signed)."""
    return json.dumps(_what(a), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def retry_delay_s(attempts: int, base_s: float, cap_s: float, u: float) -> float:
    """Full-jitter backoff after ``attempts`` failed tries: ``u`` (0..1) of
    ``min(cap_s, base_s * 2**(attempts - 1))``."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, min(attempts - 1, 62)))
    return max(0.0, min(1.0, u)) * ceiling
