"""Usage log writer throughput: rows/s of ``LogWriter`` into SQLite or PostgreSQL.

    .venv/bin/python bench/log_writer.py --db sqlite
    .venv/bin/python bench/log_writer.py --db postgres      # postgres@127.0.0.1:5432, trust auth

Creates a fresh database (a temporary SQLite file, or a uniquely named PostgreSQL database that is
dropped afterwards), migrates it, seeds a user, a token and a channel, and runs the real writer
(``LogWriter(db, LeaseBalanceStore(db), rollup=None)``, its default batch size and queue) in two
phases:

* burst: ``--rows`` consume entries (type 2) with their charges, submitted as fast as the queue
  takes them, then ``flush()``: rows/s = rows / (last commit - first submit);
* paced: ``--paced-rate`` rows/s for ``--paced-seconds`` while a 1 ms ticker measures the event
  loop's lag (what a relay request on the same loop would wait), p50/p99/max, next to the same
  lag with the writer idle, and the largest queue depth seen (the writer keeps up when it stays
  within a few batches).

Then checks that every row and charge arrived (row count, the user's used_quota).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/log_writer.py` as well as `python -m bench.log_writer`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from tests.seed import create_channel, create_token, create_user  # noqa: E402
from tollway.billing.balances import LeaseBalanceStore  # noqa: E402
from tollway.db.engine import Database  # noqa: E402
from tollway.db.migrate import migrate  # noqa: E402
from tollway.db.models import Log, User  # noqa: E402
from tollway.db.models.log import LOG_CONSUME  # noqa: E402
from tollway.settings import load_settings  # noqa: E402
from tollway.usage.log_writer import LogWriter  # noqa: E402
from tollway.usage.records import Charge, LogEntry  # noqa: E402

TARGET_ROWS_PER_S = 20_000
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
QUOTA_PER_ROW = 150


@contextlib.asynccontextmanager
async def temporary_database(kind: str) -> AsyncIterator[str]:
    """A DSN for a fresh, empty database (SQLite file or PostgreSQL database), removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tollway-logbench-") as folder:
            yield f"sqlite:///{folder}/logs.db"
        return
    import asyncpg  # type: ignore[import-untyped]

    name = f"tollway_bench_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}?sslmode=disable"
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_items(count: int, user_id: int, token_id: int, channel_id: int) -> list[tuple[LogEntry, Charge]]:
    """Consume entries shaped like the relay's, each with its charge."""
    now = int(time.time())
    other = json.dumps({"model_ratio": 0.075, "completion_ratio": 4, "group_ratio": 1, "frt": 12})
    return [
        (
            LogEntry(
                user_id=user_id,
                created_at=now,
                type=LOG_CONSUME,
                content="model ratio 0.075, completion ratio 4, group ratio 1",
                username="bench",
                token_name="bench",
                model_name="gpt-4o-mini",
                quota=QUOTA_PER_ROW,
                prompt_tokens=25,
                completion_tokens=10,
                use_time=1,
                is_stream=i % 2 == 0,
                channel_id=channel_id,
                token_id=token_id,
                group="default",
                other=other,
                ip="127.0.0.1",
                request_id=f"bench-{i:08d}-{uuid.uuid4().hex[:8]}",
            ),
            Charge(user_id, token_id, channel_id, QUOTA_PER_ROW, token_limited=False),
        )
        for i in range(count)
    ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else 0.0


async def burst(writer: LogWriter, items: list[tuple[LogEntry, Charge]]) -> float:
    """Submit everything as fast as the queue takes it, then flush; returns seconds."""
    started = time.perf_counter()
    for index, (entry, charge) in enumerate(items):
        await writer.submit(entry, charge)
        if index % 500 == 499:
            await asyncio.sleep(0)  # let the writer take batches, as a busy relay does
    await writer.flush()
    return time.perf_counter() - started


class LagMeter:
    """How late a 1 ms timer fires: what a request on the same event loop waits."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagMeter:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - before - 0.001)

    def summary(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_p50_ms": round(percentile(self.lags, 50) * 1000, 3),
            f"{prefix}_p99_ms": round(percentile(self.lags, 99) * 1000, 3),
            f"{prefix}_max_ms": round(max(self.lags, default=0.0) * 1000, 3),
        }


async def paced(writer: LogWriter, items: list[tuple[LogEntry, Charge]], rate: int) -> dict[str, float]:
    """Submit at ``rate`` rows/s (a slice every 5 ms) while measuring the event loop's lag; the
    same lag measured for a second with the writer idle first, as the baseline."""
    async with LagMeter() as idle:
        await asyncio.sleep(1.0)
    depth = 0
    step = 0.005
    per_step = max(1, round(rate * step))
    async with LagMeter() as busy:
        started = time.perf_counter()
        for offset in range(0, len(items), per_step):
            for entry, charge in items[offset : offset + per_step]:
                if not writer.submit_nowait(entry, charge):
                    await writer.submit(entry, charge)
            depth = max(depth, writer.queue_depth)
            delay = started + (offset // per_step + 1) * step - time.perf_counter()
            await asyncio.sleep(max(0.0, delay))
        submitted = time.perf_counter() - started
        await writer.flush()
    return {
        "rate_rows_per_s": round(len(items) / submitted, 1),
        **idle.summary("idle_lag"),
        **busy.summary("loop_lag"),
        "max_queue_depth": depth,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with temporary_database(args.db) as dsn:
        settings = load_settings(
            sql_dsn=dsn, log_sql_dsn="", session_secret="bench-session", crypto_secret="bench-crypto"
        )
        db = Database(settings)
        try:
            await migrate(db)
            user_id = await create_user(db, "bench", quota=10**15)
            token_id, _ = await create_token(db, user_id, crypto_secret=settings.crypto_secret)
            channel_id = await create_channel(db, "http://127.0.0.1:9/v1")
            store = LeaseBalanceStore(db)
            await store.start()
            writer = LogWriter(db, store, rollup=None)
            await writer.start()
            items = make_items(args.rows, user_id, token_id, channel_id)
            seconds = await burst(writer, items)
            batches = writer.batches_written
            paced_items = make_items(int(args.paced_rate * args.paced_seconds), user_id, token_id, channel_id)
            pacing = await paced(writer, paced_items, args.paced_rate)
            await writer.stop()
            await store.stop()
            async with db.session() as session:
                rows = await session.scalar(select(func.count()).select_from(Log))
                used = await session.scalar(select(User.used_quota).where(User.id == user_id))
        finally:
            await db.dispose()
    expected = args.rows + len(paced_items)
    return {
        "db": args.db,
        "rows": args.rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(args.rows / seconds, 1),
        "batches": batches,
        "failures": writer.failures,
        "paced": pacing,
        "rows_in_table": rows,
        "complete": rows == expected and used == expected * QUOTA_PER_ROW,
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "met": args.rows / seconds >= TARGET_ROWS_PER_S,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--paced-rate", type=int, default=TARGET_ROWS_PER_S, help="rows/s of the paced phase")
    parser.add_argument("--paced-seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    p = result["paced"]
    print(
        f"log writer → {result['db']}: {result['rows']} rows in {result['seconds']:.2f} s = "
        f"{result['rows_per_s']:,.0f} rows/s (target {TARGET_ROWS_PER_S:,}: "
        f"{'met' if result['met'] else 'NOT met'}), {result['batches']} batches, "
        f"{result['failures']} failed attempts\n"
        f"paced {p['rate_rows_per_s']:,.0f} rows/s: event-loop lag p50 {p['loop_lag_p50_ms']:.2f} ms, "
        f"p99 {p['loop_lag_p99_ms']:.2f} ms, max {p['loop_lag_max_ms']:.2f} ms "
        f"(writer idle: p50 {p['idle_lag_p50_ms']:.2f}, p99 {p['idle_lag_p99_ms']:.2f}, "
        f"max {p['idle_lag_max_ms']:.2f} ms); queue depth max {p['max_queue_depth']}\n"
        f"rows in table {result['rows_in_table']}, all rows and charges arrived: {result['complete']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
