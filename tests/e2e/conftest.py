"""A live Tollway on a loopback port, in the test's event loop, and fake upstreams.

The server is granian with the RSGI interface, as ``tollway serve`` runs it (granian's embedded
mode: one worker, in this event loop); ``live_factory(settings, server="uvicorn")`` runs the ASGI
application under uvicorn instead, as ``SERVER=uvicorn`` does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from granian.constants import Interfaces
from granian.server.embed import Server as EmbeddedGranian
from sqlalchemy import select

from tests.fakes.upstream import FakeUpstream
from tollway.app import TollwayApp, create_app
from tollway.db.models import Log
from tollway.rsgi import RsgiApp
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


async def _serve_uvicorn(app: TollwayApp, port: int) -> Callable[[], Awaitable[None]]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)

    async def stop() -> None:
        server.should_exit = True
        await task

    return stop


async def _serve_granian(app: TollwayApp, port: int) -> Callable[[], Awaitable[None]]:
    rsgi = RsgiApp(app)
    await rsgi.startup()

    async def handler(scope: Any, protocol: Any) -> None:  # no __rsgi_init__: started above
        await rsgi.__rsgi__(scope, protocol)

    server = EmbeddedGranian(
        handler, address="127.0.0.1", port=port, interface=Interfaces.RSGI, websockets=False
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if task.done():
            task.result()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        await asyncio.sleep(0.02)

    async def stop() -> None:
        server.stop()
        await task
        await rsgi.shutdown()

    return stop


@pytest.fixture
async def live_factory() -> AsyncIterator[Callable[..., Any]]:
    servers: list[tuple[Callable[[], Awaitable[None]], httpx.AsyncClient]] = []

    async def start(settings: Settings, server: str = "granian") -> Live:
        app = create_app(settings, run_migrations=True)
        port = free_port()
        serve = _serve_granian if server == "granian" else _serve_uvicorn
        stop = await serve(app, port)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        servers.append((stop, client))
        return Live(app, f"http://127.0.0.1:{port}", client)

    yield start
    for stop, client in servers:
        await client.aclose()
        await stop()


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
