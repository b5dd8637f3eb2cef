"""A body over MAX_REQUEST_BODY_MB is refused with 413 before it is read whole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

from tollway.app import create_app
from tollway.settings import Settings


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_oversized_bodies_get_413_in_the_callers_dialect(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_request_body_mb=1)
    big = b"x" * (1024 * 1024 + 1)
    async for client in _client(settings):
        relay = await client.post("/v1/chat/completions", content=big)
        assert relay.status_code == 413
        assert relay.json()["error"]["type"] == "invalid_request_error"
        assert "(request id: " in relay.json()["error"]["message"]

        api = await client.post("/api/setup", content=big)
        assert api.status_code == 413
        assert api.json()["success"] is False

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"y" * 65536  # 2.5 MB without a Content-Length

        streamed = await client.post("/api/setup", content=chunks())
        assert streamed.status_code == 413

        small = await client.post("/api/setup", json={"username": "root"})
        assert small.status_code == 400  # reached the route: refused for its content, not its size
