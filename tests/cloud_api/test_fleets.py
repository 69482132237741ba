"""Fleets, operator tokens and claim tokens: who may do what."""

from .conftest import ADMIN_TOKEN, Api, within


async def test_admin_creates_a_fleet_with_an_operator_token(api: Api) -> None:
    fleet_id, token = await api.fleet("north depot")
    assert fleet_id.startswith("f") and len(fleet_id) == 17
    assert token.startswith("op_") and len(token) == 3 + 43
    stored = await within(api.store.fleet(fleet_id))
    assert stored is not None and stored.name == "north depot"
    assert token.encode() not in stored.operator_digest  # only the digest is kept
    assert len(stored.operator_digest) == 32


async def test_fleet_creation_needs_the_admin(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {'x' * 300}"},
    ):
        r = await api.client.post("/v1/fleets", json={"name": "x"}, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert await within(api.store.fleet_of_operator(b"")) is None


async def test_an_operator_cannot_create_fleets(api: Api) -> None:
    _, token = await api.fleet()
    r = await api.client.post("/v1/fleets", json={"name": "mine"}, headers=api.auth(token))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"


async def test_operator_mints_claims_for_its_fleet(api: Api) -> None:
    fleet_id, token = await api.fleet()
    r = await api.client.post(
        f"/v1/fleets/{fleet_id}/claims",
        json={"count": 5, "expires_in_s": 600},
        headers=api.auth(token),
    )
    assert r.status_code == 201, r.text
    claims = r.json()["claim_tokens"]
    assert len(set(claims)) == 5 and all(c.startswith("cl_") for c in claims)
    assert r.json()["expires_at"]
    assert api.counters["claims_minted"] == 5


async def test_operator_of_a_cannot_mint_for_b_but_the_admin_can(api: Api) -> None:
    a_id, a_token = await api.fleet("a")
    b_id, _ = await api.fleet("b")
    body = {"count": 1, "expires_in_s": 600}
    r = await api.client.post(f"/v1/fleets/{b_id}/claims", json=body, headers=api.auth(a_token))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert await api.claims(b_id, ADMIN_TOKEN)
    assert await api.claims(a_id, ADMIN_TOKEN)


BAD_CLAIM_REQUESTS: list[dict[str, object]] = [
    {"count": 0, "expires_in_s": 600},
    {"count": 1001, "expires_in_s": 600},
    {"count": 1, "expires_in_s": 59},
    {"count": 1, "expires_in_s": 7776001},
    {"count": "1", "expires_in_s": 600},
    {"count": 1.0, "expires_in_s": 600},
    {"count": True, "expires_in_s": 600},
    {"count": 1},
    {"count": 1, "expires_in_s": 600, "extra": 1},
]


async def test_claim_requests_are_validated_strictly(api: Api) -> None:
    fleet_id, token = await api.fleet()
    for body in BAD_CLAIM_REQUESTS:
        r = await api.client.post(
            f"/v1/fleets/{fleet_id}/claims", json=body, headers=api.auth(token)
        )
        assert (r.status_code, r.json()["error"]["code"]) == (422, "bad_request"), body
    assert api.counters["claims_minted"] == 0


HOSTILE_FLEET_IDS = [
    ("fabcdefghijklmnop", 404, "fleet_unknown"),
    ("%2B", 422, "fleet_id_invalid"),
    ("%23", 422, "fleet_id_invalid"),
    ("x" * 2000, 422, "fleet_id_invalid"),
    ("a%2Fb", 404, "not_found"),
    ("", 404, "not_found"),
    ("#", 404, "not_found"),
    ("+", 422, "fleet_id_invalid"),
]


async def test_admin_minting_for_a_missing_or_hostile_fleet_id(api: Api) -> None:
    for fleet_id, status, code in HOSTILE_FLEET_IDS:
        r = await api.client.post(
            f"/v1/fleets/{fleet_id}/claims",
            json={"count": 1, "expires_in_s": 600},
            headers=api.auth(ADMIN_TOKEN),
        )
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), fleet_id[:20]


async def test_an_operator_meets_forbidden_for_any_fleet_id_not_its_own(api: Api) -> None:
    _, token = await api.fleet()
    for fleet_id in ("fabcdefghijklmnop", "%2B", "x" * 300):
        r = await api.client.post(
            f"/v1/fleets/{fleet_id}/claims",
            json={"count": 1, "expires_in_s": 600},
            headers=api.auth(token),
        )
        assert (r.status_code, r.json()["error"]["code"]) == (403, "forbidden")


async def test_without_an_admin_token_configured_nobody_is_admin(api: Api) -> None:
    from cloud.api import create_app

    from .conftest import RecordingEvents

    config = api.config.model_copy(update={"admin_token": None})
    app = create_app(config, api.store, RecordingEvents())
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        r = await within(client.post("/v1/fleets", json={"name": "x"}, headers=api.auth("")))
        assert r.status_code == 401
        r = await within(
            client.post("/v1/fleets", json={"name": "x"}, headers=api.auth(ADMIN_TOKEN))
        )
        assert r.status_code == 401
