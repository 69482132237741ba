"""The store under the HTTP API: concurrent enrollments with one claim enroll once.

The Store's own tests run against SQLite and PostgreSQL alike in tests/store/.
"""

import asyncio

from agent.protocol.keys import generate_private_key

from .conftest import Api, within


async def test_concurrent_enrollments_with_one_claim_enroll_once(api: Api) -> None:
    fleet_id, token = await api.fleet()
    [claim] = await api.claims(fleet_id, token)
    answers = await within(
        asyncio.gather(*(api.enroll(claim, generate_private_key()) for _ in range(5)))
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409, 409]
    assert await api.vehicles() == 1
    assert len(api.events.registered) == 1
