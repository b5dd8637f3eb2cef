"""A server worker without Redis never imports redis (~6 MB) nor aiohttp (~8 MB with yarl, multidict,
…): redis is loaded only when ``REDIS_CONN_STRING`` is set, aiohttp only when the first webhook,
Bark or Gotify notice is sent.

Runs in fresh interpreters: the test process itself imported both long ago. The database is
migrated by a separate process first, as the CLI does before it starts the workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from aiohttp.abc import AbstractResolver

from tollway.ops.notify_transports import GuardedResolver

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/15"

MIGRATE = textwrap.dedent(
    """
    import asyncio, sys
    from tollway.db.engine import Database
    from tollway.db.migrate import migrate
    from tollway.settings import Settings

    async def main(path):
        db = Database(Settings(sqlite_path=path, session_secret="s" * 24, redis_conn_string=""))
        try:
            await migrate(db)
        finally:
            await db.dispose()

    asyncio.run(main(sys.argv[1]))
    """
)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from tollway.app import create_app
    from tollway.settings import Settings

    async def main(path, redis_url):
        settings = Settings(sqlite_path=path, session_secret="s" * 24, redis_conn_string=redis_url)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            print("redis", "redis" in sys.modules)
            print("aiohttp", "aiohttp" in sys.modules)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def run(script: str, *args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_a_worker_imports_redis_only_when_configured_and_aiohttp_not_at_start(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    run(MIGRATE, path)
    assert run(WORKER, path, "") == ["redis False", "aiohttp False"]
    # The lazy path is live: with REDIS_CONN_STRING set, the limiter, the notification throttle
    # and the health check load redis at start.
    assert run(WORKER, path, REDIS_URL) == ["redis True", "aiohttp False"]


async def test_the_guarded_resolver_is_an_aiohttp_resolver() -> None:
    resolver = GuardedResolver(lambda: True)
    try:
        assert isinstance(resolver, AbstractResolver)
    finally:
        await resolver.close()
