"""Graceful shutdown loses nothing: N answered requests, SIGTERM at once, restart → exactly N log
rows, and the balances agree with them. Runs `tollway serve` as an operator does (two workers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.e2e.conftest import free_port
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.billing.balances import leased_amounts
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models import Log, QuotaLease, User
from tollway.db.models.lease import ACCOUNT_USER
from tollway.settings import Settings

N = 60


def start_server(settings: Settings, tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQL_", "LOG_SQL"))}
    env.update(
        SQL_DSN=settings.sql_dsn,
        SQLITE_PATH=settings.sqlite_path,
        PORT=str(port),
        HOST="127.0.0.1",
        WORKERS="2",
        SESSION_SECRET=settings.session_secret,
        CRYPTO_SECRET=settings.crypto_secret,
    )
    with open(tmp_path / "stderr.log", "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tollway", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


async def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}")
            try:
                if (await client.get(f"{base}/api/status")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("server did not start")


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, tmp_path: Path, port: int | None = None
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """``tollway serve`` (two workers) answering at the base URL; killed on the way out if a test
    did not stop it."""
    port = port or free_port()
    process = start_server(settings, tmp_path, port)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


async def seed(db: Database, settings: Settings, upstream: FakeUpstream) -> tuple[int, str]:
    """Migrate, then a user with 50M quota, a key of theirs and a channel to ``upstream``."""
    await migrate(db)
    user_id = await create_user(db, quota=50_000_000)
    _, key = await create_token(db, user_id, crypto_secret=settings.crypto_secret)
    await create_channel(db, upstream.base_url)
    return user_id, key


async def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    for _ in range(350):
        if process.poll() is not None:
            break
        await asyncio.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("server did not stop within 35 s of SIGTERM")
    assert process.returncode == 0


@pytest.mark.db
async def test_sigterm_right_after_n_requests_keeps_every_log(settings: Settings, tmp_path: Path) -> None:
    db = Database(settings)
    async with FakeUpstream(ttft=0.05) as upstream:
        user_id, key = await seed(db, settings, upstream)
        port = free_port()
        try:
            async with serving(settings, tmp_path, port) as (base, process):
                await one_batch_then_sigterm(db, base, process, user_id, key)
            async with serving(settings, tmp_path, port) as (base, process):  # and it comes back
                async with httpx.AsyncClient(timeout=30) as client:
                    again = await client.post(f"{base}/v1/chat/completions", json=BODY, headers=bearer(key))
                assert again.status_code == 200
                await stop(process)
            async with db.log_session() as session:
                assert await session.scalar(select(func.count()).select_from(Log)) == N + 1
        finally:
            await db.dispose()


BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def one_batch_then_sigterm(
    db: Database, base: str, process: subprocess.Popen[bytes], user_id: int, key: str
) -> None:
    """N answered requests, SIGTERM at once: N log rows, leases returned, balances consistent."""
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(
            *(client.post(f"{base}/v1/chat/completions", json=BODY, headers=bearer(key)) for _ in range(N))
        )
    assert [r.status_code for r in responses] == [200] * N
    await stop(process)  # at once: logs may still sit in the writers' queues
    async with db.log_session() as session:
        assert await session.scalar(select(func.count()).select_from(Log)) == N
        logged = await session.scalar(select(func.sum(Log.quota)))
    async with db.session() as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert await session.scalar(select(func.count()).select_from(QuotaLease)) == 0  # all returned
        assert (await leased_amounts(session, ACCOUNT_USER, [user_id])).get(user_id, 0) == 0
        assert user.used_quota == logged
        assert user.quota == 50_000_000 - logged
        assert user.request_count == N


@pytest.mark.db
async def test_sigterm_lets_streams_in_flight_finish(settings: Settings, tmp_path: Path) -> None:
    """Streams still running when SIGTERM arrives are delivered whole, charged and logged."""
    db = Database(settings)
    streams = 6
    async with FakeUpstream(chunks=[f" w{i}" for i in range(20)], chunk_delay=0.1) as upstream:
        user_id, key = await seed(db, settings, upstream)
        try:
            async with serving(settings, tmp_path) as (base, process):
                await streams_then_sigterm(db, base, process, user_id, key, streams)
        finally:
            await db.dispose()


async def streams_then_sigterm(
    db: Database, base: str, process: subprocess.Popen[bytes], user_id: int, key: str, streams: int
) -> None:
    """SIGTERM while ``streams`` streams run: each is delivered whole, charged and logged."""
    body = {**BODY, "stream": True}
    started = asyncio.Event()
    opened = 0

    async def one(client: httpx.AsyncClient) -> str:
        nonlocal opened
        async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=bearer(key)) as r:
            assert r.status_code == 200
            opened += 1
            if opened == streams:
                started.set()
            return "".join([chunk async for chunk in r.aiter_text()])

    async with httpx.AsyncClient(timeout=30) as client:
        tasks = [asyncio.create_task(one(client)) for _ in range(streams)]
        await asyncio.wait_for(started.wait(), 10)
        process.send_signal(signal.SIGTERM)  # about 2 s of every stream still to come
        texts = await asyncio.gather(*tasks)
    for text in texts:
        assert " w19" in text and text.rstrip().endswith("data: [DONE]")
    await stop(process)
    async with db.log_session() as session:
        rows = (await session.scalars(select(Log))).all()
    assert len(rows) == streams
    assert all(row.completion_tokens > 0 and row.quota > 0 for row in rows)
    async with db.session() as session:
        user = await session.get(User, user_id)
        assert user is not None
        assert user.used_quota == sum(row.quota for row in rows)
