"""The ``tollway`` command: ``serve``, ``migrate`` and the operator tools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tollway import __version__, server
from tollway.cli_logs import logs as logs_group
from tollway.cli_profile import profile as profile_group
from tollway.db.engine import Database
from tollway.db.migrate import migrate as apply_migrations
from tollway.errors import ConfigError
from tollway.node_sync import NODE_SYNC_ENV, NodeCounters
from tollway.ops.logging import configure_logging
from tollway.settings import Settings, load_settings

if TYPE_CHECKING:
    from tollway.db.dsn import DatabaseUrl
    from tollway.ops.backup import ExternalCommand

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
    # glibc gives each thread that allocates its own malloc arena (the SQLite driver's thread, the
    # thread pool): two arenas keep a worker's resident memory lower at no measurable cost.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    sync_file = NodeCounters.create_file(settings.data_dir)
    os.environ[NODE_SYNC_ENV] = sync_file
    metrics_dir = _fresh_metrics_dir(settings.data_dir)
    count = settings.worker_count()
    log.info(
        "Tollway %s listening on %s:%d with %d worker(s)", __version__, settings.host, settings.port, count
    )
    try:
        server.serve(settings.host, settings.port, count)
    finally:
        with contextlib.suppress(OSError):
            Path(sync_file).unlink()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's name (tollway.ops.metrics too)


def _fresh_metrics_dir(data_dir: Path) -> Path | None:
    """Point the workers' Prometheus client at one empty folder, so that a scrape answered by any
    worker sums them all. An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as it is.

    prometheus-client reads the variable when it is imported: a server forking its workers from
    this process would hand them a client that had read it unset, so it is not imported here."""
    if os.environ.get(MULTIPROC_ENV):
        return None
    folder = data_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


@cli.command()
@_one_line_errors
def migrate() -> None:
    """Apply database migrations (main database and log database) and exit."""
    settings = _settings()
    asyncio.run(_prepare_database(settings, run_migrations=True))
    click.echo(f"migrations applied to {settings.database_url.describe()}")
    if settings.log_database_url:
        click.echo(f"log table migrations applied to {settings.log_database_url.describe()}")


def _backup_one(url: DatabaseUrl, target: Path, *, overwrite: bool, quick: bool) -> None:
    from tollway.ops.backup import backup_sqlite, external_backup, external_backup_command, sqlite_file

    if url.is_sqlite:
        backup_sqlite(sqlite_file(url), target, overwrite=overwrite, quick_check=quick)
    else:
        command = external_backup_command(url, target)
        if not command.available():
            _external_tool_missing(command, url, restoring=False)
        external_backup(url, target, overwrite=overwrite)
    click.echo(f"backed up {url.describe()} to {target}")


def _external_tool_missing(command: ExternalCommand, url: DatabaseUrl, *, restoring: bool) -> None:
    package = "postgresql-client" if url.dialect == "postgresql" else "mariadb-client (or mysql-client)"
    secret = "PGPASSWORD" if url.dialect == "postgresql" else "MYSQL_PWD"
    steps = (
        [
            "1. make sure the backup file is complete (its tool exited 0 when it was made)",
            "2. stop every Tollway node, then run:",
            f"     {command.display()}",
            "3. start Tollway and check GET /api/status",
            "4. compare users, quotas and recent logs with what you expect",
        ]
        if restoring
        else [f"run: {command.display()}", "then copy the file off this machine"]
    )
    click.echo(
        f"tollway: {command.tool} is not installed (package {package}). By hand"
        f" ({secret} holds the database password):\n  " + "\n  ".join(steps),
        err=True,
    )
    sys.exit(1)


@cli.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Backup file (default: <data dir>/backups/tollway-<UTC time>.db, .dump or .sql).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing backup file.")
@click.option("--quick", is_flag=True, help="SQLite: verify with quick_check instead of integrity_check.")
@_one_line_errors
def backup(output: Path | None, overwrite: bool, quick: bool) -> None:
    """Back up the database while the server runs (SQLite online copy, else pg_dump / mysqldump)."""
    from tollway.ops.backup import BACKUP_EXTENSIONS, BackupError, default_backup_path

    settings = _settings()
    url = settings.database_url
    target = output or default_backup_path(settings.data_dir / "backups", url)
    try:
        _backup_one(url, target, overwrite=overwrite, quick=quick)
        log_url = settings.log_database_url
        if log_url is not None:  # LOG_SQL_DSN: the logs table lives in a database of its own
            log_target = target.with_name(f"{target.stem}.logs.{BACKUP_EXTENSIONS[log_url.dialect]}")
            _backup_one(log_url, log_target, overwrite=overwrite, quick=quick)
    except BackupError as exc:
        click.echo(f"tollway: {exc}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("backup_file", metavar="PATH", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Restore even if a server seems to have the database open.")
@click.option(
    "--logs",
    "logs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also restore the separate log database (LOG_SQL_DSN) from this file.",
)
@_one_line_errors
def restore(backup_file: Path, force: bool, logs_file: Path | None) -> None:
    """Replace the database with a backup. Stop the server first; SQLite keeps the old file beside it."""
    from tollway.ops.backup import BackupError, check_sqlite_backup

    settings = _settings()
    # (database, backup file, tables an SQLite backup of it must have)
    targets: list[tuple[DatabaseUrl, Path, tuple[str, ...]]] = [
        (settings.database_url, backup_file, ("users", "tokens", "channels"))
    ]
    log_url = settings.log_database_url
    if logs_file is not None:
        if log_url is None:
            raise ConfigError("--logs given but LOG_SQL_DSN is not set")
        targets.append((log_url, logs_file, ("logs",)))
    try:
        for url, source, tables in targets:  # check every SQLite backup before replacing anything
            if url.is_sqlite:
                check_sqlite_backup(source, require_tables=tables)
        for url, source, tables in targets:
            _restore_one(url, source, force=force, tables=tables)
    except BackupError as exc:
        click.echo(f"tollway: {exc}", err=True)
        sys.exit(1)


def _restore_one(url: DatabaseUrl, source: Path, *, force: bool, tables: tuple[str, ...]) -> None:
    from tollway.ops.backup import external_restore_command, restore_sqlite, sqlite_file

    if url.is_sqlite:
        kept = restore_sqlite(source, sqlite_file(url), force=force, require_tables=tables)
        click.echo(f"restored {url.describe()} from {source}")
        if kept is not None:
            click.echo(f"the previous database is kept as {kept}")
        return
    command = external_restore_command(url, source)
    if not command.available():
        _external_tool_missing(command, url, restoring=True)
    if not force:
        click.confirm(
            f"Replace the tables of {url.describe()} with {source}? Every Tollway node must be stopped",
            abort=True,
        )
    command.run()
    click.echo(f"restored {url.describe()} from {source}")


@cli.command()
@click.option(
    "--base-url", required=True, help="The gateway, e.g. http://127.0.0.1:3000 (a bare host: https)."
)
@click.option("--key", required=True, help="API key (sk-…) sent as the bearer token.")
@click.option("--count", "-n", type=click.IntRange(min=1), required=True, help="Number of requests.")
@click.option("--model", default="gpt-3.5-turbo", show_default=True, help="Model to ask.")
@click.option("--stream", is_flag=True, help="Stream the answers (reports time to first byte too).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the summary, not a line per request.")
@_one_line_errors
def latency(
    base_url: str,
    key: str,
    count: int,
    model: str,
    stream: bool,
    concurrency: int,
    timeout: float,
    quiet: bool,
) -> None:
    """Time N chat requests against a gateway (new-api's bin/time_test.sh); exit 1 if any failed."""
    from tollway.ops.latency import Sample, latency_check

    def show(sample: Sample) -> None:
        click.echo(sample.line())

    try:
        report = asyncio.run(
            latency_check(
                base_url,
                key,
                count=count,
                model=model,
                concurrency=concurrency,
                stream=stream,
                timeout=timeout,
                on_sample=None if quiet else show,
            )
        )
    except ValueError as exc:
        raise ConfigError(f"--base-url: {exc}") from None
    click.echo(report.render())
    sys.exit(0 if report.ok == report.count else 1)


cli.add_command(logs_group)
cli.add_command(profile_group)


def main() -> None:
    cli(prog_name="tollway")
