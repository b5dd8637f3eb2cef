"""The ``tollway`` command: ``serve``, ``migrate`` and the operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from tollway import __version__
from tollway.db.engine import Database
from tollway.db.migrate import migrate as apply_migrations
from tollway.errors import ConfigError
from tollway.node_sync import NODE_SYNC_ENV, NodeCounters
from tollway.ops.logging import configure_logging
from tollway.settings import Settings, load_settings

log = logging.getLogger("tollway.cli")
F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(func: F) -> F:
    """Configuration problems end the command with one clear line, not a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"tollway: {exc}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _settings(**overrides: Any) -> Settings:
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(
        debug=settings.debug,
        log_dir=settings.log_dir,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backup_count,
    )
    return settings


async def _prepare_database(settings: Settings, *, run_migrations: bool) -> None:
    db = Database(settings)
    try:
        await db.check_reachable()
        if run_migrations:
            await apply_migrations(db)
    finally:
        await db.dispose()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tollway")
def cli() -> None:
    """Tollway: an OpenAI-compatible LLM API gateway with metering, billing and usage logs."""


@cli.command()
@click.option("--port", type=int, help="Listen port (env PORT, default 3000).")
@click.option("--host", help="Listen address (env HOST, default 0.0.0.0).")
@click.option("--workers", type=int, help="Worker processes (env WORKERS, default one per core).")
@click.option("--log-dir", help="Also write logs to rotated files in this folder (env LOG_DIR).")
@_one_line_errors
def serve(port: int | None, host: str | None, workers: int | None, log_dir: str | None) -> None:
    """Run the gateway (applies migrations first on a master node)."""
    import uvicorn

    settings = _settings(port=port, host=host, workers=workers, log_dir=log_dir)
    asyncio.run(_prepare_database(settings, run_migrations=settings.is_master))
    settings = settings.with_secrets()
    # Workers read their settings from the environment: hand them what the command line decided.
    os.environ.update(
        {
            "PORT": str(settings.port),
            "HOST": settings.host,
            "LOG_DIR": settings.log_dir,
            "SESSION_SECRET": settings.session_secret,
            "CRYPTO_SECRET": settings.crypto_secret,
        }
    )
    sync_file = NodeCounters.create_file(settings.data_dir)
    os.environ[NODE_SYNC_ENV] = sync_file
    count = settings.worker_count()
    log.info(
        "Tollway %s listening on %s:%d with %d worker(s)", __version__, settings.host, settings.port, count
    )
    try:
        uvicorn.run(
            "tollway.app:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=count,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=20,
            server_header=False,
        )
    finally:
        with contextlib.suppress(OSError):
            Path(sync_file).unlink()


@cli.command()
@_one_line_errors
def migrate() -> None:
    """Apply database migrations (main database and log database) and exit."""
    settings = _settings()
    asyncio.run(_prepare_database(settings, run_migrations=True))
    click.echo(f"migrations applied to {settings.database_url.describe()}")
    if settings.log_database_url:
        click.echo(f"log table migrations applied to {settings.log_database_url.describe()}")


def main() -> None:
    cli(prog_name="tollway")
