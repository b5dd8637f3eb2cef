"""What differs between the two servers ``tollway serve`` can run: granian's RSGI interface (the
default, with its own relay path and an ASGI bridge for everything else) and uvicorn
(``SERVER=uvicorn``). The rest of the e2e suite runs on granian."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.settings import Settings

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


async def _chunks(count: int, size: int = 65536) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * size


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_oversized_bodies_are_refused_with_413(
    server: str, make_settings: Callable[..., Settings], live_factory: Callable[..., Any]
) -> None:
    live: Live = await live_factory(make_settings(max_request_body_mb=1), server=server)
    big = b"x" * (1024 * 1024 + 1)
    relay = await live.client.post("/v1/chat/completions", content=big)
    assert relay.status_code == 413
    assert relay.json()["error"]["type"] == "invalid_request_error"
    assert relay.headers["x-oneapi-request-id"] in relay.json()["error"]["message"]

    chunked = await live.client.post("/v1/chat/completions", content=_chunks(40))  # no Content-Length
    assert chunked.status_code == 413

    api = await live.client.post("/api/setup", content=big)
    assert api.status_code == 413 and api.json()["success"] is False
    api_chunked = await live.client.post("/api/setup", content=_chunks(40))
    assert api_chunked.status_code == 413

    small = await live.client.post("/api/setup", content=_one(b'{"username": "root"}'))  # chunked
    assert small.status_code == 400  # reached the route: refused for its content, not its size


@pytest.mark.db
@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_chat_and_stream_on_either_server(
    server: str, settings: Settings, live_factory: Callable[..., Any], upstream: FakeUpstream
) -> None:
    live: Live = await live_factory(settings, server=server)
    db = live.runtime.db
    user_id = await create_user(db, quota=1_000_000)
    _, key = await create_token(db, user_id)
    await create_channel(db, upstream.base_url)
    live.refresh()
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": "203.0.113.9"}

    chat = await live.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"]
    assert chat.headers["x-oneapi-request-id"]
    assert chat.headers["content-length"] == str(len(chat.content))

    async with live.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["x-oneapi-request-id"]
        events = [line async for line in stream.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert "".join(
        orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if orjson.loads(e[6:])["choices"]
    )

    wrong = await live.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"]

    status = await live.client.get("/api/status")  # the ASGI application behind the bridge
    assert status.status_code == 200 and status.json()["success"] is True
    assert status.headers["x-oneapi-request-id"]

    rows = await live.logs()
    assert len(rows) == 2 and all(row.quota > 0 for row in rows)
