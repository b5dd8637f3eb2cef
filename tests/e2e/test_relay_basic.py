"""The relay end to end over real HTTP: a live Tollway in front of fake upstreams."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import select

from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.db.models import Token, User
from tollway.db.models.log import LOG_CONSUME

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}

pytestmark = pytest.mark.db


async def balances(live: Live, user_id: int, token_id: int) -> tuple[int, int, int, int]:
    """(user quota, user used, token remaining, token used) as the database holds them plus leases."""
    await live.runtime.relay.writer.flush()
    await live.runtime.relay.balances.return_idle(now=float("inf"))
    async with live.runtime.db.session() as session:
        user = await session.get(User, user_id)
        token = await session.get(Token, token_id)
        assert user is not None and token is not None
        await session.refresh(user)
        await session.refresh(token)
        return user.quota, user.used_quota, token.remain_quota, token.used_quota


async def test_chat_completion_is_relayed_charged_and_logged(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db, quota=1_000_000)
    token_id, key = await create_token(db, user_id, unlimited=False, remain_quota=500_000)
    channel_id = await create_channel(db, upstream.base_url)
    live.refresh()
    upstream.configure(prompt_tokens=1000, completion_tokens=500)

    response = await live.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    assert response.headers["x-oneapi-request-id"]
    assert upstream.last.headers["authorization"] == "Bearer sk-upstream-key"
    assert upstream.last.json == CHAT

    logs = await live.logs()
    assert len(logs) == 1
    log = logs[0]
    # gpt-4o-mini: ratio 0.075, completion ratio 4 → (1000 + 500 × 4) × 0.075 = 225
    assert (log.type, log.quota, log.prompt_tokens, log.completion_tokens) == (LOG_CONSUME, 225, 1000, 500)
    assert (log.user_id, log.token_id, log.channel_id, log.model_name) == (
        user_id,
        token_id,
        channel_id,
        "gpt-4o-mini",
    )
    assert log.request_id == response.headers["x-oneapi-request-id"]
    other = orjson.loads(log.other)
    assert other["admin_info"]["use_channel"] == [str(channel_id)]
    assert other["model_ratio"] == 0.075 and other["completion_ratio"] == 4

    assert await balances(live, user_id, token_id) == (1_000_000 - 225, 225, 500_000 - 225, 225)
    async with db.session() as session:
        user = await session.scalar(select(User).where(User.id == user_id))
        assert user is not None and user.request_count == 1
