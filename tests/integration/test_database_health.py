"""Health checks against real databases that really go away.

PostgreSQL and MySQL are reached through a local TCP proxy that the test closes (every
connection dropped, new ones refused) and reopens; for SQLite the database file is moved aside and
a directory put in its place (the test runs as any user, so permissions cannot be relied on), and
the pool's open connections are dropped, as a crashed disk or volume would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Scope

from tests.conftest import MY_HOST, MY_PORT, PG_HOST, PG_PORT, AppHarness, DatabaseFactory
from tests.seed import create_user
from tollway.api.health import router as health_router
from tollway.auth.sessions import SessionCodec
from tollway.db.engine import Database
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON
from tollway.ops.health import ActiveRequests, DatabaseHealth, HealthReport, health_routes
from tollway.settings import Settings

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS = "redis://127.0.0.1:1/0"


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a database server until :meth:`close`; :meth:`reopen` brings
    it back on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0.05)

    async def reopen(self) -> None:
        await self.start()


class Outage:
    """Makes the database of ``settings`` unreachable, then reachable again."""

    def __init__(self, db: Database, proxy: TcpProxy | None) -> None:
        self.db = db
        self.proxy = proxy
        self.active = False

    async def begin(self) -> None:
        self.active = True
        if self.proxy is not None:
            await self.proxy.close()
            return
        path = Path(str(self.db.url.url.database))
        await self.db.engine.dispose()
        if path.exists():
            path.rename(path.with_name(path.name + ".away"))
        path.mkdir()

    async def end(self) -> None:
        if not self.active:
            return
        self.active = False
        if self.proxy is not None:
            await self.proxy.reopen()
            return
        path = Path(str(self.db.url.url.database))
        path.rmdir()
        away = path.with_name(path.name + ".away")
        if away.exists():
            away.rename(path)


@pytest.fixture
async def proxy(backend: str) -> AsyncIterator[TcpProxy | None]:
    if backend == "sqlite":
        yield None
        return
    server = TcpProxy(*((PG_HOST, PG_PORT) if backend == "postgresql" else (MY_HOST, MY_PORT)))
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def settings(
    databases: DatabaseFactory, make_settings: Callable[..., Settings], proxy: TcpProxy | None
) -> Settings:
    """This module's settings reach PostgreSQL and MySQL through the proxy."""
    dsn = await databases.create()
    if proxy is not None:
        host, port = proxy.upstream
        dsn = dsn.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
    return make_settings(sql_dsn=dsn)


@pytest.fixture
async def api(harness: AppHarness) -> AppHarness:
    """The harness with ``/api/status/test`` mounted (once the app includes the router, as is)."""
    app = harness.app.api
    if not any(getattr(route, "path", "") == "/api/status/test" for route in app.routes):
        app.include_router(health_router, prefix="/api")  # type: ignore[attr-defined]
    return harness


async def headers_for(harness: AppHarness, username: str, role: int) -> dict[str, str]:
    user_id = await create_user(harness.runtime.db, username, role=role)
    token = SessionCodec(harness.runtime.settings.session_secret).encode(user_id)
    return {"Authorization": f"Bearer {token}", "New-Api-User": str(user_id)}


# ----- /api/status/test ----------------------------------------------------------------------


# An SQLite outage (the file made unreadable) disposes the pool while a ping may hold a connection:
# aiosqlite warns when that orphan is garbage-collected, which may happen during the test itself.
# Nothing leaks (its thread has ended); the fixture below collects what is left after each test.
ORPHAN_WARNING = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function Connection.__del__:pytest.PytestUnraisableExceptionWarning"
)


@ORPHAN_WARNING
@pytest.mark.db
async def test_status_test_reports_the_database(api: AppHarness, proxy: TcpProxy | None) -> None:
    client = api.client
    admin = await headers_for(api, "admin", ROLE_ADMIN)
    user = await headers_for(api, "alice", ROLE_COMMON)
    response = await client.get("/api/status/test", headers=admin)
    assert (response.status_code, response.json()) == (200, {"success": True, "message": "Server is running"})
    assert (await client.get("/api/status/test", headers=user)).status_code == 403
    assert (await client.get("/api/status/test")).status_code == 401

    outage = Outage(api.runtime.db, proxy)
    await outage.begin()
    try:
        for _ in range(2):  # the first finds out while authenticating, the second from the cache
            response = await client.get("/api/status/test", headers=admin)
            assert response.status_code == 503
            assert response.json() == {"success": False, "message": "database connection failed"}
        assert (await client.get("/api/status/test")).status_code == 401
        forged = {"Authorization": "Bearer " + SessionCodec("other").encode(1), "New-Api-User": "1"}
        assert (await client.get("/api/status/test", headers=forged)).status_code == 401
        mismatched = {**admin, "New-Api-User": "999"}
        assert (await client.get("/api/status/test", headers=mismatched)).status_code == 401
    finally:
        await outage.end()

    async with asyncio.timeout(10):
        while (response := await client.get("/api/status/test", headers=admin)).status_code != 200:
            await asyncio.sleep(0.2)
    assert response.json() == {"success": True, "message": "Server is running"}


# ----- DatabaseHealth ------------------------------------------------------------------------


class CountingHealth(DatabaseHealth):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pings = 0

    async def ping(self) -> HealthReport:
        self.pings += 1
        return await super().ping()


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings)
    yield db
    await db.dispose()
    # An SQLite outage disposes the pool while a ping may hold a connection; aiosqlite then warns
    # when that orphan is collected, at a random later moment (in another test). Collect it here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@ORPHAN_WARNING
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_check_is_cached_success_for_max_age_failure_for_a_second(
    database: Database, proxy: TcpProxy | None
) -> None:
    now = [100.0]
    health = CountingHealth(database, clock=lambda: now[0])
    assert (await health.check()).ok and health.pings == 1
    now[0] += 9.9
    assert (await health.check()).ok and health.pings == 1
    assert (await health.check(max_age=5)).ok and health.pings == 2
    results = await asyncio.gather(*(health.check(max_age=0) for _ in range(5)))
    assert all(r.ok for r in results) and health.pings <= 3  # concurrent callers share pings
    outage = Outage(database, proxy)
    await outage.begin()
    try:
        failed = await health.check(max_age=0)
        assert not failed.ok and failed.failed == ["database"]
        assert "SQLite file" in failed.errors["database"]
        pings = health.pings
        now[0] += 0.5
        assert not (await health.check()).ok and health.pings == pings  # failure cached 1 s
        now[0] += 0.6
        assert not (await health.check()).ok and health.pings == pings + 1
    finally:
        await outage.end()
    now[0] += 1.1
    assert (await health.check()).ok


@ORPHAN_WARNING
async def test_watch_logs_one_line_down_and_one_line_back(
    database: Database, proxy: TcpProxy | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tollway.health")
    health = CountingHealth(database, timeout=1.0)
    watcher = asyncio.create_task(health.watch(interval=0.05))
    outage = Outage(database, proxy)

    async def pings(count: int) -> None:
        target = health.pings + count
        async with asyncio.timeout(15):
            while health.pings < target:
                await asyncio.sleep(0.02)

    try:
        await pings(3)
        await outage.begin()
        await pings(5)
        await outage.end()
        await pings(4)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await outage.end()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tollway.health"]
    assert [level for level, _ in lines] == [logging.ERROR, logging.INFO], lines
    assert lines[0][1].startswith("health: unreachable: database: ")
    assert lines[1][1] == "health: database reachable again"
    assert health.last is not None and health.last.ok


# ----- /healthz and /readyz ------------------------------------------------------------------


async def probe(health: DatabaseHealth, path: str, method: str = "GET") -> httpx.Response:
    app = Starlette(routes=health_routes(health))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return await client.request(method, path)


@ORPHAN_WARNING
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_healthz_never_needs_the_database(database: Database, proxy: TcpProxy | None) -> None:
    health = DatabaseHealth(database)
    outage = Outage(database, proxy)
    await outage.begin()
    try:
        response = await probe(health, "/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        assert (await probe(health, "/healthz", "HEAD")).status_code == 200
        ready = await probe(health, "/readyz")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "failed": ["database"],
            "checks": {"database": "failed"},
        }
    finally:
        await outage.end()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_readyz_with_redis_up_and_down(database: Database) -> None:
    up = DatabaseHealth(database, REDIS_URL)
    down = DatabaseHealth(database, DEAD_REDIS, timeout=1.0)
    broken = DatabaseHealth(database, "http://not-a-redis-url")
    try:
        response = await probe(up, "/readyz")
        assert (response.status_code, response.json()) == (
            200,
            {"status": "ok", "checks": {"database": "ok", "redis": "ok"}},
        )
        for health in (down, broken):
            response = await probe(health, "/readyz")
            assert response.status_code == 503
            assert response.json() == {
                "status": "unavailable",
                "failed": ["redis"],
                "checks": {"database": "ok", "redis": "failed"},
            }
        assert "Redis at 127.0.0.1:1" in (await down.ping()).errors["redis"]
        assert "REDIS_CONN_STRING" in (await broken.ping()).errors["redis"]
    finally:
        for health in (up, down, broken):
            await health.aclose()


async def test_readyz_names_a_failed_log_database(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        sql_dsn=f"sqlite:///{tmp_path / 'main.db'}", log_sql_dsn=f"sqlite:///{tmp_path / 'logs.db'}"
    )
    db = Database(settings)
    now = [0.0]
    try:
        health = DatabaseHealth(db, clock=lambda: now[0])
        response = await probe(health, "/readyz")
        assert response.json()["checks"] == {"database": "ok", "log_database": "ok"}
        await db.log_engine.dispose()
        (tmp_path / "logs.db").rename(tmp_path / "logs.away")
        (tmp_path / "logs.db").mkdir()
        now[0] += 2.1  # past the 2 s /readyz allows a success to be cached
        response = await probe(health, "/readyz")
        assert response.status_code == 503
        assert response.json()["failed"] == ["log_database"]
    finally:
        await db.dispose()


# ----- ActiveRequests ------------------------------------------------------------------------


def counting_app() -> tuple[ActiveRequests, asyncio.Event]:
    release = asyncio.Event()

    async def slow(_request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("done")

    async def stream(_request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first "
            await release.wait()
            yield b"last"

        return StreamingResponse(chunks(), media_type="text/plain")

    counter = ActiveRequests(Starlette(routes=[Route("/slow", slow), Route("/stream", stream)]))
    return counter, release


async def test_active_requests_counts_slow_requests() -> None:
    counter, release = counting_app()
    transport = httpx.ASGITransport(app=counter)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        calls = [asyncio.create_task(client.get("/slow")) for _ in range(3)]
        async with asyncio.timeout(5):
            while counter.current < 3:
                await asyncio.sleep(0.01)
        assert (counter.current, counter.peak) == (3, 3)
        release.set()
        responses = await asyncio.gather(*calls)
    assert [r.text for r in responses] == ["done"] * 3
    assert (counter.current, counter.peak) == (0, 3)
    counter.reset_peak()
    assert counter.snapshot() == {"active_requests": 0, "peak_active_requests": 0}


def http_scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"app")],
        "client": ("127.0.0.1", 1234),
        "server": ("app", 80),
    }


async def test_active_requests_counts_a_stream_until_its_last_byte() -> None:
    counter, release = counting_app()
    counts: list[tuple[bytes, int]] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            counts.append((message["body"], counter.current))
            if message["body"] == b"first ":
                asyncio.get_running_loop().call_later(0.05, release.set)

    await asyncio.wait_for(counter(http_scope("/stream"), receive, send), 5)
    assert counts == [(b"first ", 1), (b"last", 1)]
    assert (counter.current, counter.peak) == (0, 1)


async def test_active_requests_releases_a_stream_the_client_abandons() -> None:
    counter, _release = counting_app()  # never released: the stream hangs after one chunk
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            assert counter.current == 1
            gone.set()

    await asyncio.wait_for(counter(http_scope("/stream"), receive, send), 5)
    assert counter.current == 0


async def test_active_requests_ignores_lifespan() -> None:
    seen: list[str] = []

    async def app(scope: Scope, _receive: Any, _send: Any) -> None:
        seen.append(scope["type"])

    counter = ActiveRequests(app)
    await counter({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"] and (counter.current, counter.peak) == (0, 0)
