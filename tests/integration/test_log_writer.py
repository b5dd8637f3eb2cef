"""The usage log writer and the quota_data rollup on every backend: rows land exactly once, in few
transactions, together with their charges; failures are retried without loss; the rollup adds up."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import DatabaseFactory
from tests.integration.test_log_counts import assert_summaries_exact
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR, Log
from tollway.db.models.quota_data import QuotaData
from tollway.db.models.user import User
from tollway.settings import Settings
from tollway.usage.log_writer import LogWriter
from tollway.usage.records import Charge, LogEntry
from tollway.usage.rollup import QuotaRollup

pytestmark = pytest.mark.db

NOW = int(time.time())
HOUR = NOW - NOW % 3600


class UserApplier:
    """Adds each charge to ``users.used_quota``/``request_count``; can fail and can be held."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls = 0
        self.charges = 0
        self.gate: asyncio.Event | None = None

    async def apply(self, session: AsyncSession, charges: Sequence[Charge]) -> None:
        self.calls += 1
        assert session.in_transaction()
        if self.calls > self.fail_first and self.gate is not None:
            await self.gate.wait()
        totals: dict[int, tuple[int, int]] = {}
        for charge in charges:
            quota, count = totals.get(charge.user_id, (0, 0))
            totals[charge.user_id] = (quota + charge.quota, count + 1)
        for user_id, (quota, count) in totals.items():
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(used_quota=User.used_quota + quota, request_count=User.request_count + count)
            )
        if self.calls <= self.fail_first:
            raise RuntimeError("applier failed on purpose")
        self.charges += len(charges)


class ThreadUserApplier(UserApplier):
    """UserApplier's changes, made the fast way on SQLite: on the connection's own thread, in the
    writer's one round trip for the whole batch. ``thread_gate`` holds retries there."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(fail_first)
        self.thread_gate: threading.Event | None = None

    def apply_sqlite(self, conn: sqlite3.Connection, charges: Sequence[Charge]) -> None:
        self.calls += 1
        if self.calls > self.fail_first and self.thread_gate is not None:
            self.thread_gate.wait(30)
        for charge in charges:
            conn.execute(
                "UPDATE users SET used_quota = used_quota + ?, request_count = request_count + 1 WHERE id = ?",
                (charge.quota, charge.user_id),
            )
        if self.calls <= self.fail_first:
            raise RuntimeError("applier failed on purpose")
        self.charges += len(charges)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await migrate(database)
    async with database.session() as session, session.begin():
        session.add(User(username="alice", password="x"))
    try:
        yield database
    finally:
        await database.dispose()


def entry(i: int, *, type_: int = LOG_CONSUME, model: str = "gpt-4o", created_at: int = NOW) -> LogEntry:
    return LogEntry(
        user_id=1,
        created_at=created_at,
        type=type_,
        content=f"request {i}",
        username="alice",
        token_name="default",
        model_name=model,
        quota=10 + i,
        prompt_tokens=3,
        completion_tokens=4,
        use_time=1,
        is_stream=i % 2 == 0,
        channel_id=7,
        token_id=9,
        group="default",
        other='{"k": 1}',
        ip="10.0.0.1",
        request_id=f"req-{i}",
    )


def charge(quota: int) -> Charge:
    return Charge(user_id=1, token_id=9, channel_id=7, quota=quota, token_limited=False)


async def scalar(database: Database, sql: str, *, logs: bool = False) -> int:
    maker = database.log_session if logs else database.session
    async with maker() as session:
        return int((await session.execute(text(sql))).scalar_one())


async def used_quota(database: Database) -> tuple[int, int]:
    async with database.session() as session:
        row = (await session.execute(select(User.used_quota, User.request_count))).one()
        return int(row[0]), int(row[1])


@pytest.mark.parametrize("applier_class", [UserApplier, ThreadUserApplier])
async def test_entries_become_rows_in_few_batches_with_their_charges(
    db: Database, applier_class: type[UserApplier]
) -> None:
    applier = applier_class()
    rollup = QuotaRollup()
    writer = LogWriter(db, applier, rollup=rollup, batch_size=2_000, flush_interval=60)
    entries = [entry(i) for i in range(2_500)]  # more than one INSERT statement takes
    for e in entries:
        assert writer.submit_nowait(e, charge(e.quota))
    assert writer.queue_depth == 2_500
    await writer.start()
    await writer.flush()
    assert writer.queue_depth == 0
    # A writer behind by more than batch_size catches up with one bigger batch.
    assert (writer.rows_written, writer.batches_written, writer.failures) == (2_500, 1, 0)
    assert writer.last_batch_seconds > 0
    async with db.log_session() as session:
        rows = (await session.execute(select(Log).order_by(Log.id))).scalars().all()
    assert len(rows) == 2_500
    for row, e in zip(rows, entries, strict=True):
        got = {name: getattr(row, name) for name in LogEntry.__slots__}
        assert got == {name: getattr(e, name) for name in LogEntry.__slots__}
    assert await used_quota(db) == (sum(e.quota for e in entries), 2_500)
    assert applier.calls == 1
    await assert_summaries_exact(db)  # on PostgreSQL and SQLite summed by the writer itself
    assert rollup.snapshot() == {
        (1, "alice", "gpt-4o", NOW - NOW % 3600): (2_500, sum(e.quota for e in entries), 2_500 * 7)
    }
    await writer.stop()
    assert rollup.pending == 0
    assert await scalar(db, "SELECT SUM(count) FROM quota_data") == 2_500


async def test_overlong_values_are_cut_to_fit_their_columns(db: Database) -> None:
    writer = LogWriter(db, UserApplier(), rollup=None)
    long = entry(0)
    long.model_name, long.request_id, long.content = "m" * 300, "r" * 100, "é" * 20_000
    writer.submit_nowait(long)
    await writer.flush()
    assert writer.failures == 0
    async with db.log_session() as session:
        row = (await session.execute(select(Log))).scalar_one()
    assert (row.model_name, row.request_id) == ("m" * 255, "r" * 64)
    assert row.content == "é" * (16_383 if db.dialect == "mysql" else 20_000)


async def test_flush_interval_writes_a_partial_batch(db: Database) -> None:
    writer = LogWriter(db, UserApplier(), rollup=None, batch_size=1_000, flush_interval=0.05)
    await writer.start()
    for i in range(3):
        await writer.submit(entry(i))
    for _ in range(200):
        if writer.rows_written == 3:
            break
        await asyncio.sleep(0.01)
    assert (writer.rows_written, writer.batches_written) == (3, 1)
    await writer.stop()


@pytest.mark.parametrize("on_thread", [False, True], ids=["session", "sqlite-thread"])
async def test_failed_batch_leaves_nothing_and_is_retried(
    db: Database, caplog: pytest.LogCaptureFixture, on_thread: bool
) -> None:
    """Statement by statement through the session, or (SQLite) the whole batch in one round trip
    on the connection's thread: a failed attempt rolls back entirely and the batch is retried."""
    if on_thread and db.dialect != "sqlite":
        pytest.skip("the one-round-trip batch is SQLite's")
    gate: asyncio.Event | threading.Event
    if on_thread:
        applier = ThreadUserApplier(fail_first=1)
        applier.thread_gate = gate = threading.Event()
    else:
        applier = UserApplier(fail_first=1)
        applier.gate = gate = asyncio.Event()
    writer = LogWriter(db, applier, rollup=None, flush_interval=0.01)
    await writer.start()
    for i in range(5):
        writer.submit_nowait(entry(i), charge(100))
    try:
        with caplog.at_level(logging.WARNING, logger="tollway.usage.log_writer"):
            for _ in range(300):
                if applier.calls >= 2:
                    break
                await asyncio.sleep(0.01)
            # The retry is held inside the applier (its rows inserted but not committed): the
            # failed attempt must have left no trace.
            assert writer.failures == 1
            assert await scalar(db, "SELECT COUNT(*) FROM logs", logs=True) == 0
            assert await used_quota(db) == (0, 0)
            assert writer.queue_depth == 5
            writer.submit_nowait(entry(5), charge(100))  # new entries queue behind the failed batch
    finally:
        gate.set()
    await writer.stop()
    assert "retrying in 0.1 s: RuntimeError: applier failed on purpose" in caplog.text
    assert await scalar(db, "SELECT COUNT(*) FROM logs", logs=True) == 6
    assert await used_quota(db) == (600, 6)
    assert applier.charges == 6
    await assert_summaries_exact(db)  # the failed attempt's summary went with its rows


async def test_disabled_consume_logs_are_skipped_but_charged(db: Database) -> None:
    consume_enabled = [False]
    rollup = QuotaRollup()
    writer = LogWriter(db, UserApplier(), rollup=rollup, log_consume_enabled=lambda: consume_enabled[0])
    for i in range(3):
        writer.submit_nowait(entry(i), charge(50))
    writer.submit_nowait(entry(3, type_=LOG_ERROR))
    await writer.flush()
    assert await scalar(db, "SELECT COUNT(*) FROM logs", logs=True) == 1
    assert await scalar(db, f"SELECT COUNT(*) FROM logs WHERE type = {LOG_ERROR}", logs=True) == 1
    assert await used_quota(db) == (150, 3)
    assert rollup.pending == 0  # quota data comes from consume logs only
    consume_enabled[0] = True  # read per batch
    writer.submit_nowait(entry(4), charge(50))
    await writer.flush()
    assert await scalar(db, f"SELECT COUNT(*) FROM logs WHERE type = {LOG_CONSUME}", logs=True) == 1
    assert await used_quota(db) == (200, 4)
    assert rollup.pending == 1


async def test_full_queue_pushes_back_and_stop_drains_everything(db: Database) -> None:
    writer = LogWriter(db, UserApplier(), rollup=None, max_queue=5, batch_size=2, flush_interval=60)
    for i in range(5):
        assert writer.submit_nowait(entry(i))
    assert not writer.submit_nowait(entry(99))
    waiting = [asyncio.create_task(writer.submit(entry(i))) for i in range(5, 12)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)
    await writer.start()
    await asyncio.gather(*waiting)
    for i in range(12, 20):
        await writer.submit(entry(i))
    await writer.stop()
    assert writer.queue_depth == 0
    assert await scalar(db, "SELECT COUNT(*) FROM logs", logs=True) == 20
    assert await scalar(db, "SELECT COUNT(DISTINCT request_id) FROM logs", logs=True) == 20


async def test_rollup_buckets_by_hour_and_model_and_increments(db: Database) -> None:
    rollup = QuotaRollup()
    batch = [
        entry(0, created_at=HOUR + 5),
        entry(1, created_at=HOUR + 3599),
        entry(2, created_at=HOUR + 3600),
        entry(3, created_at=HOUR + 10, model="claude"),
    ]
    for _ in range(2):
        for e in batch:
            rollup.add(e)
        assert await rollup.flush(db) == 3
        assert rollup.pending == 0
    async with db.session() as session:
        result = await session.execute(
            select(QuotaData.model_name, QuotaData.created_at, QuotaData.count, QuotaData.quota)
            .add_columns(QuotaData.token_used, QuotaData.user_id, QuotaData.username)
            .order_by(QuotaData.model_name, QuotaData.created_at)
        )
        rows = [tuple(row) for row in result]
    assert rows == [
        ("claude", HOUR, 2, 26, 14, 1, "alice"),
        ("gpt-4o", HOUR, 4, 42, 28, 1, "alice"),
        ("gpt-4o", HOUR + 3600, 2, 24, 14, 1, "alice"),
    ]
    disabled = QuotaRollup(enabled=lambda: False)
    disabled.add(batch[0])
    assert disabled.pending == 0
    assert await disabled.flush(db) == 0


async def test_failed_rollup_flush_keeps_its_buckets(
    db: Database, databases: DatabaseFactory, make_settings: Callable[..., Settings]
) -> None:
    unmigrated = Database(make_settings(sql_dsn=await databases.create()))
    rollup = QuotaRollup()
    try:
        rollup.add(entry(0, created_at=HOUR))
        with pytest.raises(Exception, match="quota_data"):
            await rollup.flush(unmigrated)
        assert rollup.snapshot() == {(1, "alice", "gpt-4o", HOUR): (1, 10, 7)}
        # entries added while a flush is in progress survive both its failure and its success
        flushing = asyncio.create_task(rollup.flush(unmigrated))
        await asyncio.sleep(0)
        rollup.add(entry(1, created_at=HOUR))
        with pytest.raises(Exception, match="quota_data"):
            await flushing
        assert rollup.snapshot() == {(1, "alice", "gpt-4o", HOUR): (2, 21, 14)}
        flushing = asyncio.create_task(rollup.flush(db))
        await asyncio.sleep(0)
        rollup.add(entry(2, created_at=HOUR))
        assert await flushing == 1
        assert rollup.snapshot() == {(1, "alice", "gpt-4o", HOUR): (1, 12, 7)}
        assert await rollup.flush(db) == 1
        assert await scalar(db, "SELECT SUM(quota) FROM quota_data") == 33
        assert rollup.failures == 2
    finally:
        await unmigrated.dispose()


async def test_rollup_run_flushes_periodically_and_survives_failures(
    db: Database, databases: DatabaseFactory, make_settings: Callable[..., Settings]
) -> None:
    unmigrated = Database(make_settings(sql_dsn=await databases.create()))
    rollup = QuotaRollup()
    try:
        rollup.add(entry(0, created_at=HOUR))
        failing = asyncio.create_task(rollup.run(unmigrated, lambda: 0, min_seconds=0.01))
        while rollup.failures < 2:
            await asyncio.sleep(0.01)
        failing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await failing
        assert rollup.pending == 1
        running = asyncio.create_task(rollup.run(db, lambda: 0, min_seconds=0.01))
        while rollup.pending:
            await asyncio.sleep(0.01)
        rollup.add(entry(1, created_at=HOUR))
        while rollup.pending:
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert await scalar(db, "SELECT SUM(count) FROM quota_data") == 2
    finally:
        await unmigrated.dispose()


async def test_separate_log_database_gets_the_logs(
    databases: DatabaseFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(sql_dsn=await databases.create(), log_sql_dsn=await databases.create())
    database = Database(settings)
    try:
        await migrate(database)
        assert database.separate_logs
        async with database.session() as session, session.begin():
            session.add(User(username="alice", password="x"))
        writer = LogWriter(database, UserApplier(), rollup=QuotaRollup())
        await writer.start()
        for i in range(10):
            await writer.submit(entry(i), charge(5))
        await writer.stop()
        assert await scalar(database, "SELECT COUNT(*) FROM logs", logs=True) == 10
        await assert_summaries_exact(database)
        assert await used_quota(database) == (50, 10)
        assert await scalar(database, "SELECT SUM(count) FROM quota_data") == 10
        async with database.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "logs" not in tables
    finally:
        await database.dispose()
