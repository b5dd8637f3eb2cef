"""Rate limits on the real routes: the critical limit on login, the global /api limit."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tollway.app import create_app
from tollway.settings import Settings


async def test_login_and_api_limits(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        critical_rate_limit_enable=True,
        critical_rate_limit=3,
        critical_rate_limit_duration=60,
        global_api_rate_limit_enable=True,
        global_api_rate_limit=8,
        global_api_rate_limit_duration=60,
    )
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"username": "nobody", "password": "wrong-password"}
            statuses = [(await client.post("/api/user/login", json=body)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            limited = await client.post("/api/user/login", json=body)
            assert limited.status_code == 429
            assert int(limited.headers["retry-after"]) > 0
            assert limited.json()["success"] is False
            # 5 calls so far; the global limit of 8 lets 3 more through, then refuses.
            rest = [(await client.get("/api/status")).status_code for _ in range(4)]
            assert rest == [200, 200, 200, 429]
