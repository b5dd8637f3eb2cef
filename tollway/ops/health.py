"""Health of the process and of what it depends on: the databases and Redis.

:class:`DatabaseHealth` pings the main database, the log database when ``LOG_SQL_DSN`` names a
separate one, and Redis when ``REDIS_CONN_STRING`` is set, each with a short timeout. Results are
cached (new-api pings at most once per 10 s for ``/api/status/test``), so a burst of probes never
becomes a burst of connections. :meth:`DatabaseHealth.watch` pings in the background and logs one
line when something goes down and one when it is back, instead of one per failed ping.

Load balancers and orchestrators get two unauthenticated endpoints outside ``/api``
(:func:`health_routes`): ``/healthz`` (the process answers; never touches a database, so a
database outage does not get healthy processes restarted) and ``/readyz`` (the dependencies
answer; 503 naming the failed part otherwise, without error details, which go to the log).

:class:`ActiveRequests` counts the requests in flight (streams until their last byte), as
new-api's stats middleware does, for capacity dashboards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollway.db.dsn import DatabaseUrl
from tollway.db.engine import Database
from tollway.ops.metrics import OTHER, Metrics

if TYPE_CHECKING:  # redis is imported only when REDIS_CONN_STRING is set (~6 MB per worker)
    from redis.asyncio import Redis

log = logging.getLogger("tollway.health")

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
PING_TIMEOUT = 3.0  # seconds per dependency: a probe must answer well within a balancer's timeout
STATUS_TEST_MAX_AGE = 10.0  # new-api: /api/status/test pings at most once per 10 s
READY_MAX_AGE = 2.0  # /readyz: probes come every few seconds; fresher than /api/status/test
FAILURE_MAX_AGE = 1.0  # a failure is re-checked at least once a second, so recovery shows at once
WATCH_INTERVAL = 5.0

DATABASE = "database"
LOG_DATABASE = "log_database"
REDIS = "redis"


@dataclass(frozen=True)
class HealthReport:
    """One round of pings. ``errors`` holds a one-line reason per failed part (for logs only)."""

    checks: dict[str, bool]
    errors: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, up in self.checks.items() if not up]

    def describe_failures(self) -> str:
        return "; ".join(f"{name}: {self.errors.get(name, 'no answer')}" for name in self.failed)


def _reason(exc: BaseException, secret: str | None = None) -> str:
    """The first line of an error (drivers wrap the useful part), without a password."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    reason = lines[0][:300] if lines else type(original).__name__
    if isinstance(original, TimeoutError) and not lines:
        reason = "no answer within the timeout"
    return reason.replace(secret, "***") if secret else reason


def _redis_target(url: str) -> str:
    parts = urlsplit(url)
    return f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}"


class DatabaseHealth:
    """Pings the databases (and Redis when configured); results cached for ``max_age`` seconds."""

    def __init__(
        self,
        db: Database,
        redis_url: str = "",
        *,
        timeout: float = PING_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._timeout = timeout
        self._clock = clock
        self._redis: Redis | None = None
        self._redis_problem: str | None = None
        self._redis_url = redis_url.strip()
        if self._redis_url:
            from redis.asyncio import Redis

            try:
                self._redis = Redis.from_url(
                    self._redis_url, socket_connect_timeout=timeout, socket_timeout=timeout
                )
            except ValueError as exc:  # not a redis:// URL: reported as a failing part, never raised
                self._redis_problem = f"REDIS_CONN_STRING is not usable: {exc}"
        self._last: HealthReport | None = None
        self._rounds = 0
        self._lock = asyncio.Lock()
        self._reported_down: frozenset[str] = frozenset()

    @property
    def last(self) -> HealthReport | None:
        """The most recent report (None before the first ping)."""
        return self._last

    def _fresh(self, report: HealthReport | None, max_age: float) -> bool:
        if report is None:
            return False
        limit = max_age if report.ok else min(max_age, FAILURE_MAX_AGE)
        return self._clock() - report.checked_at < limit

    async def check(self, max_age: float = STATUS_TEST_MAX_AGE) -> HealthReport:
        """The cached report when younger than ``max_age`` (a failure: 1 s at most), else a new one.

        Concurrent callers share one round of pings (single flight)."""
        if self._fresh(self._last, max_age):
            assert self._last is not None
            return self._last
        round_seen = self._rounds
        async with self._lock:
            if self._rounds != round_seen or self._fresh(self._last, max_age):
                assert self._last is not None  # a round finished while we waited: share it
                return self._last
            return self._store(await self.ping())

    def _store(self, report: HealthReport) -> HealthReport:
        self._last = report
        self._rounds += 1
        return report

    async def ping(self) -> HealthReport:
        """Ping every part now, concurrently (uncached)."""
        db = self._db
        probes: dict[str, Awaitable[str | None]] = {DATABASE: self._ping_engine(db.engine, db.url)}
        if db.separate_logs:
            probes[LOG_DATABASE] = self._ping_engine(db.log_engine, db.log_url)
        if self._redis_url:
            probes[REDIS] = self._ping_redis()
        results = await asyncio.gather(*probes.values())
        errors = {name: error for name, error in zip(probes, results, strict=True) if error is not None}
        checks = {name: name not in errors for name in probes}
        return HealthReport(checks=checks, errors=errors, checked_at=self._clock())

    async def _ping_engine(self, engine: AsyncEngine, url: DatabaseUrl) -> str | None:
        try:
            async with asyncio.timeout(self._timeout), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any driver error means "not usable"; the reason is logged
            return f"{url.describe()}: {_reason(exc, url.url.password)}"
        return None

    async def _ping_redis(self) -> str | None:
        if self._redis is None:
            return self._redis_problem or "Redis is not configured"
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.ping()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            password = urlsplit(self._redis_url).password
            return f"{_redis_target(self._redis_url)}: {_reason(exc, password)}"
        return None

    async def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Ping every ``interval`` seconds until cancelled; log changes, not every failed ping."""
        while True:
            async with self._lock:
                report = self._store(await self.ping())
            self._log_change(report)
            await asyncio.sleep(interval)

    def _log_change(self, report: HealthReport) -> None:
        down = frozenset(report.failed)
        before = self._reported_down
        if down == before:
            return
        self._reported_down = down
        if not down:
            log.info("health: %s reachable again", ", ".join(sorted(before)))
        elif not before:
            log.error("health: unreachable: %s", report.describe_failures())
        else:
            log.warning("health: still unreachable: %s", report.describe_failures())

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def health_routes(health: DatabaseHealth) -> list[Route]:
    """``GET /healthz`` and ``GET /readyz`` (HEAD too) for load balancers; no authentication."""

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(_request: Request) -> Response:
        report = await health.check(max_age=READY_MAX_AGE)
        checks = {name: "ok" if up else "failed" for name, up in report.checks.items()}
        if report.ok:
            return JSONResponse({"status": "ok", "checks": checks}, headers={"Cache-Control": "no-store"})
        body = {"status": "unavailable", "failed": report.failed, "checks": checks}
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})

    return [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]


class ActiveRequests:
    """Pure ASGI middleware counting HTTP requests in flight in this process.

    A request counts from the moment it enters until the wrapped app returns, which for a
    streamed response is after its last byte was sent (or the client went away). ``peak`` is the
    highest ``current`` seen since start (or the last :meth:`reset_peak`). Plain ints: the event
    loop is single-threaded, so no lock is needed. With ``metrics``, every request is also counted
    by route, method and status, and the in-flight gauge follows ``current``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.current = 0
        self.peak = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.current += 1
        if self.current > self.peak:
            self.peak = self.current
        metrics = self.metrics
        if metrics is None:
            try:
                await self.app(scope, receive, send)
            finally:
                self.current -= 1
            return
        status = 500  # the app failed before answering

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        metrics.active_requests.inc()
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.current -= 1
            metrics.active_requests.dec()
            method = scope["method"]
            metrics.http_requests(
                metrics.route_label(scope["path"], status),
                method if method in HTTP_METHODS else OTHER,
                str(status),
            ).inc()

    def reset_peak(self) -> None:
        self.peak = self.current

    def snapshot(self) -> dict[str, int]:
        return {"active_requests": self.current, "peak_active_requests": self.peak}
