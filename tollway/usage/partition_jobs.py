"""Maintenance of the monthly partitions of ``logs`` on PostgreSQL (see ADR 0001).

The first migration creates the current month and three months ahead; :func:`ensure_partitions`,
run daily by the master node, keeps that window moving. A row whose month had no partition yet
landed in ``logs_default``; PostgreSQL refuses to create a partition for a range the default
partition still holds rows of, so such rows are moved first (:func:`_move_out_of_default`).

SQLite and MySQL keep ``logs`` as a plain table: every function here is a no-op there.

Concurrent runs (several workers of the master, or the retention purge dropping partitions at the
same time) are serialised by a transaction-scoped advisory lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tollway.db.engine import Database
from tollway.db.partitions import add_months, create_month_partitions, month_start

if TYPE_CHECKING:
    from tollway.runtime import Runtime

log = logging.getLogger("tollway.usage.partitions")

TABLE = "logs"
DEFAULT_PARTITION = f"{TABLE}_default"
MONTHS_AHEAD = 3
ADVISORY_LOCK_KEY = 0x546F6C6C  # "Toll": one key for every structural change of the logs table
MOVE_LOCK_TIMEOUT = "30s"  # ATTACH waits at most this long for readers of logs_default
_MONTH_NAME = re.compile(rf"^{TABLE}_p(\d{{4}})(\d{{2}})$")
_RANGE_BOUND = re.compile(r"FOR VALUES FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")


@dataclass(frozen=True, slots=True)
class MonthPartition:
    """A ``logs_pYYYYMM`` partition covering ``[lower, upper)`` in unix seconds."""

    name: str
    lower: int
    upper: int


async def serialise_structure_changes(conn: AsyncConnection) -> None:
    """Wait for any other maintenance transaction on the partitions; released at commit."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


async def is_partitioned(conn: AsyncConnection) -> bool:
    """True when ``logs`` is a partitioned table (PostgreSQL ≥ 11, created by our migration)."""
    if conn.dialect.name != "postgresql":
        return False
    query = text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(:t)")
    kind = await conn.scalar(query, {"t": TABLE})
    return bool(kind == "p")


async def month_partitions(conn: AsyncConnection) -> list[MonthPartition]:
    """The monthly partitions that exist now, oldest first, with the bounds PostgreSQL holds (not
    the ones their names suggest). Empty when ``logs`` is not partitioned."""
    if not await is_partitioned(conn):
        return []
    rows = await conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": TABLE},
    )
    found: list[MonthPartition] = []
    for name, bound in rows:
        match = _RANGE_BOUND.search(str(bound or ""))
        if _MONTH_NAME.match(str(name)) and match:
            found.append(MonthPartition(str(name), int(match[1]), int(match[2])))
    return sorted(found, key=lambda part: part.lower)


async def _exists(conn: AsyncConnection, name: str) -> bool:
    return bool(await conn.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}))


async def _default_holds(conn: AsyncConnection, lower: int, upper: int) -> bool:
    if not await _exists(conn, DEFAULT_PARTITION):
        return False
    query = text(
        f'SELECT EXISTS (SELECT 1 FROM "{DEFAULT_PARTITION}" WHERE created_at >= :lo AND created_at < :hi)'
    )
    return bool(await conn.scalar(query, {"lo": lower, "hi": upper}))


async def _move_out_of_default(conn: AsyncConnection, name: str, lower: int, upper: int) -> int:
    """Give ``[lower, upper)`` its partition although ``logs_default`` holds rows of it. Runs in
    the caller's transaction, so a failure leaves everything as it was.

    Cost: the moved rows are written twice (copied, then deleted from the default partition) and
    the new partition's indexes are built once, after the copy. ``ATTACH PARTITION`` takes SHARE
    UPDATE EXCLUSIVE on ``logs`` (inserts and reads of the other partitions go on) and ACCESS
    EXCLUSIVE on ``logs_default``, which it scans once to check that no row of the range is left:
    readers of the whole table and inserts routed to the default partition wait for that scan. The
    default partition stays small while this job runs daily, so the scan is short; a temporary
    ``CHECK`` constraint spares a second scan, of the new table. Returns the number of rows moved.
    """
    await conn.execute(text(f"SET LOCAL lock_timeout = '{MOVE_LOCK_TIMEOUT}'"))
    bounds = {"lo": lower, "hi": upper}
    in_range = "created_at >= :lo AND created_at < :hi"
    await conn.execute(
        text(f'CREATE TABLE "{name}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
    )
    check = f"CHECK (created_at >= {lower} AND created_at < {upper})"
    await conn.execute(text(f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bound" {check}'))
    copied = await conn.execute(
        text(f'INSERT INTO "{name}" SELECT * FROM "{DEFAULT_PARTITION}" WHERE {in_range}'), bounds
    )
    await conn.execute(text(f'DELETE FROM "{DEFAULT_PARTITION}" WHERE {in_range}'), bounds)
    await conn.execute(
        text(f'ALTER TABLE "{TABLE}" ATTACH PARTITION "{name}" FOR VALUES FROM ({lower}) TO ({upper})')
    )
    await conn.execute(text(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bound"'))
    return int(copied.rowcount or 0)


async def ensure_partitions(
    db: Database, months_ahead: int = MONTHS_AHEAD, *, now: datetime | None = None
) -> list[str]:
    """Create the partitions of the current month and ``months_ahead`` following ones that are
    missing (on the log database), moving their rows out of ``logs_default`` first when it holds
    some. Returns the names of the partitions created, oldest first; ``[]`` off PostgreSQL.

    Each month that needs a move is its own transaction; a move that cannot get its locks within
    ``MOVE_LOCK_TIMEOUT`` is rolled back and the error raised (the next daily run retries)."""
    if months_ahead < 0:
        raise ValueError("months_ahead must not be negative")
    now = now or datetime.now(UTC)
    async with db.log_engine.connect() as conn:
        if not await is_partitioned(conn):
            return []
    created: list[str] = []
    for offset in range(months_ahead + 1):
        year, month = add_months(now.year, now.month, offset)
        following = add_months(year, month, 1)
        name = f"{TABLE}_p{year:04d}{month:02d}"
        lower, upper = month_start(year, month), month_start(*following)
        async with db.log_engine.begin() as conn:
            await serialise_structure_changes(conn)
            if await _exists(conn, name) or not await _default_holds(conn, lower, upper):
                continue
            moved = await _move_out_of_default(conn, name, lower, upper)
        log.info("created log partition %s and moved %d rows into it from %s", name, moved, DEFAULT_PARTITION)
        created.append(name)
    async with db.log_engine.begin() as conn:
        await serialise_structure_changes(conn)
        plain = await conn.run_sync(
            lambda sync: create_month_partitions(sync, TABLE, months_ahead=months_ahead, now=now)
        )
    if plain:
        log.info("created log partitions %s", ", ".join(plain))
    return sorted(created + plain)


async def partition_job(runtime: Runtime) -> list[str]:
    """The master's daily job: keep ``MONTHS_AHEAD`` months of partitions ready."""
    return await ensure_partitions(runtime.db, MONTHS_AHEAD)
