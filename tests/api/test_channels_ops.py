"""Channel routes that reach upstreams, on every database: tests (one, and all in the background
with auto-disable and auto-enable), upstream model lists and balances, against fake upstreams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.api.conftest import As
from tests.api.test_channels import abilities, add, stored
from tests.conftest import AppHarness
from tests.fakes.upstream import FakeUpstream
from tollway.db.models import Log
from tollway.db.models.log import LOG_CONSUME

pytestmark = pytest.mark.db


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


async def add_single(client: As, **channel: Any) -> int:
    """One channel holding every key given (NA+'s ``single`` mode)."""
    body = {"mode": "single", "channel": {"type": 1, "name": "c", "models": "gpt-4o-mini", **channel}}
    response = await client.post("/api/channel/", json=body)
    assert response.json()["success"], response.text
    channel_id: int = response.json()["data"][0]
    return channel_id


async def channel_test_logs(harness: AppHarness) -> list[Log]:
    async with harness.runtime.db.log_session() as session:
        return list(
            await session.scalars(select(Log).where(Log.token_name == "channel test").order_by(Log.id))
        )


async def test_one_channel(harness: AppHarness, as_admin: As, upstream: FakeUpstream) -> None:
    channel_id = await add_single(
        as_admin,
        key="sk-first-key\nsk-second-key",
        base_url=upstream.base_url,
        models="gpt-4o-mini,gpt-4o,text-embedding-3-small",
        test_model="gpt-4o",
        model_mapping='{"gpt-4o": "gpt-4o-2024-11-20"}',
    )
    response = await as_admin.get(f"/api/channel/test/{channel_id}")
    body = response.json()
    assert body["success"] is True and body["message"] == "" and isinstance(body["time"], float)
    sent = upstream.last
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == "Bearer sk-first-key"
    assert sent.json == {
        "model": "gpt-4o-2024-11-20",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    row = await stored(harness, channel_id)
    assert row.test_time > 0 and row.response_time == round(body["time"] * 1000)
    (entry,) = await channel_test_logs(harness)
    assert (entry.user_id, entry.username, entry.type, entry.quota) == (1, "admin", LOG_CONSUME, 0)
    assert (entry.model_name, entry.channel_id, entry.prompt_tokens, entry.completion_tokens) == (
        "gpt-4o",
        channel_id,
        10,
        5,
    )

    embedding = await as_admin.get(f"/api/channel/test/{channel_id}?model=text-embedding-3-small")
    assert embedding.json()["success"] is True
    assert upstream.last.path == "/v1/embeddings" and upstream.last.json["input"] == ["hi"]
    reasoning = await as_admin.get(f"/api/channel/test/{channel_id}?model=o3-mini")
    assert reasoning.json()["success"] and upstream.last.json["max_completion_tokens"] == 10

    upstream.set_mode("status_401_invalid_key")
    failed = (await as_admin.get(f"/api/channel/test/{channel_id}")).json()
    assert failed["success"] is False and "Incorrect API key" in failed["message"]
    assert "example.invalid" not in failed["message"]  # upstream addresses are masked
    assert isinstance(failed["time"], float)
    assert len(await channel_test_logs(harness)) == 3  # a failed test logs nothing
    assert (await stored(harness, channel_id)).status == 1  # a single test never disables

    (midjourney,) = await add(as_admin, type=2, base_url=upstream.base_url)
    refused = (await as_admin.get(f"/api/channel/test/{midjourney}")).json()
    assert refused["success"] is False and "cannot be tested" in refused["message"]
    assert (await as_admin.get("/api/channel/test/31337")).status_code == 404


async def test_all_channels_with_auto_disable_and_enable(harness: AppHarness, as_admin: As) -> None:
    options = harness.runtime.options
    await options.save("AutomaticDisableChannelEnabled", "true")
    await options.save("AutomaticEnableChannelEnabled", "true")
    await options.save("ChannelDisableThreshold", "0.3")
    async with FakeUpstream() as good, FakeUpstream() as bad, FakeUpstream() as slow, FakeUpstream() as flaky:
        bad.set_mode("status_401_invalid_key")
        flaky.set_mode("status_500")
        slow.configure(ttft=0.6)
        (healthy,) = await add(as_admin, base_url=good.base_url)
        (broken,) = await add(as_admin, base_url=bad.base_url)
        (protected,) = await add(as_admin, base_url=bad.base_url, auto_ban=0)
        (unstable,) = await add(as_admin, base_url=flaky.base_url)
        (sluggish,) = await add(as_admin, base_url=slow.base_url)
        (recovered,) = await add(as_admin, base_url=good.base_url, status=3)
        (manual,) = await add(as_admin, base_url=good.base_url, status=2)

        started = (await as_admin.get("/api/channel/test")).json()
        assert started["success"] is True
        again = (await as_admin.get("/api/channel/test")).json()
        assert again == {"success": False, "message": "a test of all channels is already running"}
        await harness.app.api.state.channel_tester.wait()

        assert good.count() == 2  # the manually disabled channel is not tested
        assert (slow.count(), flaky.count(), bad.count()) == (1, 1, 2)
    statuses = {cid: (await stored(harness, cid)).status for cid in (healthy, broken, protected, unstable)}
    assert statuses == {healthy: 1, broken: 3, protected: 1, unstable: 1}
    assert [(await stored(harness, cid)).status for cid in (sluggish, recovered, manual)] == [3, 1, 2]
    reason = json.loads((await stored(harness, broken)).other_info or "{}")["status_reason"]
    assert "Incorrect API key" in reason
    slow_reason = json.loads((await stored(harness, sluggish)).other_info or "{}")["status_reason"]
    assert "exceeds the threshold 0.30s" in slow_reason
    assert (await abilities(harness, broken))[0][2] is False
    assert (await abilities(harness, recovered))[0][2] is True
    assert (await stored(harness, healthy)).test_time > 0
    # Another run may start once the first is over.
    assert (await as_admin.get("/api/channel/test")).json()["success"] is True
    await harness.app.api.state.channel_tester.wait()


async def test_fetch_models(harness: AppHarness, as_root: As, as_admin: As, upstream: FakeUpstream) -> None:
    (channel_id,) = await add(as_admin, key="sk-fetch", base_url=upstream.base_url)
    listed = (await as_admin.get(f"/api/channel/fetch_models/{channel_id}")).json()
    assert listed == {
        "success": True,
        "message": "",
        "data": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"],
    }
    assert upstream.last.path == "/v1/models" and upstream.last.headers["authorization"] == "Bearer sk-fetch"

    form = {"base_url": upstream.base_url + "/v1/", "type": 1, "key": "sk-form"}
    by_root = (await as_root.post("/api/channel/fetch_models", json=form)).json()
    assert by_root["success"] is True and by_root["data"][0] == "gpt-4o-mini"
    assert upstream.last.path == "/v1/models" and upstream.last.headers["authorization"] == "Bearer sk-form"
    assert (await as_admin.post("/api/channel/fetch_models", json=form)).status_code == 403
    for bad in ({**form, "type": 1234}, {**form, "base_url": "file:///etc/passwd"}, {**form, "type": "x"}):
        answer = (await as_root.post("/api/channel/fetch_models", json=bad)).json()
        assert answer["success"] is False and answer["message"]

    upstream.set_mode("status_401_invalid_key")
    failed = (await as_admin.get(f"/api/channel/fetch_models/{channel_id}")).json()
    assert (
        failed["success"] is False
        and "401" in failed["message"]
        and "example.invalid" not in failed["message"]
    )
    assert (await as_admin.get("/api/channel/fetch_models/4040")).status_code == 404


async def test_balances(harness: AppHarness, as_admin: As) -> None:
    await harness.runtime.options.save("AutomaticDisableChannelEnabled", "true")
    async with (
        FakeUpstream() as billing,
        FakeUpstream() as router,
        FakeUpstream() as empty,
        FakeUpstream() as plain,
    ):
        subscription = {"object": "billing_subscription", "has_payment_method": True, "hard_limit_usd": 100.0}
        billing.respond_with(200, subscription, times=None, path="/v1/dashboard/billing/subscription")
        billing.respond_with(
            200, {"object": "list", "total_usage": 2550.0}, times=None, path="/v1/dashboard/billing/usage"
        )
        router.respond_with(
            200, {"data": {"total_credits": 20.0, "total_usage": 7.25}}, times=None, path="/api/v1/credits"
        )
        empty.respond_with(
            200, {"data": {"total_credits": 5, "total_usage": 5}}, times=None, path="/api/v1/credits"
        )
        (openai_like,) = await add(as_admin, base_url=billing.base_url, key="sk-bill")
        (openrouter,) = await add(as_admin, base_url=router.base_url, type=20)
        (used_up,) = await add(as_admin, base_url=empty.base_url)
        (silent,) = await add(as_admin, base_url=plain.base_url)
        (switched_off,) = await add(as_admin, base_url=billing.base_url, status=2)
        (azure,) = await add(as_admin, type=3, base_url=billing.base_url)

        one = (await as_admin.get(f"/api/channel/update_balance/{openai_like}")).json()
        assert one == {"success": True, "message": "", "balance": 74.5}
        usage_call = [r for r in billing.requests if r.path == "/v1/dashboard/billing/usage"][-1]
        assert (
            usage_call.query["start_date"].endswith("-01")
            and usage_call.headers["authorization"] == "Bearer sk-bill"
        )
        row = await stored(harness, openai_like)
        assert row.balance == 74.5 and row.balance_updated_time > 0
        assert (await as_admin.get(f"/api/channel/update_balance/{openrouter}/")).json()["balance"] == 12.75
        unsupported = (await as_admin.get(f"/api/channel/update_balance/{silent}")).json()
        assert unsupported["success"] is False and "no balance" in unsupported["message"]
        azure_answer = (await as_admin.get(f"/api/channel/update_balance/{azure}")).json()
        assert azure_answer["success"] is False and "not supported" in azure_answer["message"]
        assert (await as_admin.get("/api/channel/update_balance/777")).status_code == 404

        everything = (await as_admin.get("/api/channel/update_balance")).json()
        assert everything == {"success": True, "message": "", "data": 3}
    assert (await stored(harness, used_up)).status == 3  # an empty upstream is disabled
    assert (await stored(harness, used_up)).balance == 0
    assert (await stored(harness, switched_off)).balance_updated_time == 0
    assert (await stored(harness, openrouter)).status == 1
