"""The fleet's live stream (pure diff, then over HTTPS), operator actions, vehicle detail."""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud import fleet_events as fe
from cloud.errors import Refused
from cloud.fleet_api import operator_intent_id
from cloud.pki import DevPki
from cloud.registrar import NoEvents
from cloud.store import AlertRow

from .conftest import ADMIN_TOKEN, Api
from .fleet_support import FleetEvents, car_event, policy, seed_fleet, serving_fleet


@pytest.fixture
async def api(shared_pki: DevPki, tmp_path: Path) -> AsyncIterator[Api]:
    async with serving_fleet(shared_pki, tmp_path) as running:
        yield running


def vehicle(vid: str, status: str = "active", age: float = 10.0) -> dict[str, Any]:
    return {"vid": vid, "status": status, "days_left": 40, "data_age_s": age}


def alert(alert_id: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "kind": "vin_mismatch", "vid": "v1"}


# ---- the pure diff --------------------------------------------------------------


def test_diff_sends_what_changed_and_nothing_for_the_clock_alone() -> None:
    old = fe.snapshot([vehicle("v1"), vehicle("v2")], {"active": 2}, [alert("a1")])
    aged = fe.snapshot([vehicle("v1", age=99.0), vehicle("v2", age=99.0)], {"active": 2},
                       [alert("a1")])  # fmt: skip
    assert fe.diff(old, aged) == []
    new = fe.snapshot(
        [vehicle("v1", "lapsed"), vehicle("v3")],
        {"active": 1, "lapsed": 1},
        [alert("a3"), alert("a2"), alert("a1")],
    )
    assert fe.diff(old, new) == [
        ("vehicle", vehicle("v1", "lapsed")),
        ("vehicle", vehicle("v3")),
        ("vehicle", {"vid": "v2", "removed": True}),
        ("counts", {"active": 1, "lapsed": 1}),
        ("alert", alert("a2")),  # oldest first
        ("alert", alert("a3")),
    ]
    name, data = fe.first(new)
    assert name == "snapshot" and [v["vid"] for v in data["vehicles"]] == ["v1", "v3"]


def test_frames_are_one_line_of_json_each() -> None:
    frame = fe.frame("vehicle", {"vid": "v1", "note": "line\nbreak 中"})
    assert frame.startswith(b"event: vehicle\ndata: {") and frame.endswith(b"}\n\n")
    assert frame.count(b"\n") == 3 and "中".encode() in frame


async def test_the_stream_sends_the_snapshot_then_changes_then_keep_alives() -> None:
    snaps = [
        fe.snapshot([vehicle("v1")], {"active": 1}, []),
        fe.snapshot([vehicle("v1", "expiring")], {"expiring": 1}, []),
        fe.snapshot([vehicle("v1", "expiring")], {"expiring": 1}, []),
    ]

    async def read() -> fe.Snapshot:
        return snaps.pop(0) if len(snaps) > 1 else snaps[0]

    chunks = []
    async with asyncio.timeout(10):
        async for chunk in fe.stream(read, interval_s=0.0, keepalive_s=0.0):
            chunks.append(chunk)
            if len(chunks) == 3:
                break
    assert chunks[0].startswith(b"event: snapshot\n")
    assert chunks[1].startswith(b"event: vehicle\n") and b"event: counts\n" in chunks[1]
    assert chunks[2] == fe.KEEPALIVE_FRAME


# ---- the stream over HTTPS ------------------------------------------------------


class Events:
    """An SSE reader over an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()
        self.comments = 0

    async def next(self) -> tuple[str, dict[str, Any]]:
        name, data = "message", ""
        async with asyncio.timeout(10):
            async for line in self.lines:
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
                elif line == "" and data:
                    return name, json.loads(data)
        raise AssertionError("the stream ended")

    async def until(self, name: str, match: Any) -> dict[str, Any]:
        """The next event ``name`` whose data satisfies ``match`` (others skipped)."""
        while True:
            got, data = await self.next()
            if got == name and match(data):
                return data


async def test_the_live_stream_shows_the_fleet_then_its_changes(api: Api) -> None:
    s = await seed_fleet(api)
    url = f"/v1/fleets/{s.fleet_id}/events"
    async with api.client.stream("GET", url, headers=api.auth(s.token)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = Events(r)
        name, snap = await events.next()
        assert name == "snapshot"
        assert sorted(v["vid"] for v in snap["vehicles"]) == sorted(s.vids.values())
        assert snap["counts"] == {"active": 1, "expiring": 2, "lapsed": 1, "unknown": 1}
        assert s.other_vid not in json.dumps(snap)
        # Another process changes the store: the active car's policy lapses.
        await policy(api, s.vids["active"], -1)
        changed = await events.until("vehicle", lambda v: v["vid"] == s.vids["active"])
        assert changed["status"] == "lapsed" and changed["days_left"] == -1
        counts = await events.until("counts", lambda c: True)
        assert counts == {"expiring": 2, "lapsed": 2, "unknown": 1}
        row = AlertRow("f" * 32, s.fleet_id, s.vids["soon"], "expiring_no_renewal",
                       api.clock.now(), json.dumps({"days_left": 5}))  # fmt: skip
        await api.store.add_alerts([row])
        got = await events.until("alert", lambda a: True)
        assert (got["alert_id"], got["detail"]) == ("f" * 32, {"days_left": 5})
        await policy(api, s.vids["expiring"], 2)
        moved = await events.until("vehicle", lambda v: v["vid"] == s.vids["expiring"])
        assert moved["days_left"] == 2
    assert api.counters["fleet_streams"] == 1


async def test_the_stream_is_refused_like_the_list(api: Api) -> None:
    s = await seed_fleet(api)
    url = f"/v1/fleets/{s.fleet_id}/events"
    for headers, status in (({}, 401), (api.auth(s.other_token), 403)):
        r = await api.client.get(url, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] in ("unauthorized",
                                                                         "forbidden")  # fmt: skip
    r = await api.client.get("/v1/fleets/fnosuchfleet2345a/events", headers=api.auth(ADMIN_TOKEN))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "fleet_unknown")


async def test_keep_alives_flow_while_nothing_changes(api: Api) -> None:
    s = await seed_fleet(api)
    async with api.client.stream(
        "GET", f"/v1/fleets/{s.fleet_id}/events", headers=api.auth(s.token)
    ) as r:
        events = Events(r)
        assert (await events.next())[0] == "snapshot"
        with pytest.raises(TimeoutError):  # nothing changes: no event within 2.5 s ...
            async with asyncio.timeout(2.5):
                await events.next()
        assert events.comments >= 2  # ... but a keep-alive every second (this server's pace)


# ---- operator actions -----------------------------------------------------------


async def test_refresh_asks_the_worker_for_the_fleets_own_vehicle_only(api: Api) -> None:
    s = await seed_fleet(api)
    events: FleetEvents = api.events  # type: ignore[assignment]
    vid = s.vids["soon"]
    r = await api.client.post(f"/v1/fleets/{s.fleet_id}/vehicles/{vid}/refresh",
                              headers=api.auth(s.token))  # fmt: skip
    assert (r.status_code, r.json()) == (202, {"vid": vid, "outcome": "updated"})
    other = await api.client.post(f"/v1/fleets/{s.fleet_id}/vehicles/{s.other_vid}/refresh",
                                  headers=api.auth(s.token))  # fmt: skip
    assert (other.status_code, other.json()["error"]["code"]) == (404, "vehicle_unknown")
    theirs = await api.client.post(f"/v1/fleets/{s.fleet_id}/vehicles/{vid}/refresh",
                                   headers=api.auth(s.other_token))  # fmt: skip
    assert theirs.status_code == 403
    assert events.refreshed == [vid]
    assert api.counters["fleet_refresh"] == 1


async def test_bulk_renewal_is_idempotent_by_key_and_reports_each_vehicle(api: Api) -> None:
    s = await seed_fleet(api)
    events: FleetEvents = api.events  # type: ignore[assignment]
    url = f"/v1/fleets/{s.fleet_id}/renewals"
    vids = [s.vids["soon"], s.vids["lapsed"], s.other_vid, "not-a-vid", s.vids["soon"]]

    async def renew(key: str | None, body: Any) -> httpx.Response:
        headers = api.auth(s.token) | ({} if key is None else {"Idempotency-Key": key})
        return await api.client.post(url, json=body, headers=headers)

    r = await renew("key-0001", {"vids": vids})
    assert r.status_code == 202, r.text
    assert r.json()["results"] == [
        {"vid": s.vids["soon"], "outcome": "started"},
        {"vid": s.vids["lapsed"], "outcome": "started"},
        {"vid": s.other_vid, "outcome": "vehicle_unknown"},
        {"vid": "not-a-vid", "outcome": "vehicle_unknown"},
    ]
    assert sorted(events.renewals.values()) == sorted([s.vids["soon"], s.vids["lapsed"]])
    expected_id = operator_intent_id(s.fleet_id, "key-0001", s.vids["soon"])
    assert events.renewals[expected_id] == s.vids["soon"] and len(expected_id) == 32
    again = await renew("key-0001", {"vids": [s.vids["soon"], s.vids["lapsed"]]})
    assert [x["outcome"] for x in again.json()["results"]] == ["already_started"] * 2
    assert len(events.renewals) == 2
    fresh = await renew("key-0002", {"vids": [s.vids["soon"]]})
    assert fresh.json()["results"][0]["outcome"] == "started" and len(events.renewals) == 3
    for key, body, code in (
        (None, {"vids": [s.vids["soon"]]}, "bad_idempotency_key"),
        ("short", {"vids": [s.vids["soon"]]}, "bad_idempotency_key"),
        ("bad key with spaces", {"vids": [s.vids["soon"]]}, "bad_idempotency_key"),
        ("key-0003", {"vids": []}, "bad_request"),
        ("key-0003", {"vids": ["v1234567"] * 501}, "bad_request"),
        ("key-0003", {"vids": [s.vids["soon"]], "extra": 1}, "bad_request"),
    ):
        bad = await renew(key, body)
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, code), (key, body)
    assert len(events.renewals) == 3
    assert api.counters["rejected.bad_idempotency_key"] == 3


async def test_without_a_worker_the_actions_are_not_ready() -> None:
    for call in (NoEvents().force_refresh("v1234567"),
                 NoEvents().operator_renewal("v1234567", "0" * 32)):  # fmt: skip
        with pytest.raises(Refused) as caught:
            await call
        assert (caught.value.status, caught.value.code) == (503, "not_ready")


# ---- vehicle detail -------------------------------------------------------------


async def test_detail_shows_the_cars_events_and_both_terms_masked(api: Api) -> None:
    s = await seed_fleet(api)
    vid = s.vids["soon"]
    record = await policy(api, vid, 5)
    end = record.coverage_end
    await api.store.put_policy(
        replace(
            record,
            next_insurer_code="PAIC",
            next_insurer_name="Ping An",
            next_policy_no_masked="PAIC****0042",
            next_end=end + timedelta(days=365),
        )
    )
    await car_event(api, vid, "prompt_shown", "1" * 32, seq=20, detail="d15")
    api.clock.advance(1)
    await car_event(api, vid, "prompt_answered", "2" * 32, seq=21, detail="d15:renew")
    api.clock.advance(1)
    await car_event(api, vid, "vin_mismatch", "3" * 32, seq=22, detail="LSGCAR00000000001")
    r = await api.client.get(f"/v1/fleets/{s.fleet_id}/vehicles/{vid}", headers=api.auth(s.token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(e["event"], e["detail"]) for e in body["events"]] == [
        ("vin_mismatch", "[redacted]"),
        ("prompt_answered", "d15:renew"),
        ("prompt_shown", "d15"),
    ]
    assert datetime.fromisoformat(body["events"][0]["at"]).tzinfo is not None
    p = body["policy"]
    assert (p["insurer_code"], p["policy_no_masked"], p["coverage_end"]) == (
        "PICC", "PDZA****0001", end.isoformat())  # fmt: skip
    assert p["source"] == "national" and p["verified_at"]
    assert p["next"]["insurer_code"] == "PAIC" and p["next"]["policy_no_masked"] == "PAIC****0042"
    assert p["next"]["coverage_start"] == (end + timedelta(days=1)).isoformat()
    assert "LSGCAR" not in r.text
    nothing = await api.client.get(f"/v1/fleets/{s.fleet_id}/vehicles/{s.vids['unknown']}",
                                   headers=api.auth(s.token))  # fmt: skip
    assert nothing.json()["policy"] is None and nothing.json()["events"] == []


# ---- the dashboard page ---------------------------------------------------------


async def test_the_dashboard_is_self_contained_and_pinned_by_its_csp(api: Api) -> None:
    r = await api.client.get("/fleet")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and csp.count("'sha256-") == 2
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    # Nothing fetched from elsewhere: no absolute URL in the document.
    assert "http://" not in r.text and "https://" not in r.text and "//fonts" not in r.text
    assert r.text.count("<script>") == 1 and r.text.count("<style>") == 1
