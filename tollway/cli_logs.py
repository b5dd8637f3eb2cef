"""``tollway logs …``: operator commands for the usage logs (``purge``).

Registered on the main command group by ``tollway.cli``. The purge is the retention delete of
``tollway.usage.retention`` run by hand: whole old partitions dropped on PostgreSQL, the rest in
short batches, so it is safe to run while the server serves traffic.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from sqlalchemy.exc import DBAPIError

from tollway.db.engine import Database
from tollway.errors import ConfigError
from tollway.settings import Settings, load_settings
from tollway.usage.retention import DEFAULT_BATCH, count_logs_before, purge_logs_before


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def logs() -> None:
    """Maintain the usage logs (the log database when LOG_SQL_DSN is set)."""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"tollway: {message}", err=True)
    sys.exit(code)


async def _count(settings: Settings, cutoff: int) -> int:
    db = Database(settings)
    try:
        await db.check_reachable()
        return await count_logs_before(db, cutoff)
    finally:
        await db.dispose()


async def _purge(settings: Settings, cutoff: int, batch_size: int, bar: Any) -> int:
    def progress(done: int, estimated: int) -> None:
        bar.length = max(bar.length, estimated, done)
        bar.update(done - bar.pos)

    db = Database(settings)
    try:
        return await purge_logs_before(db, cutoff, batch_size=batch_size, progress=progress)
    finally:
        await db.dispose()


@logs.command()
@click.option(
    "--before",
    required=True,
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Delete logs created before 00:00 UTC of this day (YYYY-MM-DD).",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Rows deleted per transaction.",
)
def purge(before: datetime, yes: bool, batch_size: int) -> None:
    """Delete usage logs older than a day.

    Whole old partitions are dropped on PostgreSQL and the rest is deleted in short transactions,
    so the server can keep running. Asks for confirmation unless --yes is given."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail(str(exc), 2)
    day = before.strftime("%Y-%m-%d")
    cutoff = int(before.replace(tzinfo=UTC).timestamp())
    if cutoff > datetime.now(UTC).timestamp():
        _fail(f"--before {day} is in the future: that would delete logs not yet written", 2)
    where = (settings.log_database_url or settings.database_url).describe()
    try:
        total = asyncio.run(_count(settings, cutoff))
        if total == 0:
            click.echo(f"no logs created before {day} 00:00 UTC in {where}")
            return
        if not yes:
            click.confirm(f"Delete {total} logs created before {day} 00:00 UTC from {where}?", abort=True)
        with click.progressbar(length=total, label="Deleting logs", show_pos=True) as bar:
            deleted = asyncio.run(_purge(settings, cutoff, batch_size, bar))
    except ConfigError as exc:
        _fail(str(exc), 2)
    except DBAPIError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else "error"
        _fail(f"cannot delete logs in {where}: {reason}", 1)
    click.echo(f"deleted {deleted} logs created before {day} 00:00 UTC")
