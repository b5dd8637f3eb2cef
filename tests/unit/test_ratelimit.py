"""Sliding-window rate limits: the two limiters, the global middleware and the route dependency."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.conftest import _unavailable
from tollway.api.envelope import install_error_handlers
from tollway.ops.ratelimit import (
    CriticalRateLimit,
    GlobalRateLimitMiddleware,
    MemoryLimiter,
    RedisLimiter,
    SearchRateLimit,
    build_limiter,
)
from tollway.settings import Settings

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----- MemoryLimiter ------------------------------------------------------------------------------
async def test_memory_limiter_counts_refuses_and_slides() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    for step in range(3):
        clock.now = 1000.0 + step
        assert await limiter.hit("ip", 3, 10) == 0
    clock.now = 1003.0
    assert await limiter.hit("ip", 3, 10) == pytest.approx(7.0)  # the event at 1000 leaves at 1010
    for second in range(1004, 1010):  # refused events are not counted
        clock.now = second
        assert await limiter.hit("ip", 3, 10) == pytest.approx(1010 - second)
    assert await limiter.hit("other", 3, 10) == 0  # keys are independent
    assert await limiter.hit("closed", 0, 10) == 10  # a limit of 0 lets nothing through
    clock.now = 1010.0
    assert await limiter.hit("ip", 3, 10) == 0  # the window slid past the first event
    clock.now = 1010.5
    assert await limiter.hit("ip", 3, 10) == pytest.approx(0.5)  # next: the event at 1001
    clock.now = 1011.0
    assert await limiter.hit("ip", 3, 10) == 0


async def test_memory_limiter_is_bounded_by_sweeps() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock, sweep_every=60)
    for n in range(100_000):
        await limiter.hit(f"ip-{n}", 5, 1.0)
    assert len(limiter) == 100_000
    clock.now += 2
    assert limiter.sweep() == 100_000
    assert len(limiter) == 0

    for n in range(1000):
        await limiter.hit(f"ip-{n}", 5, 1.0)
    await limiter.hit("long-window", 5, 3600)
    clock.now += 61  # the next hit sweeps by itself; a key still inside its window stays
    await limiter.hit("late", 5, 1.0)
    assert len(limiter) == 2


# ----- the global middleware ----------------------------------------------------------------------
def tiny_app(limiter: MemoryLimiter) -> GlobalRateLimitMiddleware:
    async def pong(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route("/api/ping", pong), Route("/v1/ping", pong)])
    return GlobalRateLimitMiddleware(app, limiter, limit=2, window=180)


async def test_global_middleware_answers_429_per_client_ip() -> None:
    app = tiny_app(MemoryLimiter())
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert [(await client.get("/api/ping")).status_code for _ in range(2)] == [200, 200]
        refused = await client.get("/api/ping")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "180"
        assert refused.json() == {"success": False, "message": "too many requests, retry in 180 s"}
        assert (await client.get("/v1/ping")).status_code == 200  # outside the prefix
    other = httpx.ASGITransport(app=app, client=("203.0.113.8", 5000))
    async with httpx.AsyncClient(transport=other, base_url="http://t") as client:
        assert (await client.get("/api/ping")).status_code == 200


# ----- the route dependency -----------------------------------------------------------------------
def dependency_app(settings: Settings) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.state.runtime = SimpleNamespace(settings=settings)

    @app.post("/api/user/login")
    async def login(_limit: CriticalRateLimit) -> dict[str, Any]:
        return {"success": True, "message": ""}

    @app.get("/api/token/search")
    async def search(_limit: SearchRateLimit) -> dict[str, Any]:
        return {"success": True, "message": ""}

    return app


async def test_dependency_limits_routes_from_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        critical_rate_limit_enable=True,
        critical_rate_limit=2,
        critical_rate_limit_duration=1200,
        search_rate_limit_enable=True,
        search_rate_limit=3,
        search_rate_limit_duration=60,
    )
    app = dependency_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert [(await client.post("/api/user/login")).status_code for _ in range(2)] == [200, 200]
        refused = await client.post("/api/user/login")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1200"
        assert refused.json() == {"success": False, "message": "too many requests, retry in 1200 s"}
        # Search has its own count and limit.
        codes = [(await client.get("/api/token/search")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
    assert isinstance(app.state.rate_limiter, MemoryLimiter)  # created on first use


async def test_dependency_is_off_when_disabled(make_settings: Callable[..., Settings]) -> None:
    app = dependency_app(make_settings(critical_rate_limit_enable=False, critical_rate_limit=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert {(await client.post("/api/user/login")).status_code for _ in range(5)} == {200}


async def test_build_limiter_follows_redis_setting(make_settings: Callable[..., Settings]) -> None:
    assert isinstance(build_limiter(make_settings()), MemoryLimiter)
    limiter = build_limiter(make_settings(redis_conn_string=REDIS_URL))
    assert isinstance(limiter, RedisLimiter)
    await limiter.aclose()


# ----- RedisLimiter -------------------------------------------------------------------------------
@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the real Redis; its keys are deleted afterwards."""
    client: Redis = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        _unavailable("redis", exc)
    prefix = f"tollway:rl:test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def redis_limiter(prefix: str) -> RedisLimiter:
    """A limiter with its own connection pool, as each worker process has."""
    return RedisLimiter(Redis.from_url(REDIS_URL), prefix=prefix)


async def test_redis_limiter_counts_refuses_and_slides(redis_prefix: str) -> None:
    limiter = await redis_limiter(redis_prefix)
    try:
        assert [await limiter.hit("ip", 3, 0.5) for _ in range(3)] == [0, 0, 0]
        wait = await limiter.hit("ip", 3, 0.5)
        assert 0 < wait <= 0.5
        assert await limiter.hit("other", 3, 0.5) == 0
        assert await limiter.hit("closed", 0, 0.5) == 0.5
        await asyncio.sleep(wait + 0.05)
        assert await limiter.hit("ip", 3, 0.5) == 0
        client = Redis.from_url(REDIS_URL)
        ttl = await client.pttl(redis_prefix + "ip")
        await client.aclose()
        assert 0 < ttl <= 500  # idle keys expire on their own
    finally:
        await limiter.aclose()


async def test_redis_limiters_share_one_count(redis_prefix: str) -> None:
    first, second = await redis_limiter(redis_prefix), await redis_limiter(redis_prefix)
    try:
        assert await first.hit("ip", 3, 60) == 0
        assert await second.hit("ip", 3, 60) == 0
        assert await first.hit("ip", 3, 60) == 0
        assert await second.hit("ip", 3, 60) > 0
        assert 59 < await first.hit("ip", 3, 60) <= 60
        # Concurrent hits from both "workers": exactly the limit gets through (atomic script).
        waits = await asyncio.gather(*(lim.hit("burst", 5, 60) for lim in (first, second) * 20))
        assert sum(1 for wait in waits if wait == 0) == 5
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_limiter_falls_back_to_memory_when_redis_is_down() -> None:
    limiter = RedisLimiter(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1))
    try:
        assert await limiter.hit("ip", 1, 60) == 0
        assert await limiter.hit("ip", 1, 60) > 0
    finally:
        await limiter.aclose()
