"""The hourly log summaries on every backend: after every way logs are written or deleted (the
batch writer, audit logs, ORM and Core inserts, updates, the retention purge, dropped partitions,
TRUNCATE, concurrent writers) they equal a brute-force ``GROUP BY`` of ``logs``, and the list
totals and statistics read from them equal a brute-force ``COUNT(*)``/``SUM`` for every filter
and for ranges that start and end inside hours."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, insert, select, text, update

from tollway.db.engine import Database
from tollway.db.migrate import alembic_config, migrate
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR, LOG_MANAGE, LOG_TOPUP, Log
from tollway.db.partitions import add_months, create_month_partitions
from tollway.settings import Settings
from tollway.usage import log_writer
from tollway.usage.audit import record_log
from tollway.usage.log_counts import (
    DIM_CODES,
    DIMENSIONS,
    INTEGER_DIMS,
    PG_PAUSE,
    PG_SETTING,
    SUMS,
    BatchCounts,
    apply_batch_postgres,
    bucket_sql,
    pg_function,
)
from tollway.usage.log_writer import LogWriter
from tollway.usage.queries import LogFilter, list_logs, log_stat
from tollway.usage.records import Charge, LogEntry
from tollway.usage.retention import purge_logs_before

pytestmark = pytest.mark.db

H = 3600
NOW = int(datetime.now(UTC).timestamp())
BASE = NOW - NOW % H - 48 * H  # an hour boundary two days ago


class NoCharges:
    async def apply(self, session: Any, charges: Any) -> None:
        return None


def entry(i: int, created_at: int, **overrides: Any) -> LogEntry:
    """Entries spread over 3 users, 2 tokens each, 3 models (one with ``_``), 2 channels, 2 groups
    and 4 types; ``i`` picks the combination."""
    user = i % 3 + 1
    values: dict[str, Any] = dict(
        user_id=user,
        created_at=created_at,
        type=(LOG_CONSUME, LOG_CONSUME, LOG_ERROR, LOG_TOPUP, LOG_CONSUME, LOG_MANAGE)[i % 6],
        username=f"user{user}",
        token_name=f"key{user}-{i % 2}",
        token_id=user * 10 + i % 2,
        model_name=("gpt-4o", "gpt-4o-mini", "claude_3")[i % 7 % 3],
        channel_id=i % 2 + 1,
        group=("default", "vip")[i % 5 % 2],
        quota=100 + i,
        prompt_tokens=i % 13,
        completion_tokens=i % 7,
        request_id=f"req-{i}",
        content="",
        other="",
    )
    values.update(overrides)
    return LogEntry(**values)


def spread(count: int, start: int, step: int) -> list[LogEntry]:
    return [entry(i, start + i * step) for i in range(count)]


async def write(db: Database, entries: list[LogEntry], *, batch_size: int = 50, applier: Any = None) -> None:
    writer = LogWriter(db, applier or NoCharges(), rollup=None, batch_size=batch_size, flush_interval=60)
    for item in entries:
        await writer.submit(item, Charge(item.user_id, item.token_id, item.channel_id, item.quota, False))
    await writer.flush()


async def grouped(db: Database) -> tuple[list[list[tuple[Any, ...]]], list[list[tuple[Any, ...]]]]:
    """(summary rows, the same computed from logs) for the three summary tables, sorted."""
    key = ", ".join(DIMENSIONS)
    sums = ", ".join(f"SUM({name})" for name in SUMS)
    names = ", ".join(SUMS)
    group = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 2))
    queries = (
        f"SELECT bucket, {key}, count, {names} FROM log_counts",
        f"SELECT {bucket_sql('created_at')}, {key}, COUNT(*), {sums} FROM logs GROUP BY {group}",
        f"SELECT bucket, type, count, {names} FROM log_type_counts",
        f"SELECT {bucket_sql('created_at')}, type, COUNT(*), {sums} FROM logs GROUP BY 1, 2",
        f"SELECT dim, value, bucket, type, count, {names} FROM log_dim_counts",
        " UNION ALL ".join(
            f"SELECT {code}, {as_text(db, column)}, {bucket_sql('created_at')}, type, COUNT(*), {sums} "
            f"FROM logs GROUP BY 1, 2, 3, 4"
            for column, code in DIM_CODES.items()
        ),
    )
    results = []
    async with db.log_engine.connect() as conn:
        for query in queries:
            rows = await conn.execute(text(query))
            results.append(sorted(tuple(v if isinstance(v, str) else int(v) for v in row) for row in rows))
    summary, raw, by_type, raw_by_type, by_dim, raw_by_dim = results
    return [summary, by_type, by_dim], [raw, raw_by_type, sorted(raw_by_dim)]


def as_text(db: Database, column: str) -> str:
    if column not in INTEGER_DIMS:
        return column
    return f"CONCAT({column})" if db.log_url.dialect == "mysql" else f"CAST({column} AS TEXT)"


async def assert_summaries_exact(db: Database) -> None:
    summary, raw = await grouped(db)
    assert summary == raw
    async with db.log_engine.connect() as conn:
        for table in ("log_counts", "log_type_counts", "log_dim_counts"):
            assert await conn.scalar(text(f"SELECT COUNT(*) FROM {table} WHERE count <= 0")) == 0


def filters(base: int) -> list[LogFilter]:
    """Every filter alone and a few together, over ranges with and without partial hours."""
    dimensions = [
        LogFilter(),
        LogFilter(type=LOG_CONSUME),
        LogFilter(type=LOG_ERROR),
        LogFilter(user_id=2),
        LogFilter(username="user3"),
        LogFilter(token_id=11),
        LogFilter(token_name="key2-0"),
        LogFilter(model_name="gpt-4o"),
        LogFilter(model_name="gpt-4o%"),
        LogFilter(model_name="claude_%"),
        LogFilter(model_name="claude%3"),
        LogFilter(channel_id=2),
        LogFilter(group="vip"),
        LogFilter(request_id="req-7"),
        LogFilter(user_id=1, type=LOG_CONSUME, model_name="gpt-4o-mini", channel_id=2),
        LogFilter(username="user2", group="default", token_name="key2-1"),
    ]
    ranges: list[tuple[int | None, int | None]] = [
        (None, None),
        (base + 1234, base + 5 * H + 17),  # partial first and last hours
        (base + H, base + 4 * H - 1),  # exactly three whole hours
        (base + H, None),
        (None, base + 3 * H + 1),
        (base + 2 * H + 100, base + 2 * H + 2000),  # inside one hour
        (base + 2 * H + 100, base + 3 * H + 50),  # two partial hours, no whole one
        (base + 5 * H, base + 5 * H),  # one second
    ]
    return [replace(flt, start=start, end=end) for flt, (start, end) in itertools.product(dimensions, ranges)]


async def brute(db: Database, flt: LogFilter) -> tuple[int, int]:
    async with db.log_session() as session:
        row = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(Log.quota), 0)).where(*flt.conditions())
            )
        ).one()
    return int(row[0]), int(row[1])


async def newest_ids(db: Database, flt: LogFilter, limit: int) -> list[int]:
    async with db.log_session() as session:
        query = select(Log.id).where(*flt.conditions()).order_by(Log.id.desc()).limit(limit)
        return list((await session.scalars(query)).all())


async def assert_totals_exact(db: Database, now: int = NOW) -> None:
    for flt in filters(BASE):
        page = await list_logs(db, flt, offset=0, limit=5)
        assert page.total == (await brute(db, flt))[0], flt
        assert [row.id for row in page.rows] == await newest_ids(db, flt, 5), flt
        if flt.type in (0, LOG_CONSUME):
            consume = replace(flt, type=LOG_CONSUME)
            stat = await log_stat(db, flt, now=now)
            assert (stat.total_requests, stat.quota) == await brute(db, consume), flt
            today = replace(consume, start=now - now % 86400, end=None)
            assert (stat.today_requests, stat.today_quota) == await brute(db, today), flt


async def test_every_write_and_delete_path_keeps_the_summaries_exact(db: Database) -> None:
    # the batch writer: 700 rows one every 37 s from BASE - 1 h (over ~8 hours), in batches of 50
    await write(db, spread(700, BASE - H, 37))
    await assert_summaries_exact(db)
    # audit logs, in the caller's transaction and in one of their own
    await record_log(db, entry(1000, BASE + 2 * H + 5))
    async with db.session() as session, session.begin():
        await record_log(db, entry(1001, BASE + 2 * H + 6), session=session)
    # ORM objects and a Core executemany, as tests and tools write them
    async with db.log_session() as session, session.begin():
        session.add_all([Log(created_at=BASE + 7, content="", other="", username="user9", user_id=9)])
        await session.execute(
            insert(Log), [dict(created_at=BASE + H + i, content="", other="") for i in range(3)]
        )
    # rows written today, for the "today" figures of the statistics
    await write(db, [entry(i, NOW - i * 61) for i in range(40)])
    await assert_summaries_exact(db)
    await assert_totals_exact(db)
    # an update (logs are never updated by Tollway, but an operator may)
    async with db.log_session() as session, session.begin():
        await session.execute(
            update(Log)
            .where(Log.model_name == "claude_3")
            .values(model_name="claude-3.5", quota=Log.quota + 1)
        )
    await assert_summaries_exact(db)
    # the retention purge, in small batches, with a cutoff inside an hour
    deleted = await purge_logs_before(db, BASE + 3 * H + 1800, batch_size=40)
    assert deleted > 200
    await assert_summaries_exact(db)
    await assert_totals_exact(db)
    assert await purge_logs_before(db, NOW + 10, batch_size=1000) > 0  # everything
    await assert_summaries_exact(db)
    async with db.log_engine.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM log_counts")) == 0
    assert (await list_logs(db, LogFilter(), offset=0, limit=5)).total == 0


async def test_concurrent_writers_and_a_purge_lose_no_increment(db: Database, settings: Settings) -> None:
    """Four writers with pools of their own (as worker processes have) write batches over the
    same keys at once, while the retention purge deletes the oldest hour."""
    await write(db, spread(200, BASE - 2 * H, 18))  # old rows for the purge
    others = [Database(settings) for _ in range(4)]
    try:

        async def one(index: int, database: Database) -> None:
            entries = [entry(i, BASE + (i * 7 + index) % (3 * H)) for i in range(300)]
            await write(database, entries, batch_size=25)

        await asyncio.gather(
            *(one(index, database) for index, database in enumerate(others)),
            purge_logs_before(db, BASE - H, batch_size=20),
        )
    finally:
        for database in others:
            await database.dispose()
    await assert_summaries_exact(db)
    assert (await list_logs(db, LogFilter(start=BASE), offset=0, limit=1)).total == 1200


async def test_migration_backfills_existing_logs(settings: Settings) -> None:
    database = Database(settings)
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config("main", sync), "head"))
        async with database.log_engine.begin() as conn:
            await conn.run_sync(lambda sync: command.upgrade(alembic_config("logs", sync), "0001"))
        rows = [entry(i, BASE + i * 97) for i in range(300)]
        async with database.log_engine.begin() as conn:
            await conn.execute(insert(Log), [dict(vars_of(e)) for e in rows])
        await migrate(database)  # 0002: summaries, triggers, backfill
        await assert_summaries_exact(database)
        await assert_totals_exact(database)
        await write(database, [entry(i, BASE + 50 * i) for i in range(30)])  # the triggers work
        await assert_summaries_exact(database)
    finally:
        await database.dispose()


def vars_of(item: LogEntry) -> dict[str, Any]:
    return {name: getattr(item, name) for name in LogEntry.__slots__}


async def test_postgres_dropped_partitions_and_truncate(db: Database) -> None:
    if db.log_url.dialect != "postgresql":
        pytest.skip("partitions and TRUNCATE triggers are PostgreSQL's")
    now = datetime.now(UTC)
    year, month = add_months(now.year, now.month, -3)
    async with db.log_engine.begin() as conn:
        await conn.run_sync(
            lambda sync: create_month_partitions(
                sync, "logs", months_ahead=3, now=datetime(year, month, 1, tzinfo=UTC)
            )
        )
    old_month = int(datetime(year, month, 10, tzinfo=UTC).timestamp())
    next_year, next_month = add_months(year, month, 1)
    cutoff = int(datetime(next_year, next_month, 3, 7, 30, tzinfo=UTC).timestamp())  # a partition, then rows
    await write(db, spread(300, old_month, 6000) + spread(100, cutoff - 25 * H, 1800))
    await assert_summaries_exact(db)
    deleted = await purge_logs_before(db, cutoff, batch_size=30)
    assert deleted > 300
    async with db.log_engine.connect() as conn:
        assert await conn.scalar(text(f"SELECT to_regclass('logs_p{year:04d}{month:02d}') IS NULL"))
    await assert_summaries_exact(db)
    await assert_totals_exact(db)
    async with db.log_engine.begin() as conn:
        await conn.execute(text("TRUNCATE logs"))
    await assert_summaries_exact(db)
    async with db.log_engine.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM log_type_counts")) == 0


OPERATOR_INSERT = (  # an operator's multi-row INSERT, on keys the writer's batches use too
    "INSERT INTO logs (user_id, created_at, type, content, username, token_name, token_id, model_name, "
    "channel_id, group_name, quota, prompt_tokens, completion_tokens, other) "
    "SELECT 2, {start} + 60 * i, 2, 'sql', 'user2', 'key2-0', 20, 'gpt-4o', 1, 'default', i, 1, 2, '' "
    "FROM generate_series(1, {rows}) AS i"
)


class InsertsALog(NoCharges):
    """An applier that, inside the writer's transaction and after its rows went in, reads the
    pause setting and inserts a log row of its own (which the trigger must count)."""

    def __init__(self) -> None:
        self.settings: list[str | None] = []

    async def apply(self, session: Any, charges: Any) -> None:
        setting = await session.scalar(text(f"SELECT current_setting('{PG_SETTING}', true)"))
        self.settings.append(setting)
        await session.execute(insert(Log).values(**vars_of(entry(7, BASE + 3 * H + 1))))


def count_own_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of each batch whose summary the writer applied itself (PostgreSQL)."""
    applied: list[int] = []

    async def counted(conn: Any, counts: BatchCounts) -> None:
        applied.append(sum(amounts[0] for amounts in counts.wide.values()))
        await apply_batch_postgres(conn, counts)

    monkeypatch.setattr(log_writer, "apply_batch_postgres", counted)
    return applied


async def test_postgres_writer_counts_its_own_rows_once_and_the_trigger_all_others(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.log_url.dialect != "postgresql":
        pytest.skip("the pause setting is PostgreSQL's")
    import asyncpg  # type: ignore[import-untyped]

    applied = count_own_batches(monkeypatch)
    # (a) the writer's batches: summed by the writer, the trigger standing by
    await write(db, spread(300, BASE, 50), batch_size=100)
    assert applied == [300]  # queued before the writer started: one catch-up batch
    await assert_summaries_exact(db)
    # (c) a batch held in flight with the pause on (after PG_PAUSE, before its COPY): another
    # session's INSERT, on the same keys, is counted by the trigger, and sees no pause
    held, release = asyncio.Event(), asyncio.Event()
    copy = asyncpg.Connection.copy_records_to_table
    in_writer: list[str] = []

    async def held_copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        in_writer.append(await self.fetchval(f"SELECT current_setting('{PG_SETTING}', true)"))
        held.set()
        await release.wait()
        return await copy(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", held_copy)
    writing = asyncio.create_task(write(db, spread(60, BASE + H, 40), batch_size=100))
    await asyncio.wait_for(held.wait(), 10)
    assert in_writer == ["on"]
    async with db.log_engine.begin() as conn:
        assert await conn.scalar(text(f"SELECT current_setting('{PG_SETTING}', true)")) in (None, "")
        await conn.execute(text(OPERATOR_INSERT.format(start=BASE + H, rows=40)))
    await assert_summaries_exact(db)
    release.set()
    await writing
    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", copy)
    assert applied[1:] == [60]
    await assert_summaries_exact(db)
    # the pause covers the writer's COPY only: later statements of its own transaction (here an
    # applier inserting a log row) are counted by the trigger
    inserts = InsertsALog()
    await write(db, spread(30, BASE + 2 * H, 30), batch_size=100, applier=inserts)
    assert inserts.settings == ["off"]
    await assert_summaries_exact(db)
    # (b) after: plain INSERTs and audit logs from other connections are counted by the trigger
    async with db.log_engine.begin() as conn:
        await conn.execute(text(OPERATOR_INSERT.format(start=BASE + 2 * H, rows=25)))
    await record_log(db, entry(2000, BASE + 2 * H + 9))
    await assert_summaries_exact(db)
    assert applied[2:] == [30]
    async with db.log_engine.connect() as conn:
        total = await conn.scalar(text("SELECT SUM(count) FROM log_type_counts"))
    assert total == 300 + 60 + 40 + 30 + 1 + 25 + 1


async def test_migration_0003_and_its_downgrade_keep_the_summaries_exact(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before 0003 (and after its downgrade) the writer does not pause and the trigger counts its
    rows; after it, the writer counts them; either way once. A no-op on SQLite and MySQL."""
    postgres = db.log_url.dialect == "postgresql"
    applied = count_own_batches(monkeypatch)

    async def alembic(step: Any, revision: str) -> None:
        async with db.log_engine.begin() as conn:
            await conn.run_sync(lambda sync: step(alembic_config("logs", sync), revision))

    async def installed() -> str:
        async with db.log_engine.connect() as conn:
            return str(
                await conn.scalar(text("SELECT prosrc FROM pg_proc WHERE proname = 'log_counts_apply'"))
            )

    async def pause() -> str | None:
        async with db.log_engine.connect() as conn:
            setting = await conn.scalar(text(PG_PAUSE))  # rolled back with the connection
        return None if setting is None else str(setting)

    await alembic(command.downgrade, "0002")
    if postgres:
        assert await installed() == pg_function(standby=False).split("$body$")[1]
        assert await pause() == "off"
    await write(db, spread(120, BASE, 60))
    assert applied == []
    await assert_summaries_exact(db)
    await alembic(command.upgrade, "head")
    if postgres:
        assert await installed() == pg_function().split("$body$")[1]
        assert await pause() == "on"
    await write(db, spread(120, BASE + 3, 60))
    assert applied == ([120] if postgres else [])
    await assert_summaries_exact(db)
    if postgres:  # with the insert trigger disabled (a bulk load), the writer does not count either
        async with db.log_engine.begin() as conn:
            await conn.execute(text("ALTER TABLE logs DISABLE TRIGGER trg_logs_counts_insert"))
            assert await conn.scalar(text(PG_PAUSE)) == "off"
            await conn.rollback()
