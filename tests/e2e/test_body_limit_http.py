"""A body over MAX_REQUEST_BODY_MB is refused with 413 over a real socket too, with or without a
Content-Length, and the client (still sending) gets to read the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from tests.e2e.conftest import Live
from tollway.settings import Settings


async def _chunks(count: int, size: int = 65536) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"y" * size


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_oversized_bodies_are_refused_with_413(
    make_settings: Callable[..., Settings], live_factory: Callable[..., Any]
) -> None:
    live: Live = await live_factory(make_settings(max_request_body_mb=1))
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
