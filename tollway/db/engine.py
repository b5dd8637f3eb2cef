"""Engines for the main and the log database, with the pool settings and SQLite pragmas."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from tollway.db.dsn import DatabaseUrl
from tollway.errors import ConfigError
from tollway.settings import Settings


def create_engine_for(url: DatabaseUrl, settings: Settings) -> AsyncEngine:
    """An async engine for ``url`` honouring ``SQL_MAX_*``; SQLite gets WAL, a busy timeout and FKs."""
    kwargs: dict[str, Any] = {}
    if url.is_sqlite:
        if url.url.database and url.url.database != ":memory:":
            Path(url.url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": settings.sqlite_busy_timeout / 1000}
    else:
        open_conns = settings.sql_max_open_conns
        idle = min(settings.sql_max_idle_conns, open_conns)
        kwargs["pool_size"] = max(idle, 1)
        kwargs["max_overflow"] = max(open_conns - idle, 0)
        kwargs["pool_recycle"] = settings.sql_max_lifetime or -1
        kwargs["pool_pre_ping"] = True
        kwargs["pool_timeout"] = 30
    engine = create_async_engine(url.url, **kwargs)
    if url.is_sqlite:
        _install_sqlite_pragmas(engine, settings.sqlite_busy_timeout)
    return engine


def _install_sqlite_pragmas(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class Database:
    """The main database and the log database (the same engine unless ``LOG_SQL_DSN`` is set)."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.database_url
        self.log_url = settings.log_database_url or self.url
        self.engine = create_engine_for(self.url, settings)
        self.separate_logs = settings.log_database_url is not None
        self.log_engine = create_engine_for(self.log_url, settings) if self.separate_logs else self.engine
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self.log_session = async_sessionmaker(self.log_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.url.dialect

    async def check_reachable(self, timeout_seconds: float = 10.0) -> None:
        """Fail with a one-line :class:`ConfigError` naming the database when it cannot be reached."""
        for url, engine in ((self.url, self.engine), (self.log_url, self.log_engine)):
            try:
                async with asyncio.timeout(timeout_seconds), engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            except (OSError, DBAPIError, OperationalError, TimeoutError, ConnectionError) as exc:
                reason = _first_line(exc)
                raise ConfigError(
                    f"cannot reach the database ({url.describe()}, {url.masked()}): {reason}"
                ) from None

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Connections checked out and idle in each engine's pool (``main``, and ``logs`` when separate)."""
        engines = {"main": self.engine, **({"logs": self.log_engine} if self.separate_logs else {})}
        usage: dict[str, dict[str, int]] = {}
        for name, engine in engines.items():
            pool = engine.sync_engine.pool
            in_use = getattr(pool, "checkedout", None)
            idle = getattr(pool, "checkedin", None)
            if callable(in_use) and callable(idle):
                usage[name] = {"in_use": int(in_use()), "idle": int(idle())}
        return usage

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.separate_logs:
            await self.log_engine.dispose()


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text_ = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text_[:300]
