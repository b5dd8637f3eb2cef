"""Partition maintenance of ``logs``: on PostgreSQL ``ensure_partitions`` creates the months ahead
and moves rows that landed in ``logs_default`` into their new partition; elsewhere it does nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from tests.conftest import AppHarness
from tollway.db.engine import Database
from tollway.db.models import Log
from tollway.db.partitions import add_months
from tollway.usage.partition_jobs import ensure_partitions, partition_job

pytestmark = pytest.mark.db

NOW = datetime.now(UTC)
ONLY_POSTGRES = "logs is partitioned only on PostgreSQL (ADR 0001): SQLite and MySQL have no partitions"


def at(offset: int, day: int = 1) -> int:
    year, month = add_months(NOW.year, NOW.month, offset)
    return int(datetime(year, month, day, 12, tzinfo=UTC).timestamp())


def name(offset: int) -> str:
    year, month = add_months(NOW.year, NOW.month, offset)
    return f"logs_p{year:04d}{month:02d}"


async def sql(db: Database, statement: str) -> list[tuple[object, ...]]:
    async with db.log_engine.begin() as conn:
        result = await conn.execute(text(statement))
        return [tuple(row) for row in result] if result.returns_rows else []


async def partitions(db: Database) -> set[str]:
    rows = await sql(
        db,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass('logs')",
    )
    return {str(row[0]) for row in rows}


async def add_logs(db: Database, *created: int) -> list[int]:
    async with db.log_session() as session, session.begin():
        rows = [Log(created_at=ts, content="", other="") for ts in created]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]


async def test_elsewhere_nothing_to_do(db: Database) -> None:
    if db.log_url.dialect == "postgresql":
        pytest.skip("covered by the PostgreSQL tests below")
    assert await ensure_partitions(db, months_ahead=6) == []


async def test_creates_the_months_ahead(db: Database) -> None:
    if db.log_url.dialect != "postgresql":
        pytest.skip(ONLY_POSTGRES)
    assert {name(offset) for offset in range(4)} <= await partitions(db)  # made by the migration
    assert await ensure_partitions(db, months_ahead=3) == []
    assert await ensure_partitions(db, months_ahead=5) == [name(4), name(5)]
    assert {name(offset) for offset in range(6)} | {"logs_default"} == await partitions(db)
    assert await ensure_partitions(db, months_ahead=5) == []
    with pytest.raises(ValueError, match="months_ahead"):
        await ensure_partitions(db, months_ahead=-1)


async def test_moves_rows_out_of_the_default_partition(db: Database) -> None:
    if db.log_url.dialect != "postgresql":
        pytest.skip(ONLY_POSTGRES)
    await sql(db, f'DROP TABLE "{name(2)}"')
    await sql(db, f'DROP TABLE "{name(3)}"')
    stranded = await add_logs(db, at(2, 1), at(2, 15), at(2, 28))  # no partition yet: into default
    stays = await add_logs(db, at(9, 3), at(-7, 3))  # months that get no partition of their own
    current = await add_logs(db, at(0, 1))
    assert await ensure_partitions(db, months_ahead=3) == [name(2), name(3)]

    where = await sql(db, "SELECT id, tableoid::regclass::text FROM logs ORDER BY id")
    assert dict(where) == {
        **dict.fromkeys(stranded, name(2)),
        **dict.fromkeys(stays, "logs_default"),
        **dict.fromkeys(current, name(0)),
    }
    # The moved partition is a normal one: same indexes as its neighbours, no leftover CHECK.
    indexes = "SELECT count(*) FROM pg_indexes WHERE tablename = '{}'"
    assert (await sql(db, indexes.format(name(2))))[0] == (await sql(db, indexes.format(name(1))))[0]
    checks = await sql(
        db, f"SELECT conname FROM pg_constraint WHERE conrelid = '{name(2)}'::regclass AND contype = 'c'"
    )
    assert checks == []
    # New rows of that month now route to it.
    later = await add_logs(db, at(2, 20))
    assert await sql(db, f"SELECT tableoid::regclass::text FROM logs WHERE id = {later[0]}") == [(name(2),)]
    async with db.log_session() as session:
        assert await session.scalar(select(func.count()).select_from(Log)) == 7


async def test_the_daily_job(harness: AppHarness) -> None:
    db = harness.runtime.db
    if db.log_url.dialect != "postgresql":
        assert await partition_job(harness.runtime) == []
        return
    await sql(db, f'DROP TABLE "{name(3)}"')
    assert await partition_job(harness.runtime) == [name(3)]
