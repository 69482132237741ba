"""The fleet's live view as Server-Sent Events: snapshots of the store, diffed.

Several API processes share one store, so a stream never listens to in-process events:
it re-reads the fleet every ``interval_s`` and sends what changed since the snapshot it
sent last. ``diff`` is pure; ``stream`` is the loop, fed by a ``read`` callable.

Events: ``snapshot`` (on connect: counts, every vehicle, the newest alerts), ``vehicle``
(one summary that changed, or ``{"vid", "removed": true}``), ``counts`` (when they
change), ``alert`` (a new alert); a ``: keep-alive`` comment every ``keepalive_s``.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

EVENTS_INTERVAL_S: Final = 1.0
KEEPALIVE_S: Final = 15.0
VOLATILE: Final = frozenset({"data_age_s"})
"""Summary fields that change with the clock alone: not a change worth sending."""

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet as one read of the store saw it (vehicles and alerts as JSON objects)."""

    vehicles: Mapping[str, Json]
    counts: Mapping[str, int]
    alerts: tuple[Json, ...] = ()
    """Newest first."""
    alert_ids: frozenset[str] = field(default_factory=frozenset)


def snapshot(vehicles: list[Json], counts: Mapping[str, int], alerts: list[Json]) -> Snapshot:
    """A Snapshot of vehicle summaries (with ``vid``) and alerts (with ``alert_id``)."""
    return Snapshot(
        vehicles={v["vid"]: v for v in vehicles},
        counts=dict(counts),
        alerts=tuple(alerts),
        alert_ids=frozenset(a["alert_id"] for a in alerts),
    )


def _stable(v: Json) -> Json:
    return {k: x for k, x in v.items() if k not in VOLATILE}


def first(s: Snapshot) -> tuple[str, Json]:
    """The ``snapshot`` event that opens a stream."""
    return "snapshot", {
        "counts": dict(s.counts),
        "vehicles": list(s.vehicles.values()),
        "alerts": list(s.alerts),
    }


def diff(old: Snapshot, new: Snapshot) -> list[tuple[str, Json]]:
    """The events that take a client from ``old`` to ``new``: changed or removed vehicles
    (by vid), counts if they differ, then new alerts oldest first."""
    out: list[tuple[str, Json]] = []
    for vid, v in new.vehicles.items():
        before = old.vehicles.get(vid)
        if before is None or _stable(before) != _stable(v):
            out.append(("vehicle", v))
    out += [
        ("vehicle", {"vid": vid, "removed": True})
        for vid in old.vehicles
        if vid not in new.vehicles
    ]
    if dict(old.counts) != dict(new.counts):
        out.append(("counts", dict(new.counts)))
    fresh = [a for a in new.alerts if a["alert_id"] not in old.alert_ids]
    out += [("alert", a) for a in reversed(fresh)]
    return out


def frame(event: str, data: Json) -> bytes:
    """One SSE frame (a single ``data:`` line: the JSON has no newline)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {text}\n\n".encode()


KEEPALIVE_FRAME: Final = b": keep-alive\n\n"


async def stream(
    read: Callable[[], Awaitable[Snapshot]],
    *,
    interval_s: float = EVENTS_INTERVAL_S,
    keepalive_s: float = KEEPALIVE_S,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[bytes]:
    """The snapshot, then every ``interval_s`` the diff against the last snapshot sent,
    and a keep-alive comment when nothing was sent for ``keepalive_s``. Runs until the
    consumer stops iterating (the client went away)."""
    monotonic = clock or asyncio.get_running_loop().time
    sent = await read()
    name, data = first(sent)
    yield frame(name, data)
    last_write = monotonic()
    while True:
        await asyncio.sleep(interval_s)
        now_snap = await read()
        changes = diff(sent, now_snap)
        sent = now_snap
        if changes:
            yield b"".join(frame(n, d) for n, d in changes)
            last_write = monotonic()
        elif monotonic() - last_write >= keepalive_s:
            yield KEEPALIVE_FRAME
            last_write = monotonic()
