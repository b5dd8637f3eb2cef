"""Shared fixtures: settings, real databases (SQLite, PostgreSQL, MariaDB/MySQL) and the app.

Every database test runs on the three backends. Each test gets a database of its own with a unique
name, dropped afterwards. A server that cannot be reached fails the run under CI (``CI=true``)
and is skipped, with the reason shown, elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tollway.app import TollwayApp, create_app
from tollway.runtime import Runtime
from tollway.settings import Settings, load_settings

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
MY_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MY_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MY_USER = os.environ.get("TEST_MYSQL_USER", "root")
MY_PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")

BACKENDS = ("sqlite", "postgresql", "mysql")


def _unavailable(backend: str, exc: BaseException) -> None:
    message = f"{backend} server not reachable: {exc}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


async def _create_postgres(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_postgres(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _mysql_execute(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(
        host=MY_HOST, port=MY_PORT, user=MY_USER, password=MY_PASSWORD, connect_timeout=5
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(sql)
    finally:
        conn.close()


class DatabaseFactory:
    """Creates uniquely named databases on one backend and drops them at the end of the test."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self._created: list[str] = []

    async def create(self) -> str:
        """Return a DSN (in new-api's forms, as users write them) for a fresh, empty database."""
        name = f"tollway_test_{uuid.uuid4().hex[:12]}"
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp_path / (name + '.db')}"
        try:
            if self.backend == "postgresql":
                await _create_postgres(name)
            else:
                await _mysql_execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        except (OSError, ConnectionError) as exc:
            _unavailable(self.backend, exc)
        self._created.append(name)
        if self.backend == "postgresql":
            return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}?sslmode=disable"
        auth = f"{MY_USER}:{MY_PASSWORD}" if MY_PASSWORD else MY_USER
        return f"{auth}@tcp({MY_HOST}:{MY_PORT})/{name}?charset=utf8mb4&parseTime=True&loc=Local"

    async def drop_all(self) -> None:
        for name in self._created:
            if self.backend == "postgresql":
                await _drop_postgres(name)
            else:
                await _mysql_execute(f"DROP DATABASE IF EXISTS `{name}`")
        self._created.clear()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def databases(backend: str, tmp_path: Path) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(backend, tmp_path)
    yield factory
    await factory.drop_all()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: data in ``tmp_path``, fixed secrets, any field overridable."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "sqlite_path": str(tmp_path / "data" / "tollway.db"),
            "session_secret": "test-session-secret",
            "crypto_secret": "test-crypto-secret",
            "global_api_rate_limit_enable": False,
            "critical_rate_limit_enable": False,
            "search_rate_limit_enable": False,
        }
        values.update(overrides)
        return load_settings(_env_file=None, **values)

    return build


@pytest.fixture
async def settings(databases: DatabaseFactory, make_settings: Callable[..., Settings]) -> Settings:
    """Settings pointing at a fresh database of the current backend."""
    return make_settings(sql_dsn=await databases.create())


class AppHarness:
    """A started app (lifespan run) and an HTTP client talking to it in-process."""

    def __init__(self, app: TollwayApp, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[AppHarness]:
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as client:
            yield AppHarness(app, client)
