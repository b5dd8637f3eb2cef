"""Every relay route reaches the upstream with the right path and body, and is logged once."""

from __future__ import annotations

import orjson
import pytest
from sqlalchemy import event

from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.billing.pricing import MODEL_RATIO

pytestmark = pytest.mark.db
MODELS = "gpt-4o-mini,text-embedding-3-small,omni-moderation-latest,dall-e-3,tts-1,whisper-1,rerank-v1,gpt-4o"


async def prepare(live: Live, upstream: FakeUpstream) -> dict[str, str]:
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id)
    await create_channel(db, upstream.base_url, models=MODELS)
    live.refresh()
    ratios = {**live.runtime.options.get(MODEL_RATIO), "rerank-v1": 0.05}
    await live.set_option("ModelRatio", orjson.dumps(ratios).decode())
    return {"Authorization": f"Bearer {key}"}


async def test_each_route_is_forwarded(live: Live, upstream: FakeUpstream) -> None:
    headers = await prepare(live, upstream)
    calls = [
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "Once upon"}, "/v1/completions"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hello"}, "/v1/embeddings"),
        ("/v1/engines/text-embedding-3-small/embeddings", {"input": "hello"}, "/v1/embeddings"),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": "hi"}, "/v1/moderations"),
        ("/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"}, "/v1/images/generations"),
        (
            "/v1/audio/speech",
            {"model": "tts-1", "input": "Hello there", "voice": "alloy"},
            "/v1/audio/speech",
        ),
        ("/v1/rerank", {"model": "rerank-v1", "query": "q", "documents": ["a", "b"]}, "/v1/rerank"),
        ("/v1/responses", {"model": "gpt-4o", "input": "Say hi"}, "/v1/responses"),
    ]
    for path, body, upstream_path in calls:
        response = await live.client.post(path, json=body, headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert upstream.last.path == upstream_path
        assert upstream.last.json is not None and upstream.last.json["model"] == body.get(
            "model", "text-embedding-3-small"
        )
    speech = await live.client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": "x", "voice": "alloy"}, headers=headers
    )
    assert speech.content.startswith(b"ID3")
    files = {"file": ("a.mp3", b"ID3 fake audio", "audio/mpeg")}
    transcription = await live.client.post(
        "/v1/audio/transcriptions", data={"model": "whisper-1"}, files=files, headers=headers
    )
    assert transcription.status_code == 200, transcription.text
    assert upstream.last.form["model"] == "whisper-1"
    logs = await live.logs()
    assert len(logs) == len(calls) + 2
    assert {log.model_name for log in logs} >= {"dall-e-3", "tts-1", "whisper-1", "rerank-v1"}
    image_log = next(log for log in logs if log.model_name == "dall-e-3")
    assert image_log.quota == round(0.04 * 500_000)  # per-call price


async def test_billing_routes(live: Live, upstream: FakeUpstream) -> None:
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id, unlimited=False, remain_quota=1_000_000)
    await create_channel(db, upstream.base_url)
    live.refresh()
    headers = {"Authorization": f"Bearer {key}"}
    for prefix in ("", "/v1"):
        subscription = (
            await live.client.get(f"{prefix}/dashboard/billing/subscription", headers=headers)
        ).json()
        assert subscription["object"] == "billing_subscription"
        assert subscription["hard_limit_usd"] == 2.0  # 1,000,000 quota at 500,000 per USD
        usage = (await live.client.get(f"{prefix}/dashboard/billing/usage", headers=headers)).json()
        assert usage["total_usage"] == 0


async def test_steady_state_requests_make_no_database_round_trip(live: Live, upstream: FakeUpstream) -> None:
    headers = await prepare(live, upstream)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):  # warm up: caches filled, a quota lease taken
        assert (await live.client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    await live.runtime.relay.writer.flush()
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    engines = {live.runtime.db.engine.sync_engine, live.runtime.db.log_engine.sync_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        batches_before = live.runtime.relay.writer.batches_written
        for _ in range(100):
            assert (
                await live.client.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 200
        await live.runtime.relay.writer.flush()
        batches = live.runtime.relay.writer.batches_written - batches_before
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    # No lookups per request: the only SELECT is PostgreSQL's writer asking, once per batch, for
    # the summaries' trigger to stand by during its COPY.
    assert statements.count("SELECT") <= batches, statements
    # Only the log writer's batches touch the database: a bounded number of statements per batch
    # (on SQLite the logs and each summary table take a few multi-row statements of fixed sizes).
    assert 1 <= batches <= 20
    assert len(statements) <= batches * 40, statements
