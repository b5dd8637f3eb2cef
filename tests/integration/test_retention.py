"""Log retention on every backend: the purge deletes exactly the rows older than the cutoff (whole
old partitions dropped on PostgreSQL, the rest in batches), a busy partition falls back to batches,
the hourly job follows ``LogRetentionDays``, and ``tollway logs purge`` works from the shell."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from tests.conftest import AppHarness
from tollway.cli_logs import logs as logs_command
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models import Log
from tollway.db.partitions import add_months, create_month_partitions
from tollway.options import OptionError
from tollway.settings import Settings
from tollway.usage import retention
from tollway.usage.retention import LOG_RETENTION_DAYS, purge_logs_before, retention_job

pytestmark = pytest.mark.db

NOW = datetime.now(UTC)


def month(offset: int) -> tuple[int, int]:
    return add_months(NOW.year, NOW.month, offset)


def at(offset: int, day: int) -> int:
    """Unix time of ``day`` (12:00 UTC) in the month ``offset`` months from now."""
    year, mon = month(offset)
    return int(datetime(year, mon, day, 12, tzinfo=UTC).timestamp())


def part_name(offset: int) -> str:
    year, mon = month(offset)
    return f"logs_p{year:04d}{mon:02d}"


async def add_logs(db: Database, *created: int) -> list[int]:
    async with db.log_session() as session, session.begin():
        rows = [Log(created_at=ts, content=f"log at {ts}", other="", username="alice") for ts in created]
        session.add_all(rows)
        await session.flush()
        return [row.id for row in rows]


async def remaining(db: Database) -> set[int]:
    async with db.log_session() as session:
        return set((await session.scalars(select(Log.id))).all())


async def partitions(db: Database) -> set[str]:
    async with db.log_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass('logs')"
            )
        )
        return {str(row[0]) for row in rows}


class Rows:
    """Logs across three past months, the current one and the default partition; the cutoff falls
    on the 15th of the middle past month (``M-2``)."""

    def __init__(self) -> None:
        self.old: list[int] = []
        self.new: list[int] = []
        self.cutoff = at(-2, 15)

    async def seed(self, db: Database) -> Rows:
        if db.log_url.dialect == "postgresql":  # past months get partitions of their own
            async with db.log_engine.begin() as conn:
                year, mon = month(-3)
                await conn.run_sync(
                    lambda sync: create_month_partitions(
                        sync, "logs", months_ahead=2, now=datetime(year, mon, 1, tzinfo=UTC)
                    )
                )
        self.old = await add_logs(db, at(-8, 3), at(-3, 1), at(-3, 10), at(-3, 28), at(-2, 2), at(-2, 14))
        self.new = await add_logs(db, at(-2, 16), at(-2, 27), at(-1, 5), at(-1, 20), at(0, 1), at(8, 1))
        return self


async def test_purge_deletes_exactly_the_old_rows(db: Database) -> None:
    rows = await Rows().seed(db)
    postgres = db.log_url.dialect == "postgresql"
    if postgres:
        before = await partitions(db)
        assert {part_name(-3), part_name(-2), part_name(-1), "logs_default"} <= before
    calls: list[tuple[int, int]] = []
    deleted = await purge_logs_before(
        db, rows.cutoff, batch_size=2, progress=lambda done, total: calls.append((done, total))
    )
    assert deleted == len(rows.old)
    assert await remaining(db) == set(rows.new)
    assert calls[-1] == (len(rows.old), len(rows.old))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    if postgres:
        after = await partitions(db)
        assert part_name(-3) not in after  # the whole old month was dropped, not deleted row by row
        assert before - after == {part_name(-3)}
        assert calls[0] == (3, len(rows.old))  # its 3 rows counted at once, then batches of 2
        assert len(calls) == 3
    else:
        assert len(calls) == 1 + 3  # the estimate, then 3 batches of 2
    assert await purge_logs_before(db, rows.cutoff) == 0
    with pytest.raises(ValueError, match="batch_size"):
        await purge_logs_before(db, rows.cutoff, batch_size=0)


async def test_busy_partition_is_deleted_in_batches(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.log_url.dialect != "postgresql":
        pytest.skip("only PostgreSQL partitions logs: elsewhere there is no partition to drop")
    monkeypatch.setattr(retention, "DROP_LOCK_TIMEOUT", "200ms")
    rows = await Rows().seed(db)
    async with db.log_engine.connect() as reader:  # a long report reading the old month
        await reader.execute(text(f'LOCK TABLE "{part_name(-3)}" IN ACCESS SHARE MODE'))
        deleted = await purge_logs_before(db, rows.cutoff, batch_size=100)
        await reader.rollback()
    assert deleted == len(rows.old)
    assert await remaining(db) == set(rows.new)
    assert part_name(-3) in await partitions(db)  # left in place (empty) for the next run


async def test_retention_job_follows_the_option(harness: AppHarness) -> None:
    runtime = harness.runtime
    db = runtime.db
    now = int(NOW.timestamp())
    old = await add_logs(db, now - 40 * 86400, now - 31 * 86400)
    new = await add_logs(db, now - 29 * 86400, now)
    assert runtime.options.get(LOG_RETENTION_DAYS) == 0
    assert await retention_job(runtime) == 0  # 0 keeps everything
    assert await remaining(db) == set(old + new)
    for bad in ("-1", "36501", "ten"):
        with pytest.raises(OptionError):
            await runtime.options.save("LogRetentionDays", bad)
    assert runtime.options.get(LOG_RETENTION_DAYS) == 0
    await runtime.options.save("LogRetentionDays", "30")
    assert await retention_job(runtime) == len(old)
    assert await remaining(db) == set(new)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_cli_purge(backend: str, tmp_path: Path, settings: Settings) -> None:
    db = Database(settings)
    await migrate(db)
    rows = await Rows().seed(db)
    await db.dispose()
    cutoff_day = datetime.fromtimestamp(rows.cutoff, UTC).strftime("%Y-%m-%d")
    env = {"SQL_DSN": settings.sql_dsn, "LOG_SQL_DSN": "", "SQLITE_PATH": str(tmp_path / "unused.db")}
    runner = CliRunner()

    def run(*args: str, answer: str | None = None) -> tuple[int, str]:
        result = runner.invoke(logs_command, ["purge", *args], env=env, input=answer)
        return result.exit_code, result.output

    code, output = await asyncio.to_thread(run, "--before", cutoff_day, answer="n\n")
    assert code == 1 and "Delete 6 logs created before" in output and "Aborted" in output
    code, output = await asyncio.to_thread(run, "--before", "2024-02-30")
    assert code == 2 and "2024-02-30" in output
    code, output = await asyncio.to_thread(run, "--before", "2999-01-01", "--yes")
    assert code == 2 and "in the future" in output
    check = Database(settings)
    assert await remaining(check) == set(rows.old + rows.new)  # nothing deleted so far

    code, output = await asyncio.to_thread(run, "--before", cutoff_day, "--batch-size", "2", answer="y\n")
    assert code == 0, output
    assert "Deleting logs" in output
    assert f"deleted 6 logs created before {cutoff_day} 00:00 UTC" in output
    code, output = await asyncio.to_thread(run, "--before", cutoff_day, "--yes")
    assert code == 0 and "no logs created before" in output
    assert await remaining(check) == set(rows.new)
    await check.dispose()
