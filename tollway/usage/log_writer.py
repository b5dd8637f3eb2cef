"""The usage log writer: a bounded in-process queue drained by one background batch writer.

The relay hands every settled request to :meth:`LogWriter.submit_nowait` (or :meth:`LogWriter.submit`,
which waits for room instead of failing): a deque append and, at most, an event set. One background
task takes up to ``batch_size`` entries as soon as that many are queued, or ``flush_interval``
seconds after the first entry of a batch was queued, whichever comes first.

Each batch is one transaction: the log rows (on PostgreSQL with one binary ``COPY``, elsewhere as
multi-row ``INSERT … VALUES (…), (…)`` statements of at most ``_ROWS_PER_STATEMENT`` rows each,
under the drivers' bind-parameter limits) and the batch's charges through ``ChargeApplier.apply`` in
the same session, so a balance change is durable exactly when the log rows explaining it are. The
INSERT is generated in the driver's paramstyle: compiling it through SQLAlchemy costs ~0.3 ms per
row, ten times the write.

On SQLite, with an applier that offers ``apply_sqlite`` (the balance store does), the whole batch
runs on the connection's own thread in one round trip (:mod:`tollway.db.sqlite_thread`): through
SQLAlchemy's adapter each statement is several round trips between the event loop and that thread.

With a separate log database (``LOG_SQL_DSN``) that cannot hold: the logs are committed first in a
log-database transaction, then the charges in a main-database transaction. The pair is NOT atomic:
a crash between the two commits leaves logs whose charges were never applied. (A retry after a
failure of the second step does not write the logs again.)

A batch that fails is retried with backoff (0.1 s doubling up to 5 s), logged as a warning, and never
dropped; new entries queue behind it up to ``max_queue``, after which ``submit`` waits (backpressure)
and ``submit_nowait`` returns False. So that one bad value cannot make a batch fail forever, strings
longer than their column are cut to fit (VARCHAR lengths everywhere; TEXT's 64 KiB on MySQL).

The hourly summaries of the logs (``tollway.usage.log_counts``) change in the same transaction as
the rows. On SQLite and PostgreSQL the batch is summed per key in Python and applied with one upsert
per summary table, while the insert trigger stands by for the writer's own rows: on SQLite while a
row in ``log_counts_paused`` (inserted and deleted inside the transaction) exists, on PostgreSQL for
the one ``COPY`` that follows ``PG_PAUSE`` (a transaction-local setting, which the trigger clears).
On MySQL the triggers count the rows.

Consume entries (type 2) are not inserted while ``log_consume_enabled()`` is false (read per batch),
but their charges are still applied. After a batch commits, the consume entries that were logged feed
the hourly rollup (as in new-api, quota data is aggregated from consume logs only, so disabling
consume logs stops it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Dialect, String, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tollway.db.engine import Database
from tollway.db.models.log import LOG_CONSUME, Log
from tollway.db.sqlite_thread import run_on_sqlite_thread
from tollway.usage.log_counts import (
    DIMENSIONS,
    PAUSED,
    PG_PAUSE,
    BatchCounts,
    apply_batch_postgres,
    sqlite_batch_statements,
    statement_sizes,
)
from tollway.usage.records import Charge, ChargeApplier, LogEntry, SqliteChargeApplier
from tollway.usage.rollup import QuotaRollup, describe_error

log = logging.getLogger("tollway.usage.log_writer")

_FIELDS = tuple(f.name for f in fields(LogEntry))
_values = attrgetter(*_FIELDS)
_COLUMN_KEYS = tuple("group_name" if name == "group" else name for name in _FIELDS)
_dims = itemgetter(*(_COLUMN_KEYS.index(name) for name in DIMENSIONS))  # a row's summary key
_CREATED, _QUOTA, _PROMPT, _COMPLETION = (
    _COLUMN_KEYS.index(name) for name in ("created_at", "quota", "prompt_tokens", "completion_tokens")
)
_ROWS_PER_STATEMENT = min(1_500, 30_000 // len(_FIELDS))
_CHARS_PER_STATEMENT = 2_000_000  # of content + other: keeps statements under MySQL's max_allowed_packet
_MYSQL_TEXT_CHARS = 65_535 // 4  # TEXT holds 64 KiB, and a utf8mb4 character takes up to 4 bytes
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
_CATCH_UP_BATCHES = 16  # a batch takes up to this many times batch_size entries when more wait

_Item = tuple[LogEntry, Charge | None]


@dataclass(slots=True)
class _Batch:
    items: list[_Item]
    logged: list[LogEntry] | None = None  # the entries inserted as rows, decided on the first attempt
    logs_committed: bool = False  # only used with a separate log database


class LogWriter:
    """Bounded queue of log entries and charges, written in batches by one background task."""

    def __init__(
        self,
        db: Database,
        applier: ChargeApplier,
        *,
        rollup: QuotaRollup | None,
        max_queue: int = 50_000,
        batch_size: int = 1_000,
        flush_interval: float = 0.25,
        log_consume_enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        self._db = db
        self._applier = applier
        self._rollup = rollup
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._log_consume_enabled = log_consume_enabled
        self._table: Table = Log.__table__  # type: ignore[assignment]
        self._sql_cache: dict[tuple[str, int], str] = {}
        self._queue: deque[_Item] = deque()
        self._inflight = 0
        self._first_at: float | None = None  # when the oldest entry of the next batch was queued
        self._wake = asyncio.Event()  # something to do for the writer
        self._room = asyncio.Event()  # the queue has room again
        self._progress = asyncio.Event()  # a batch committed
        self._write_lock = asyncio.Lock()
        self._enqueued = 0  # entries ever queued
        self._done = 0  # entries ever committed (in queue order)
        self._drain_to = 0  # write without waiting until _done reaches this
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.rows_written = 0
        self.batches_written = 0
        self.last_batch_seconds = 0.0
        self.failures = 0
        self.on_batch: Callable[[float], None] | None = None  # called with each batch's duration

    @property
    def queue_depth(self) -> int:
        """Entries not yet committed: queued ones plus the batch being written."""
        return len(self._queue) + self._inflight

    def submit_nowait(self, entry: LogEntry, charge: Charge | None = None) -> bool:
        """Queue an entry (and its charge); False, with nothing queued, when the queue is full."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            return False
        queue.append((entry, charge))
        self._enqueued += 1
        n = len(queue)
        if n == 1:
            self._first_at = time.monotonic()
            self._wake.set()
        elif n >= self._batch_size:
            self._wake.set()
        return True

    async def submit(self, entry: LogEntry, charge: Charge | None = None) -> None:
        """Queue an entry, waiting for room when the queue is full (never drops)."""
        while not self.submit_nowait(entry, charge):
            self._room.clear()
            await self._room.wait()

    async def start(self) -> None:
        """Launch the background writer (no-op when it is already running)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="tollway-log-writer")

    async def stop(self) -> None:
        """Drain and write everything queued, stop the writer, then flush the rollup.

        Waits as long as the database refuses the writes (bound it with ``asyncio.timeout``).
        """
        task = self._task
        if task is not None:
            self._stopping = True
            self._wake.set()
            await task
            self._task = None
        await self.flush()
        if self._rollup is not None:
            try:
                await self._rollup.flush(self._db)
            except Exception as exc:
                log.warning("quota_data flush at shutdown failed: %s", describe_error(exc))

    async def flush(self) -> None:
        """Return once every entry queued before the call is committed."""
        target = self._enqueued
        if self._task is None or self._task.done():
            while self._done < target and await self._write_next():
                pass
            return
        self._drain_to = max(self._drain_to, target)
        self._wake.set()
        while self._done < target:
            self._progress.clear()
            await self._progress.wait()

    async def _run(self) -> None:
        while True:
            queue = self._queue
            if not queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            urgent = self._stopping or self._done < self._drain_to
            if not urgent and len(queue) < self._batch_size and self._first_at is not None:
                delay = self._first_at + self._flush_interval - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue
            await self._write_next()

    async def _write_next(self) -> bool:
        """Take the next batch off the queue and write it, retrying until it commits.

        False when the queue was empty. If cancelled mid-write, the batch goes back to the front of
        the queue (unless its logs already reached a separate log database).
        """
        async with self._write_lock:
            queue = self._queue
            # Behind (a burst, or a loop too busy to give the writer many turns): bigger batches
            # catch up, since a batch costs a few round trips to the database whatever its size.
            count = min(len(queue), self._batch_size * _CATCH_UP_BATCHES)
            if count == 0:
                return False
            batch = _Batch([queue.popleft() for _ in range(count)])
            if not queue:
                self._first_at = None
            # Otherwise the remainder is older than its deadline allows for: written right away.
            self._inflight = count
            self._room.set()
            try:
                await self._write_with_retry(batch)
            except BaseException:
                if not batch.logs_committed:
                    queue.extendleft(reversed(batch.items))
                    self._first_at = self._first_at or time.monotonic()
                raise
            finally:
                self._inflight = 0
            self._done += count
            self._progress.set()
            return True

    async def _write_with_retry(self, batch: _Batch) -> None:
        delay = _BACKOFF_FIRST
        while True:
            started = time.perf_counter()
            try:
                logged = await self._write(batch)
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "writing a batch of %d usage logs failed, retrying in %.1f s: %s",
                    len(batch.items),
                    delay,
                    describe_error(exc),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self.last_batch_seconds = time.perf_counter() - started
            self.batches_written += 1
            if self.on_batch is not None:
                self.on_batch(self.last_batch_seconds)
            self.rows_written += len(logged)
            if self._rollup is not None:
                for entry in logged:
                    if entry.type == LOG_CONSUME:
                        self._rollup.add(entry)
            return

    async def _write(self, batch: _Batch) -> list[LogEntry]:
        """One attempt at the batch; returns the entries that were inserted as log rows."""
        logged = batch.logged
        if logged is None:
            consume_enabled = self._log_consume_enabled()
            logged = [e for e, _ in batch.items if consume_enabled or e.type != LOG_CONSUME]
            batch.logged = logged
        charges = [c for _, c in batch.items if c is not None]
        db = self._db
        if not db.separate_logs:
            async with db.session() as session, session.begin():
                if db.dialect == "sqlite" and isinstance(self._applier, SqliteChargeApplier):
                    await self._write_sqlite(await session.connection(), logged, charges, self._applier)
                    return logged
                await self._insert_logs(session, logged)
                if charges:
                    await self._applier.apply(session, charges)
            return logged
        if not batch.logs_committed:
            async with db.log_session() as session, session.begin():
                await self._insert_logs(session, logged)
            batch.logs_committed = True
        if charges:
            async with db.session() as session, session.begin():
                await self._applier.apply(session, charges)
        return logged

    async def _insert_logs(self, session: AsyncSession, entries: Sequence[LogEntry]) -> None:
        """Insert ``entries`` (with one COPY on PostgreSQL, elsewhere with as few statements as the
        parameter and packet limits allow), and on SQLite and PostgreSQL add them to the summaries."""
        if not entries:
            return
        conn = await session.connection()
        dialect = conn.dialect
        if dialect.name == "postgresql":
            await _copy_logs(conn, entries)
            return
        limits = _limits(dialect.name)
        if dialect.name == "sqlite":
            await self._insert_sqlite(conn, entries, limits)
            return
        params: list[Any] = []
        rows = chars = 0
        for entry in entries:
            values = _fitted(_values(entry), limits)
            params.extend(values)
            rows += 1
            chars += len(entry.content) + len(entry.other)
            if rows == _ROWS_PER_STATEMENT or chars >= _CHARS_PER_STATEMENT:
                await conn.exec_driver_sql(self._insert_sql(dialect, rows), tuple(params))
                params, rows, chars = [], 0, 0
        if rows:
            await conn.exec_driver_sql(self._insert_sql(dialect, rows), tuple(params))

    async def _insert_sqlite(
        self, conn: AsyncConnection, entries: Sequence[LogEntry], limits: tuple[tuple[int, int], ...]
    ) -> None:
        for sql, params in self._sqlite_statements(conn.dialect, entries, limits):
            await conn.exec_driver_sql(sql, params)

    async def _write_sqlite(
        self,
        conn: AsyncConnection,
        entries: Sequence[LogEntry],
        charges: Sequence[Charge],
        applier: SqliteChargeApplier,
    ) -> None:
        """The whole batch (rows, summaries, charges) in one round trip to the SQLite thread."""
        statements = self._sqlite_statements(conn.dialect, entries, _limits("sqlite")) if entries else []

        def write(raw: sqlite3.Connection) -> None:
            for sql, params in statements:
                raw.execute(sql, params)
            if charges:
                applier.apply_sqlite(raw, charges)

        await run_on_sqlite_thread(conn, write)

    def _sqlite_statements(
        self, dialect: Dialect, entries: Sequence[LogEntry], limits: tuple[tuple[int, int], ...]
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """SQLite: multi-row INSERTs of the sizes :func:`statement_sizes` allows, with the
        summaries' insert trigger standing by while the batch adds its own share."""
        counts = BatchCounts()
        statements: list[tuple[str, tuple[Any, ...]]] = [(f"INSERT INTO {PAUSED} (id) VALUES (1)", ())]
        rows: list[tuple[Any, ...]] = []
        for entry in entries:
            values = _fitted(_values(entry), limits)
            counts.add(values[_CREATED], _dims(values), values[_QUOTA], values[_PROMPT], values[_COMPLETION])
            rows.append(values)
        start = 0
        for size in statement_sizes(len(rows), _ROWS_PER_STATEMENT):
            params = tuple(value for row in rows[start : start + size] for value in row)
            statements.append((self._insert_sql(dialect, size), params))
            start += size
        statements += sqlite_batch_statements(counts)
        statements.append((f"DELETE FROM {PAUSED}", ()))
        return statements

    def _insert_sql(self, dialect: Dialect, rows: int) -> str:
        """``INSERT INTO logs (…) VALUES (…), (…)`` for ``rows`` rows in the driver's paramstyle."""
        key = (dialect.name, rows)
        sql = self._sql_cache.get(key)
        if sql is not None:
            return sql
        width = len(_COLUMN_KEYS)
        style = dialect.paramstyle
        if style in ("numeric_dollar", "numeric"):
            mark = "$" if style == "numeric_dollar" else ":"
            row = "(" + ",".join([mark + "%d"] * width) + ")"
            values = ",".join(row % tuple(range(i * width + 1, i * width + width + 1)) for i in range(rows))
        elif style in ("qmark", "format"):
            row = "(" + ",".join(["?" if style == "qmark" else "%s"] * width) + ")"
            values = ",".join([row] * rows)
        else:
            raise ValueError(f"unsupported paramstyle {style!r}")
        quote = dialect.identifier_preparer.quote
        columns = ", ".join(quote(name) for name in _COLUMN_KEYS)
        sql = f"INSERT INTO {quote(self._table.name)} ({columns}) VALUES {values}"
        if dialect.name == "sqlite" or rows in (self._batch_size, _ROWS_PER_STATEMENT):
            self._sql_cache[key] = sql  # SQLite's sizes are few; elsewhere those a busy writer repeats
        return sql


async def _copy_logs(conn: AsyncConnection, entries: Sequence[LogEntry]) -> None:
    """PostgreSQL: one binary ``COPY`` into ``logs``, then, when ``PG_PAUSE`` made the insert
    trigger stand by for it, the batch's summary. (``bench/log_writer.py``: 31–35k rows/s with the
    COPY, against 26–30k with the multi-row INSERT and 23–25k with ``INSERT … SELECT FROM unnest``.)"""
    counts = BatchCounts() if (await conn.exec_driver_sql(PG_PAUSE)).scalar() == "on" else None
    limits = _limits("postgresql")
    records = []
    for entry in entries:
        values = _fitted(_values(entry), limits)
        if counts is not None:
            counts.add(values[_CREATED], _dims(values), values[_QUOTA], values[_PROMPT], values[_COMPLETION])
        records.append(values)
    # The transaction is open (PG_PAUSE ran in it): the driver's COPY runs inside it.
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.copy_records_to_table(Log.__tablename__, records=records, columns=_COLUMN_KEYS)
    if counts is not None:
        await apply_batch_postgres(conn, counts)


def _fitted(values: tuple[Any, ...], limits: tuple[tuple[int, int], ...]) -> tuple[Any, ...]:
    """``values`` with the strings longer than their column cut to fit."""
    for index, limit in limits:
        if len(values[index]) > limit:
            values = (*values[:index], values[index][:limit], *values[index + 1 :])
    return values


def _limits(dialect: str) -> tuple[tuple[int, int], ...]:
    """(value index, max characters) of the columns whose overlong values the database rejects."""
    limits = []
    for index, key in enumerate(_COLUMN_KEYS):
        column_type = Log.__table__.c[key].type
        if isinstance(column_type, String) and column_type.length:
            limits.append((index, column_type.length))
        elif isinstance(column_type, String) and dialect == "mysql":
            limits.append((index, _MYSQL_TEXT_CHARS))
    return tuple(limits)
