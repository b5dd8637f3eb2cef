"""Sliding-window rate limits (new-api's ``GlobalAPIRateLimit``, ``CriticalRateLimit``, ``SearchRateLimit``).

A limit is "at most ``limit`` events per ``window`` seconds per key", counted over the window that
ends now (a sliding log, as new-api keeps). A refused event is not counted, so a client that keeps
hammering is let in again as soon as its oldest counted event leaves the window.

Two stores: :class:`MemoryLimiter` (one process; bounded by sweeping idle keys) and
:class:`RedisLimiter` (shared by every worker and node that uses the same Redis; one atomic Lua
script per event). Callers only see :class:`SlidingWindowLimiter`.

Where limits apply: :class:`GlobalRateLimitMiddleware` counts every ``/api`` request per client IP;
the :data:`CriticalRateLimit` and :data:`SearchRateLimit` dependencies guard single routes, with the
limits of ``CRITICAL_RATE_LIMIT*`` and ``SEARCH_RATE_LIMIT*`` (``Settings``).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Protocol

import orjson
from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tollway.errors import RateLimited
from tollway.settings import Settings

if TYPE_CHECKING:  # redis is imported only when REDIS_CONN_STRING is set (~6 MB per worker)
    from redis.asyncio import Redis

log = logging.getLogger("tollway.ratelimit")

REDIS_PREFIX = "tollway:rl:"
SWEEP_EVERY = 60.0  # seconds between sweeps of idle keys in a MemoryLimiter


class SlidingWindowLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> float:
        """Count one event for ``key``: 0 when allowed, else the seconds until one would be."""
        ...


def retry_seconds(wait: float) -> int:
    """A wait as the whole seconds ``Retry-After`` carries: rounded up, at least 1."""
    return max(1, math.ceil(round(wait, 3)))  # to the millisecond first: float noise never adds 1 s


def too_many_message(wait: float) -> str:
    return f"too many requests, retry in {retry_seconds(wait)} s"


# ----- in memory ------------------------------------------------------------------------------
class _Bucket:
    """The counted events of one key (oldest first) and the window they were counted for."""

    __slots__ = ("events", "window")

    def __init__(self, window: float) -> None:
        self.events: deque[float] = deque()
        self.window = window


class MemoryLimiter:
    """Per-process limiter: a deque of event times per key.

    Memory stays bounded: a key holds at most ``limit`` times (refused events are not stored), and
    keys idle for longer than their window are dropped by a sweep that runs at most every
    ``sweep_every`` seconds, from :meth:`hit` itself (no background task to manage).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, sweep_every: float = SWEEP_EVERY
    ) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._buckets: dict[str, _Bucket] = {}
        self._next_sweep = clock() + sweep_every

    def __len__(self) -> int:
        """How many keys are held (for tests and metrics)."""
        return len(self._buckets)

    async def hit(self, key: str, limit: int, window: float) -> float:
        # No await inside: the check and the count are atomic for the event loop.
        if limit < 1:
            return max(float(window), 1e-3)  # nothing is allowed
        now = self._clock()
        if now >= self._next_sweep:
            self.sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(window)
        bucket.window = window
        events = bucket.events
        horizon = now - window
        while events and events[0] <= horizon:
            events.popleft()
        if len(events) < limit:
            events.append(now)
            return 0.0
        return max(events[len(events) - limit] + window - now, 1e-3)

    def sweep(self, now: float | None = None) -> int:
        """Drop every key whose newest event left its window; returns how many were dropped."""
        now = self._clock() if now is None else now
        idle = [
            key
            for key, bucket in self._buckets.items()
            if not bucket.events or bucket.events[-1] <= now - bucket.window
        ]
        for key in idle:
            del self._buckets[key]
        self._next_sweep = now + self._sweep_every
        return len(idle)


# ----- Redis ----------------------------------------------------------------------------------
# One round trip, atomic: prune the window, count, then either record the event or answer how
# long until the oldest counted event leaves the window. Time is the Redis server's, so nodes
# with skewed clocks still share one window. Scores are milliseconds (fractional).
_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + tonumber(now_parts[2]) / 1000
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
return math.max(1, math.ceil(wait))
"""


class RedisLimiter:
    """Limiter shared through Redis: every worker and node using the same Redis shares the count.

    When Redis cannot be reached the event is counted by ``fallback`` (a per-process limiter), so
    a Redis outage neither locks everybody out nor lifts the limits; a warning is logged at most
    once a minute.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = REDIS_PREFIX,
        fallback: SlidingWindowLimiter | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_SCRIPT)
        self._fallback = fallback or MemoryLimiter()
        self._warned_at = -math.inf

    async def hit(self, key: str, limit: int, window: float) -> float:
        if limit < 1:
            return max(float(window), 1e-3)  # nothing is allowed
        from redis.exceptions import RedisError  # loaded with redis already: a dict lookup

        window_ms = max(1, math.ceil(window * 1000))
        try:
            wait_ms = await self._script(keys=[self._prefix + key], args=[window_ms, limit, uuid.uuid4().hex])
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._warned_at >= 60:
                self._warned_at = now
                log.warning("rate limiter: Redis unavailable (%s); counting in this process", exc)
            return await self._fallback.hit(key, limit, window)
        return int(wait_ms) / 1000.0

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_limiter(settings: Settings) -> SlidingWindowLimiter:
    """Redis when ``REDIS_CONN_STRING`` is set (limits shared by all workers and nodes), else memory."""
    if settings.redis_conn_string:
        from redis.asyncio import Redis

        return RedisLimiter(Redis.from_url(settings.redis_conn_string))
    return MemoryLimiter()


# ----- where limits apply -------------------------------------------------------------------------
def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class GlobalRateLimitMiddleware:
    """Counts every request under ``path_prefix`` per client IP; over the limit answers 429.

    new-api answers an empty 429; Tollway adds ``Retry-After`` and the management envelope so
    scripts and the console can show why and when to retry.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: SlidingWindowLimiter,
        *,
        limit: int,
        window: float,
        path_prefix: str = "/api",
        name: str = "GA",
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.limit = limit
        self.window = window
        self.path_prefix = path_prefix
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self.path_prefix):
            wait = await self.limiter.hit(f"{self.name}:{client_ip(scope)}", self.limit, self.window)
            if wait > 0:
                await _refuse(send, wait)
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, wait: float) -> None:
    body = orjson.dumps({"success": False, "message": too_many_message(wait)})
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_seconds(wait)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def app_limiter(request: Request) -> SlidingWindowLimiter:
    """The limiter of this app (``app.state.rate_limiter``), created in memory on first use."""
    state = request.app.state
    limiter: SlidingWindowLimiter | None = getattr(state, "rate_limiter", None)
    if limiter is None:
        limiter = state.rate_limiter = MemoryLimiter()
    return limiter


def rate_limited(
    name: str, limit_attr: str, window_attr: str, enabled_attr: str
) -> Callable[[Request], Awaitable[None]]:
    """A route dependency limiting each client IP to ``settings.<limit_attr>`` calls per
    ``settings.<window_attr>`` seconds (off when ``settings.<enabled_attr>`` is false); over the
    limit it raises :class:`RateLimited` (429 with ``Retry-After``)."""

    async def dependency(request: Request) -> None:
        settings: Settings = request.app.state.runtime.settings
        if not getattr(settings, enabled_attr):
            return
        limit = int(getattr(settings, limit_attr))
        window = float(getattr(settings, window_attr))
        ip = request.client.host if request.client else "unknown"
        wait = await app_limiter(request).hit(f"{name}:{ip}", limit, window)
        if wait > 0:
            raise RateLimited(too_many_message(wait), retry_after=retry_seconds(wait))

    dependency.__name__ = f"rate_limit_{name.lower()}"
    return dependency


critical_rate_limit = rate_limited(
    "CT", "critical_rate_limit", "critical_rate_limit_duration", "critical_rate_limit_enable"
)
search_rate_limit = rate_limited(
    "SR", "search_rate_limit", "search_rate_limit_duration", "search_rate_limit_enable"
)
CriticalRateLimit = Annotated[None, Depends(critical_rate_limit)]
"""Login, register, verification, password reset, key reveal: ``CRITICAL_RATE_LIMIT`` (20 / 1200 s)."""
SearchRateLimit = Annotated[None, Depends(search_rate_limit)]
"""Token and log search: ``SEARCH_RATE_LIMIT`` (10 / 60 s)."""
