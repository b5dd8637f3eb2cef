"""64 concurrent requests on a nearly exhausted token: no overspend, one log per request, and the
sum of logged quota equals the decrease of the balances."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_relay_basic import CHAT, balances
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.db.models.log import LOG_CONSUME

pytestmark = pytest.mark.db


async def test_concurrent_requests_on_a_nearly_exhausted_token(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db, quota=1_000_000)
    token_id, key = await create_token(db, user_id, unlimited=False, remain_quota=2_000)
    await create_channel(db, upstream.base_url)
    live.refresh()
    upstream.configure(prompt_tokens=1000, completion_tokens=500, ttft=0.02)  # costs 225 per answer
    body = {**CHAT, "max_tokens": 3000}  # reserves (prompt + 3000) × 0.075 ≥ 225

    async def call() -> int:
        response = await live.client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        return response.status_code

    statuses = await asyncio.gather(*(call() for _ in range(64)))
    successes = statuses.count(200)
    assert set(statuses) <= {200, 403, 401}
    assert 1 <= successes <= 2000 // 225

    logs = await live.logs()
    assert len(logs) == 64  # one per request: consume for answers, error for refusals
    consumed = [log for log in logs if log.type == LOG_CONSUME]
    assert len(consumed) == successes == upstream.count("/v1/chat/completions")
    assert {log.quota for log in consumed} == {225}
    user_quota, user_used, token_remaining, token_used = await balances(live, user_id, token_id)
    logged = sum(log.quota for log in consumed)
    assert token_remaining >= 0
    assert 2_000 - token_remaining == logged == token_used
    assert 1_000_000 - user_quota == logged == user_used
