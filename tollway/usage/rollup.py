"""Hourly usage rollup (``quota_data``), accumulated in memory and flushed periodically.

Each consume log adds to the bucket (user_id, username, model_name, hour), where ``hour`` is
``created_at - created_at % 3600``: ``count += 1``, ``quota += quota`` and
``token_used += prompt_tokens + completion_tokens`` (reference behaviour §5).

A flush writes every bucket with increment-upserts (one multi-row statement per chunk of buckets,
all in one transaction on the main database) keyed on the unique index ``uq_quota_data_bucket``:
``ON CONFLICT … DO UPDATE`` on PostgreSQL and SQLite, ``ON DUPLICATE KEY UPDATE`` on MySQL/MariaDB.
Because the statement adds to the stored row instead of overwriting it, several nodes (or several
flushes of one node) can write the same hour safely.

The buckets taken for a flush leave memory only once the transaction has committed: on failure they
are merged back into whatever accumulated meanwhile, so nothing is lost (short of a process crash,
as in new-api). On MySQL/MariaDB the default collation is case-insensitive, so buckets that differ
only by letter case in ``username``/``model_name`` add up in a single row there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from tollway.db.engine import Database
from tollway.db.models.quota_data import QuotaData
from tollway.usage.records import LogEntry

log = logging.getLogger("tollway.usage.rollup")

BucketKey = tuple[int, str, str, int]
"""(user_id, username, model_name, hour)."""

_KEY_COLUMNS = ("user_id", "username", "model_name", "created_at")
_SUM_COLUMNS = ("count", "quota", "token_used")
_BUCKETS_PER_STATEMENT = 1_000  # 7 bind parameters per bucket, far below every driver's limit


class QuotaRollup:
    """In-memory hourly buckets of consume usage, flushed to ``quota_data`` by increments."""

    def __init__(self, enabled: Callable[[], bool] = lambda: True) -> None:
        self._enabled = enabled
        self._buckets: dict[BucketKey, list[int]] = {}  # key -> [count, quota, token_used]
        self._lock = asyncio.Lock()
        self.buckets_written = 0
        self.flushes = 0  # flushes that wrote at least one bucket
        self.failures = 0

    @property
    def pending(self) -> int:
        """Number of buckets waiting for the next flush."""
        return len(self._buckets)

    def snapshot(self) -> dict[BucketKey, tuple[int, int, int]]:
        """A copy of the pending buckets: key -> (count, quota, token_used)."""
        return {key: (v[0], v[1], v[2]) for key, v in self._buckets.items()}

    def add(self, entry: LogEntry) -> None:
        """Count one consume entry in its hourly bucket (nothing when DataExport is disabled)."""
        if not self._enabled():
            return
        hour = entry.created_at - entry.created_at % 3600
        key = (entry.user_id, entry.username, entry.model_name, hour)
        tokens = entry.prompt_tokens + entry.completion_tokens
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [1, entry.quota, tokens]
        else:
            bucket[0] += 1
            bucket[1] += entry.quota
            bucket[2] += tokens

    async def flush(self, db: Database) -> int:
        """Write every pending bucket in one transaction; return how many buckets were written.

        On any failure (or cancellation) the buckets are merged back and the error propagates.
        """
        async with self._lock:
            taken, self._buckets = self._buckets, {}
            if not taken:
                return 0
            try:
                await self._write(db, taken)
            except BaseException:
                self.failures += 1
                self._merge_back(taken)
                raise
            self.buckets_written += len(taken)
            self.flushes += 1
            return len(taken)

    async def run(
        self, db: Database, interval_minutes: Callable[[], float], *, min_seconds: float = 1.0
    ) -> None:
        """Flush every ``interval_minutes()`` minutes (read before each wait, at least
        ``min_seconds``) until cancelled.

        A failed flush is logged and retried at the next interval. When cancelled mid-flush, the
        flush is allowed to finish (commit, or roll back and keep its buckets) before the
        cancellation propagates.
        """
        while True:
            await asyncio.sleep(max(float(interval_minutes()) * 60.0, min_seconds))
            flushing = asyncio.ensure_future(self.flush(db))
            try:
                await asyncio.shield(flushing)
            except asyncio.CancelledError:
                await asyncio.wait([flushing])
                if not flushing.cancelled() and (error := flushing.exception()) is not None:
                    log.warning("quota_data flush failed: %s", describe_error(error))
                raise
            except Exception as exc:
                log.warning("quota_data flush failed, will retry: %s", describe_error(exc))

    def _merge_back(self, taken: dict[BucketKey, list[int]]) -> None:
        for key, values in taken.items():
            current = self._buckets.get(key)
            if current is None:
                self._buckets[key] = values
            else:
                for i in range(3):
                    current[i] += values[i]

    async def _write(self, db: Database, taken: dict[BucketKey, list[int]]) -> None:
        table: Table = QuotaData.__table__  # type: ignore[assignment]
        rows = [
            {
                "user_id": key[0],
                "username": key[1],
                "model_name": key[2],
                "created_at": key[3],
                "count": v[0],
                "quota": v[1],
                "token_used": v[2],
            }
            for key, v in taken.items()
        ]
        async with db.session() as session, session.begin():
            for start in range(0, len(rows), _BUCKETS_PER_STATEMENT):
                chunk = rows[start : start + _BUCKETS_PER_STATEMENT]
                await session.execute(increment_upsert(db.dialect, table, chunk))


def increment_upsert(dialect: str, table: Table, rows: Sequence[dict[str, Any]]) -> Insert:
    """A multi-row INSERT that adds ``count``/``quota``/``token_used`` to existing bucket rows."""
    if dialect == "mysql":
        my_stmt = mysql.insert(table).values(list(rows))
        my_sums = {name: table.c[name] + my_stmt.inserted[name] for name in _SUM_COLUMNS}
        return my_stmt.on_duplicate_key_update(my_sums)
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(table).values(list(rows))
        pg_sums: dict[str, ColumnElement[Any]] = {
            name: table.c[name] + pg_stmt.excluded[name] for name in _SUM_COLUMNS
        }
        return pg_stmt.on_conflict_do_update(index_elements=list(_KEY_COLUMNS), set_=pg_sums)
    lite_stmt = sqlite.insert(table).values(list(rows))
    lite_sums: dict[str, ColumnElement[Any]] = {
        name: table.c[name] + lite_stmt.excluded[name] for name in _SUM_COLUMNS
    }
    return lite_stmt.on_conflict_do_update(index_elements=list(_KEY_COLUMNS), set_=lite_sums)


def describe_error(exc: BaseException) -> str:
    """One line naming the error, without the SQL statement or its parameters."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(original).__name__}: {first[:300]}" if first else type(original).__name__
