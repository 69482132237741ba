"""The fleet operator's vehicle API: tenant isolation, filters, paging, CSV, detail."""

import csv
import io
import sqlite3
from datetime import date, timedelta

from agent.protocol import calendar
from cloud.handler import VehicleState
from cloud.policy import PolicyRecord

from .conftest import ADMIN_TOKEN, Api

DAYS_LEFT = (200, 20, 5, -3)
"""The policies of fleet A's four cars: covered, expiring (2), lapsed."""


async def seed(api: Api) -> tuple[str, str, list[str], str, str]:
    """Fleet A with four cars (policies by DAYS_LEFT, the first seen just now) and fleet B
    with one car; (A id, A token, A vids, B token, B vid)."""
    a_id, a_token = await api.fleet("fleet A")
    b_id, b_token = await api.fleet("fleet B")
    vids = [(await api.enrolled((a_id, a_token)))[0] for _ in DAYS_LEFT]
    b_vid, _ = await api.enrolled((b_id, b_token))
    now = api.clock.now()
    today = calendar.china_date(now)
    for vid, days in zip(vids, DAYS_LEFT, strict=True):
        end = today + timedelta(days=days)
        await api.store.put_policy(PolicyRecord(
            vid=vid, insurer_code="PICC", insurer_name="PICC", policy_no_masked="PDZA****0001",
            coverage_start=end - timedelta(days=364), coverage_end=end, source="national",
            verified_at=now - timedelta(hours=2),
        ))  # fmt: skip
    seen = VehicleState(kid="k", key=None, last_seq=3, last_seen=now)  # type: ignore[arg-type]
    await api.store.save_counters([seen.row(vids[0])])
    for i, vid in enumerate(vids):  # personal data the API must never show in clear
        await api.store.set_plate(vid, f"沪A1234{i}")
    with sqlite3.connect(api.config.db_path) as db:
        db.execute("UPDATE vehicles SET vin = 'LSGCAR00000000001' WHERE vid = ?", (vids[0],))
    return a_id, a_token, vids, b_token, b_vid


async def test_an_operator_sees_only_its_own_fleet(api: Api) -> None:
    a_id, a_token, vids, b_token, b_vid = await seed(api)
    got = await api.client.get(f"/v1/fleets/{a_id}/vehicles", headers=api.auth(a_token))
    assert got.status_code == 200
    body = got.json()
    assert [v["vid"] for v in body["vehicles"]] == sorted(vids) and b_vid not in got.text
    assert body["total"] == 4
    assert body["counts"] == {"active": 1, "expiring": 2, "lapsed": 1}
    # Fleet B's operator: refused on A's list, A's vehicle, A's CSV.
    for path in (f"/v1/fleets/{a_id}/vehicles", f"/v1/fleets/{a_id}/vehicles/{vids[0]}",
                 f"/v1/fleets/{a_id}/vehicles.csv"):  # fmt: skip
        other = await api.client.get(path, headers=api.auth(b_token))
        assert (other.status_code, other.json()["error"]["code"]) == (403, "forbidden"), path
    # B's vehicle asked under A's fleet: not found (no hint that it exists).
    hidden = await api.client.get(f"/v1/fleets/{a_id}/vehicles/{b_vid}", headers=api.auth(a_token))
    assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "vehicle_unknown")
    none = await api.client.get(f"/v1/fleets/{a_id}/vehicles")
    assert none.status_code == 401
    admin = await api.client.get(f"/v1/fleets/{a_id}/vehicles", headers=api.auth(ADMIN_TOKEN))
    assert admin.status_code == 200 and admin.json()["total"] == 4


async def test_filters_paging_and_the_three_truths(api: Api) -> None:
    a_id, a_token, vids, _, _ = await seed(api)
    by_days = dict(zip(vids, DAYS_LEFT, strict=True))

    async def listed(**params: object) -> list[str]:
        r = await api.client.get(f"/v1/fleets/{a_id}/vehicles", params=params,
                                 headers=api.auth(a_token))  # fmt: skip
        assert r.status_code == 200, r.text
        return [v["vid"] for v in r.json()["vehicles"]]

    assert await listed(status="lapsed") == [v for v in vids if by_days[v] < 0]
    assert sorted(await listed(status=["active", "lapsed"])) == sorted(
        v for v in vids if by_days[v] in (200, -3)
    )
    assert sorted(await listed(expires_within_days=7)) == [v for v in vids if by_days[v] == 5]
    assert sorted(await listed(expires_within_days=30)) == sorted(
        v for v in vids if 0 <= by_days[v] <= 30
    )
    assert await listed(link="online") == [vids[0]]
    assert sorted(await listed(link="unknown")) == sorted(vids[1:])
    first = await api.client.get(f"/v1/fleets/{a_id}/vehicles", params={"limit": 3},
                                 headers=api.auth(a_token))  # fmt: skip
    page1 = first.json()
    assert len(page1["vehicles"]) == 3 and page1["next"] == page1["vehicles"][-1]["vid"]
    rest = await listed(limit=3, after=page1["next"])
    assert [v["vid"] for v in page1["vehicles"]] + rest == sorted(vids)
    detail = await api.client.get(f"/v1/fleets/{a_id}/vehicles/{vids[0]}",
                                  headers=api.auth(a_token))  # fmt: skip
    v = detail.json()["vehicle"]
    assert (v["status"], v["link"], v["days_left"]) == ("active", "online", 200)
    assert 7000 <= v["data_age_s"] <= 7300 and detail.json()["renewals"] == []


async def test_bad_queries_get_typed_errors(api: Api) -> None:
    a_id, a_token, _, _, _ = await seed(api)
    for params in ({"status": "covered"}, {"expires_within_days": -1}, {"link": "maybe"},
                   {"limit": 0}, {"after": "not-a-vid"}):  # fmt: skip
        r = await api.client.get(f"/v1/fleets/{a_id}/vehicles", params=params,
                                 headers=api.auth(a_token))  # fmt: skip
        assert r.status_code == 422, params
    unknown = await api.client.get("/v1/fleets/fl_nope/vehicles", headers=api.auth(ADMIN_TOKEN))
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "fleet_unknown")


async def test_csv_export_has_every_vehicle_and_no_vin_or_plate(api: Api) -> None:
    a_id, a_token, vids, _, _ = await seed(api)
    r = await api.client.get(f"/v1/fleets/{a_id}/vehicles.csv", headers=api.auth(a_token))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["vid"] for row in rows) == sorted(vids)
    assert set(rows[0]) >= {"vid", "status", "coverage_end", "days_left", "link", "last_seen"}
    ends = {row["vid"]: date.fromisoformat(row["coverage_end"]) for row in rows}
    assert len(ends) == 4
    listed = await api.client.get(f"/v1/fleets/{a_id}/vehicles", headers=api.auth(a_token))
    detail = await api.client.get(f"/v1/fleets/{a_id}/vehicles/{vids[0]}",
                                  headers=api.auth(a_token))  # fmt: skip
    for text in (r.text, listed.text, detail.text):
        assert "LSGCAR" not in text and "沪A1234" not in text
