"""A live Tollway (uvicorn on a loopback port, in the test's event loop) and fake upstreams."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from tests.fakes.upstream import FakeUpstream
from tollway.app import TollwayApp, create_app
from tollway.db.models import Log
from tollway.runtime import Runtime
from tollway.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Live:
    app: TollwayApp
    base_url: str
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    async def logs(self) -> list[Log]:
        """Every log row, after the writer flushed what it holds."""
        await self.runtime.relay.writer.flush()
        async with self.runtime.db.log_session() as session:
            return list((await session.scalars(select(Log).order_by(Log.id))).all())

    def refresh(self) -> None:
        """Seeded rows bypass the API: tell the caches, as the API does."""
        self.runtime.relay.channels.changed()
        self.runtime.relay.accounts.tokens_changed()
        self.runtime.relay.accounts.users_changed()

    async def set_option(self, name: str, value: str) -> None:
        await self.runtime.options.save(name, value)


@pytest.fixture
async def live_factory() -> AsyncIterator[Callable[..., Any]]:
    servers: list[tuple[uvicorn.Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(settings: Settings) -> Live:
        app = create_app(settings, run_migrations=True)
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        servers.append((server, task, client))
        return Live(app, f"http://127.0.0.1:{port}", client)

    yield start
    for server, task, client in servers:
        await client.aclose()
        server.should_exit = True
        await task


@pytest.fixture
async def live(settings: Settings, live_factory: Callable[..., Any]) -> Live:
    result: Live = await live_factory(settings)
    return result


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


@pytest.fixture
async def upstream_b() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up
