"""Failover, auto-disable, refunds and validation, against fake upstreams that fail on command."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_relay_basic import CHAT, balances
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.db.models import Channel
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR

pytestmark = pytest.mark.db


async def setup_two_channels(
    live: Live, first: FakeUpstream, second: FakeUpstream
) -> tuple[int, int, str, int, int]:
    db = live.runtime.db
    user_id = await create_user(db, quota=1_000_000)
    token_id, key = await create_token(db, user_id, unlimited=False, remain_quota=1_000_000)
    # The first channel has the higher priority, so it is always tried first.
    a = await create_channel(db, first.base_url, name="primary", priority=10)
    b = await create_channel(db, second.base_url, name="backup", priority=0)
    live.refresh()
    return user_id, token_id, key, a, b


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_failover_to_the_next_channel_is_logged_once(
    live: Live, upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    _user_id, _token_id, key, a, b = await setup_two_channels(live, upstream, upstream_b)
    upstream.set_mode("status_500")
    response = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert response.status_code == 200
    assert upstream.count("/v1/chat/completions") == 1 and upstream_b.count("/v1/chat/completions") == 1
    logs = await live.logs()
    assert [log.type for log in logs] == [LOG_CONSUME]
    assert orjson.loads(logs[0].other)["admin_info"]["use_channel"] == [str(a), str(b)]
    assert logs[0].channel_id == b


async def test_a_request_no_channel_answers_is_free_with_one_error_log(
    live: Live, upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    user_id, token_id, key, a, b = await setup_two_channels(live, upstream, upstream_b)
    before = await balances(live, user_id, token_id)
    upstream.set_mode("status_500")
    upstream_b.set_mode("status_500")
    response = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert response.status_code == 500
    error = response.json()["error"]
    assert "(request id: " in error["message"]
    logs = await live.logs()
    assert [log.type for log in logs] == [LOG_ERROR]
    assert logs[0].quota == 0
    assert orjson.loads(logs[0].other)["admin_info"]["use_channel"] == [str(a), str(b)]
    assert await balances(live, user_id, token_id) == before


async def test_invalid_json_answer_is_retried_and_free_when_nobody_answers(
    live: Live, upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    user_id, token_id, key, _, _ = await setup_two_channels(live, upstream, upstream_b)
    before = await balances(live, user_id, token_id)
    upstream.set_mode("invalid_json")
    upstream_b.set_mode("invalid_json")
    response = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert response.status_code == 502
    assert upstream.count() == 1 and upstream_b.count() == 1
    assert [log.type for log in await live.logs()] == [LOG_ERROR]
    assert await balances(live, user_id, token_id) == before


async def test_invalid_key_disables_the_channel_at_once(
    live: Live, upstream: FakeUpstream, upstream_b: FakeUpstream
) -> None:
    await live.set_option("AutomaticDisableChannelEnabled", "true")
    _, _, key, a, _b = await setup_two_channels(live, upstream, upstream_b)
    upstream.set_mode("status_401_invalid_key")
    first = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert first.status_code == 200  # failed over to the backup
    await live.runtime.relay.engine.drain()
    for _ in range(50):
        async with live.runtime.db.session() as session:
            channel = await session.get(Channel, a)
            assert channel is not None
            if channel.status == 3:
                break
        await _tick()
    assert channel.status == 3
    assert "status_reason" in (channel.other_info or "")
    second = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert second.status_code == 200
    assert upstream.count("/v1/chat/completions") == 1  # the disabled channel is not tried again


async def test_soft_failures_disable_only_past_the_threshold(live: Live, upstream: FakeUpstream) -> None:
    await live.set_option("AutomaticDisableChannelEnabled", "true")
    await live.set_option("ChannelFailureThreshold", "3")
    await live.set_option("RetryTimes", "0")
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id)
    channel_id = await create_channel(db, upstream.base_url)
    live.refresh()
    upstream.set_mode("status_500")
    statuses = []
    for _ in range(2):
        statuses.append(
            (await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code
        )
    async with db.session() as session:
        channel = await session.get(Channel, channel_id)
        assert channel is not None and channel.status == 1
    statuses.append(
        (await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code
    )
    assert statuses == [500, 500, 500]
    for _ in range(50):
        async with db.session() as session:
            channel = await session.get(Channel, channel_id)
            assert channel is not None
            if channel.status == 3:
                break
        await _tick()
    assert channel.status == 3


async def test_client_faults_are_refused_before_any_upstream_call(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db)
    token_id, key = await create_token(db, user_id, unlimited=False, remain_quota=1000)
    await create_channel(db, upstream.base_url)
    live.refresh()
    bad_bodies: list[bytes] = [
        b"not json",
        b"[1, 2]",
        orjson.dumps({"messages": [{"role": "user", "content": "hi"}]}),
        orjson.dumps({"model": "", "messages": [{"role": "user", "content": "hi"}]}),
        orjson.dumps({"model": 42, "messages": [{"role": "user", "content": "hi"}]}),
        orjson.dumps({"model": "gpt-4o-mini", "messages": []}),
        orjson.dumps({"model": "gpt-4o-mini", "messages": "hi"}),
    ]
    for body in bad_bodies:
        response = await live.client.post("/v1/chat/completions", content=body, headers=auth(key))
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert upstream.count() == 0
    assert await live.logs() == []
    assert (await balances(live, user_id, token_id))[2] == 1000


async def test_authentication_failures(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db)
    _, disabled = await create_token(db, user_id, status=2)
    _, expired = await create_token(db, user_id, expired_time=1)
    _, empty = await create_token(db, user_id, unlimited=False, remain_quota=0)
    _, limited_models = await create_token(db, user_id, model_limits="gpt-4o")
    _, ip_locked = await create_token(db, user_id, allow_ips="10.0.0.0/8\n192.168.1.1")
    _, pinned = await create_token(db, user_id)
    await create_channel(db, upstream.base_url)
    live.refresh()
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer sk-doesnotexist"}, 401),
        (auth(disabled), 401),
        (auth(expired), 401),
        (auth(empty), 401),
        (auth(limited_models), 403),
        (auth(ip_locked), 403),
        (auth(pinned + "-1"), 403),  # channel pins are for administrators
    ]
    for headers, status in cases:
        response = await live.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == status, (headers, response.text)
        assert "(request id: " in response.json()["error"]["message"]
    ok = await live.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, headers=auth(limited_models)
    )
    assert ok.status_code == 200
    assert upstream.count() == 1


async def test_no_channel_for_the_model_is_503(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id)
    await create_channel(db, upstream.base_url, models="gpt-4o")
    live.refresh()
    response = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert response.status_code == 503
    assert "gpt-4o-mini" in response.json()["error"]["message"]
    assert [log.type for log in await live.logs()] == [LOG_ERROR]


async def test_model_mapping_and_status_code_mapping(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id)
    await create_channel(
        db,
        upstream.base_url,
        model_mapping='{"gpt-4o-mini": "my-local-model"}',
        status_code_mapping='{"500": "503"}',
    )
    live.refresh()
    await live.set_option("RetryTimes", "0")
    response = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert response.status_code == 200
    assert upstream.last.json is not None and upstream.last.json["model"] == "my-local-model"
    logs = await live.logs()
    assert logs[-1].model_name == "gpt-4o-mini"
    assert orjson.loads(logs[-1].other)["upstream_model_name"] == "my-local-model"
    upstream.set_mode("status_500")
    mapped = await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
    assert mapped.status_code == 503


async def _tick() -> None:
    await asyncio.sleep(0.05)
