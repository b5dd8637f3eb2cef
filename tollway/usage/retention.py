"""Log retention: remove usage logs older than a cutoff without long locks.

On PostgreSQL with the monthly partitions of ADR 0001, every ``logs_pYYYYMM`` partition lying
entirely before the cutoff is dropped whole (a catalog change, not a row-by-row delete); what is
left (the month the cutoff falls in, and ``logs_default``) is deleted in bounded batches. Elsewhere
everything goes in batches. Each batch is its own short transaction, so the relay's log writer and
the console's reads never wait long behind a big cleanup.

The hourly summaries (``tollway.usage.log_counts``) stay exact: the batched deletes fire the
triggers on ``logs``; a dropped partition fires none, so its whole hours are deleted from the
summaries in the transaction that drops it.

The master node runs :func:`retention_job` every hour when the ``LogRetentionDays`` option is set;
operators can purge by hand with ``tollway logs purge --before YYYY-MM-DD``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Delete, delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from tollway.db.engine import Database
from tollway.db.models import Log
from tollway.db.models.log import LogCount, LogDimCount, LogTypeCount
from tollway.options import REGISTRY, OptionError
from tollway.usage.log_counts import BUCKET_SECONDS
from tollway.usage.partition_jobs import MonthPartition, month_partitions, serialise_structure_changes
from tollway.usage.queries import LogFilter, count_totals

if TYPE_CHECKING:
    from tollway.runtime import Runtime

log = logging.getLogger("tollway.usage.retention")

DEFAULT_BATCH = 5000
MAX_RETENTION_DAYS = 36_500
DROP_LOCK_TIMEOUT = "5s"  # a DROP that queues longer would stall every reader queued behind it
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for lock_timeout

Progress = Callable[[int, int], None]
"""``progress(deleted_so_far, estimated_total)``; the estimate may grow while rows are deleted."""


def _retention_days(value: int) -> None:
    if not 0 <= value <= MAX_RETENTION_DAYS:
        raise OptionError(f"LogRetentionDays must be between 0 (keep forever) and {MAX_RETENTION_DAYS}")


LOG_RETENTION_DAYS = REGISTRY.declare("LogRetentionDays", 0, _retention_days)
"""Logs older than this many days are deleted every hour by the master node; 0 keeps them forever."""


async def count_logs_before(db: Database, cutoff: int) -> int:
    """How many logs have ``created_at < cutoff`` (whole hours from the summaries)."""
    async with db.log_session() as session:
        if cutoff > 1:
            return (await count_totals(session, LogFilter(end=cutoff - 1))).count
        query = select(func.count()).select_from(Log).where(Log.created_at < cutoff)
        return int(await session.scalar(query) or 0)


def _batch_statement(dialect: str, cutoff: int, batch_size: int) -> Delete:
    old = Log.created_at < cutoff
    if dialect == "mysql":
        # MySQL refuses LIMIT in an IN subquery on the table being deleted from; DELETE … LIMIT works.
        return delete(Log).where(old).with_dialect_options(mysql_limit=batch_size)
    # PostgreSQL (ids are unique across partitions, ctids are not) and SQLite.
    ids = select(Log.id).where(old).limit(batch_size).scalar_subquery()
    return delete(Log).where(old, Log.id.in_(ids))


async def _drop_partition(conn: AsyncConnection, part: MonthPartition) -> int:
    """Count and drop one partition inside the caller's transaction; 0 when it is already gone."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
    await serialise_structure_changes(conn)
    if not await conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": part.name}):
        return 0  # another purge dropped it while we waited for the lock
    rows = int(await conn.scalar(text(f'SELECT count(*) FROM "{part.name}"')) or 0)
    await conn.execute(text(f'DROP TABLE "{part.name}"'))
    for summary in (LogCount, LogTypeCount, LogDimCount):  # the partition held exactly these hours
        await conn.execute(delete(summary).where(summary.bucket >= part.lower, summary.bucket < part.upper))
    return rows


def _whole_hours(part: MonthPartition) -> bool:
    """Whether the partition's bounds fall on hours, so that its rows are whole summary buckets
    (always, for months; any other partition's rows are deleted in batches, firing the triggers)."""
    return part.lower % BUCKET_SECONDS == 0 and part.upper % BUCKET_SECONDS == 0


async def drop_old_partitions(db: Database, cutoff: int) -> int:
    """Drop every monthly partition whose upper bound is ``<= cutoff``; returns the rows they held.

    A partition whose DROP cannot get its lock within ``DROP_LOCK_TIMEOUT`` (a long export or
    report is reading it) is left in place: the batched delete that follows removes its rows."""
    async with db.log_engine.connect() as conn:
        parts = [part for part in await month_partitions(conn) if part.upper <= cutoff and _whole_hours(part)]
    dropped = 0
    for part in parts:
        try:
            async with db.log_engine.begin() as conn:
                rows = await _drop_partition(conn, part)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.warning("log partition %s is busy: its rows are deleted in batches instead", part.name)
            continue
        log.info("dropped log partition %s (%d rows)", part.name, rows)
        dropped += rows
    return dropped


async def purge_logs_before(
    db: Database, cutoff_unix: int, *, batch_size: int = DEFAULT_BATCH, progress: Progress | None = None
) -> int:
    """Delete every log with ``created_at < cutoff_unix``; returns how many were removed.

    Old whole-month partitions go first (PostgreSQL), then the rest in batches of ``batch_size``
    rows, each in its own transaction, until a batch comes back short. ``progress`` is called after
    the partitions are dropped and after every batch."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    deleted = await drop_old_partitions(db, cutoff_unix) if db.log_url.dialect == "postgresql" else 0
    estimated = deleted
    if progress is not None:
        estimated += await count_logs_before(db, cutoff_unix)
        progress(deleted, estimated)
    statement = _batch_statement(db.log_url.dialect, cutoff_unix, batch_size)
    while True:
        async with db.log_engine.begin() as conn:
            result = await conn.execute(statement)
        count = max(int(result.rowcount or 0), 0)
        deleted += count
        if count and progress is not None:
            estimated = max(estimated, deleted)
            progress(deleted, estimated)
        if count < batch_size:  # a short batch: nothing older is left
            return deleted


async def retention_job(runtime: Runtime) -> int:
    """The master's hourly job: purge logs older than ``LogRetentionDays`` days (0: keep all)."""
    days = runtime.options.get(LOG_RETENTION_DAYS)
    if days <= 0:
        return 0
    cutoff = int(time.time()) - days * 86_400
    deleted = await purge_logs_before(runtime.db, cutoff)
    if deleted:
        log.info("log retention: deleted %d logs older than %d days", deleted, days)
    return deleted
