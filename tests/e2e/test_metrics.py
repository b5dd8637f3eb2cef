"""``/metrics``: a scrape after a mixed workload shows every counter moved by the right amount, in
one process and across the two workers of ``tollway serve``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Live
from tests.e2e.test_relay_basic import CHAT
from tests.e2e.test_restart import seed, serving, stop
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.db.engine import Database
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR
from tollway.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_mixed_workload_moves_every_counter_by_the_right_amount(
    make_settings: Callable[..., Settings],
    live_factory: Callable[..., Any],
    upstream: FakeUpstream,
    upstream_b: FakeUpstream,
) -> None:
    live: Live = await live_factory(make_settings(metrics_token="scrape-secret"))
    db = live.runtime.db
    await live.set_option("AutomaticDisableChannelEnabled", "true")
    user_id = await create_user(db, quota=50_000_000)
    _, key = await create_token(db, user_id)
    primary = await create_channel(db, upstream.base_url, name="primary", priority=10)
    backup = await create_channel(db, upstream_b.base_url, name="backup", priority=0)
    live.refresh()
    scrape_auth = {"Authorization": "Bearer scrape-secret"}
    before = await scrape(live.client, **scrape_auth)

    for _ in range(5):  # plain successes on the primary channel
        assert (
            await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))
        ).status_code == 200
    for _ in range(3):  # streams
        async with live.client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth(key)
        ) as response:
            assert response.status_code == 200
            await response.aread()
    upstream.fail_next("status_500")  # one retry: primary fails, backup answers
    assert (await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code == 200
    assert (await live.client.post("/v1/chat/completions", json=CHAT)).status_code == 401  # no key
    assert (await live.client.get("/v1/no-such-route", headers=auth(key))).status_code == 404
    upstream.set_mode("status_401_invalid_key")  # a hard failure disables the primary, backup answers
    assert (await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code == 200
    for _ in range(100):  # the channel is disabled in the background
        if moved(before, await scrape(live.client, **scrape_auth), "tollway_channel_status_changes_total"):
            break
        await asyncio.sleep(0.05)
    upstream_b.set_mode("status_500")  # nobody answers now: one error log
    assert (await live.client.post("/v1/chat/completions", json=CHAT, headers=auth(key))).status_code == 500
    after = await scrape(live.client, **scrape_auth)
    logs = await live.logs()
    consume = [log for log in logs if log.type == LOG_CONSUME]
    errors = [log for log in logs if log.type == LOG_ERROR]
    assert (len(consume), len(errors)) == (10, 1)

    # One relay count per log row, by status, channel, model and group.
    assert moved(before, after, "tollway_relay_requests_total") == 11
    assert moved(before, after, "tollway_relay_requests_total", status="200", channel=str(primary)) == 8
    assert moved(before, after, "tollway_relay_requests_total", status="200", channel=str(backup)) == 2
    assert moved(before, after, "tollway_relay_requests_total", status="500", channel=str(backup)) == 1
    assert moved(before, after, "tollway_relay_requests_total", model="gpt-4o-mini", group="default") == 11
    assert moved(before, after, "tollway_relay_duration_seconds_count", route="chat", stream="true") == 3
    assert moved(before, after, "tollway_relay_duration_seconds_count", route="chat", stream="false") == 8
    assert moved(before, after, "tollway_relay_ttfb_seconds_count", route="chat", stream="true") == 3
    # Retries: the 500 → backup, the invalid key → backup, and the final request's second channel.
    # (The primary is disabled by then, so the final request tries the backup alone: no retry.)
    assert moved(before, after, "tollway_relay_retries_total", route="chat") == 2
    assert moved(before, after, "tollway_upstream_errors_total", channel=str(primary), kind="status_500") == 1
    assert moved(before, after, "tollway_upstream_errors_total", channel=str(primary), kind="status_401") == 1
    assert moved(before, after, "tollway_upstream_errors_total", channel=str(backup), kind="status_500") == 1
    assert moved(before, after, "tollway_channel_status_changes_total", channel=str(primary)) == 1
    # Money and tokens equal what the logs say.
    assert moved(before, after, "tollway_quota_spent_total") == sum(log.quota for log in consume)
    assert moved(before, after, "tollway_tokens_total", kind="prompt") == sum(
        log.prompt_tokens for log in consume
    )
    assert moved(before, after, "tollway_tokens_total", kind="completion") == sum(
        log.completion_tokens for log in consume
    )
    # Every HTTP request, by route template and status; the scrapes themselves are not counted.
    chat = {"route": "/v1/chat/completions", "method": "POST"}
    assert moved(before, after, "tollway_http_requests_total", status="200", **chat) == 10
    assert moved(before, after, "tollway_http_requests_total", status="401", **chat) == 1
    assert moved(before, after, "tollway_http_requests_total", status="500", **chat) == 1
    assert moved(before, after, "tollway_http_requests_total", route="other", status="404") == 1
    assert total(after, "tollway_http_requests_total", route="/metrics") == 0
    assert total(after, "tollway_active_requests") == 0
    assert total(after, "tollway_active_streams") == 0
    # The log writer, the rollup and the pools, sampled at the scrape.
    flushed = await live.runtime.relay.rollup.flush(db)
    assert flushed >= 1
    final = await scrape(live.client, **scrape_auth)
    assert moved(before, final, "tollway_log_rows_written_total") == len(logs)
    assert moved(before, final, "tollway_log_batch_seconds_count") >= 1
    assert moved(before, final, "tollway_rollup_flushes_total") == 1
    assert moved(before, final, "tollway_rollup_rows_total") == flushed
    assert total(final, "tollway_log_queue_depth") == 0
    assert ("tollway_db_pool_connections", frozenset({("database", "main"), ("state", "in_use")})) in final


async def test_the_metrics_token_is_required_when_set(
    make_settings: Callable[..., Settings], live_factory: Callable[..., Any]
) -> None:
    live: Live = await live_factory(make_settings(metrics_token="scrape-secret"))
    assert (await live.client.get("/metrics")).status_code == 401
    assert (await live.client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (
        await live.client.post("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    ).status_code == 405
    samples = await scrape(live.client, Authorization="Bearer scrape-secret")
    assert ("tollway_active_requests", frozenset()) in samples


async def test_route_labels_are_templates(
    make_settings: Callable[..., Settings], live_factory: Callable[..., Any]
) -> None:
    live: Live = await live_factory(make_settings())
    for token_id in (101, 102, 103):
        await live.client.get(f"/api/token/{token_id}")  # 401: no session, but a known route
    after = await scrape(live.client)
    assert total(after, "tollway_http_requests_total", route="/api/token/:id", status="401") == 3
    assert not [
        labels
        for (name, labels) in after
        if name == "tollway_http_requests_total" and ("route", "/api/token/101") in labels
    ]


@pytest.mark.db
async def test_two_workers_answer_one_sum(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Any worker answering the scrape reports the requests of both."""
    settings = make_settings()
    db = Database(settings)
    n = 40
    async with FakeUpstream() as upstream:
        _, key = await seed(db, settings, upstream)
        await db.dispose()
        async with serving(settings, tmp_path) as (base, process):
            limits = httpx.Limits(max_keepalive_connections=0)  # new connections: both workers serve
            async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
                results = await asyncio.gather(
                    *(client.post("/v1/chat/completions", json=CHAT, headers=auth(key)) for _ in range(n))
                )
                assert [r.status_code for r in results] == [200] * n
                for _ in range(6):  # whichever worker answers, the sum is the same
                    samples = await scrape(client)
                    assert total(samples, "tollway_relay_requests_total", status="200") == n
                    assert total(samples, "tollway_http_requests_total", route="/v1/chat/completions") == n
            assert any(Path(tmp_path / "data").glob("metrics-*/counter_*.db"))
            await stop(process)
            assert not any(Path(tmp_path / "data").glob("metrics-*"))  # removed at exit
