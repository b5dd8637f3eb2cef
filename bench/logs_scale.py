"""The usage logs at scale (issue 5): the dashboard's typical queries on N seeded log rows.

    .venv/bin/python bench/logs_scale.py --db sqlite                      # 200,000 rows: a quick look
    .venv/bin/python bench/logs_scale.py --db postgres --rows 10000000    # the acceptance run

Seeds ``--rows`` logs spread over the 30 days before the seed (a few hundred users with Zipf-like
activity, 1-3 tokens each, a handful of favourite models each out of 50, every model served by
1-3 of 20 channels; 92 % consume, 5 % error, the rest top-up, manage, system and login logs), then
times the real query functions of ``tollway.usage`` ``--repeat`` times each (after one untimed
run) and prints p50/p95 per query, as a table and as JSON (``--json FILE``).

Seeding takes the bulk path: the summary triggers and the secondary indexes of ``logs`` are
dropped, the rows loaded (SQLite ``executemany``, PostgreSQL ``COPY`` into the monthly partitions),
then the summaries are rebuilt with the migration's backfill (``log_counts.rebuild``) and the
triggers and indexes put back, so the database ends exactly as the real write path leaves it.
The seeded database is reused by later runs with the same ``--rows`` (a SQLite file under
``--dir``, or PostgreSQL database ``tollway_logscale_<rows>``); ``--reseed`` starts over. The
PostgreSQL database is dropped at the end unless ``--keep`` is given.

Every total a query answers is checked against a brute-force ``COUNT(*)`` with the same filters
(its time is shown too, as the cost the summaries avoid); the run exits 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/logs_scale.py` as well as `python -m bench.logs_scale`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, func, select, text  # noqa: E402

from tollway.db.engine import Database  # noqa: E402
from tollway.db.migrate import migrate  # noqa: E402
from tollway.db.models import Log  # noqa: E402
from tollway.db.models.log import LOG_CONSUME  # noqa: E402
from tollway.db.partitions import create_month_partitions  # noqa: E402
from tollway.settings import load_settings  # noqa: E402
from tollway.usage import log_counts  # noqa: E402
from tollway.usage.export import export_csv  # noqa: E402
from tollway.usage.queries import LogFilter, list_logs, log_stat  # noqa: E402

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")
DAYS = 30
USERS, MODELS, CHANNELS = 300, 50, 20
TARGET_MS = 100.0
CHUNK = 50_000
COLUMNS = (
    "user_id", "created_at", "type", "content", "username", "token_name", "model_name", "quota",
    "prompt_tokens", "completion_tokens", "use_time", "is_stream", "channel_id", "token_id",
    "group_name", "other", "ip", "request_id",
)  # fmt: skip
TYPES = (2, 5, 1, 3, 4, 7)  # consume, error, top-up, manage, system, login
TYPE_WEIGHTS = (92, 5, 1, 1, 0.5, 0.5)


# ----- the synthetic population -----------------------------------------------------------------


@dataclass
class User:
    id: int
    name: str
    group: str
    tokens: list[tuple[int, str]]
    models: list[int]
    model_weights: list[float]


@dataclass
class World:
    users: list[User]
    user_weights: list[float]
    models: list[str]
    channels_of: list[list[int]] = field(default_factory=list)


def make_world(rng: random.Random) -> World:
    models = [
        f"model-{i:02d}-{rng.choice(['chat', 'mini', 'pro', 'turbo', 'vision'])}" for i in range(MODELS)
    ]
    popularity = [1 / (rank + 1) ** 1.1 for rank in range(MODELS)]
    channels_of = [rng.sample(range(1, CHANNELS + 1), rng.randint(1, 3)) for _ in range(MODELS)]
    users: list[User] = []
    token_id = 0
    for index in range(USERS):
        tokens = []
        for _ in range(rng.randint(1, 3)):
            token_id += 1
            tokens.append((token_id, f"key-{token_id}"))
        chosen = sorted(set(rng.choices(range(MODELS), weights=popularity, k=rng.randint(3, 8))))
        group = rng.choices(["default", "vip", "svip"], weights=[80, 15, 5])[0]
        users.append(
            User(
                index + 1, f"user{index + 1:03d}", group, tokens, chosen, [rng.random() + 0.1 for _ in chosen]
            )
        )
    user_weights = [1 / (rank + 1) ** 1.05 for rank in range(USERS)]
    return World(users, user_weights, models, channels_of)


def generate(world: World, rows: int, start: int, end: int, seed: int) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of rows (tuples in ``COLUMNS`` order), ``created_at`` ascending over [start, end)."""
    rng = random.Random(seed)
    other = json.dumps({"model_ratio": 0.075, "completion_ratio": 4, "group_ratio": 1, "frt": 412})
    step = (end - start) / rows
    for offset in range(0, rows, CHUNK):
        count = min(CHUNK, rows - offset)
        users = rng.choices(world.users, weights=world.user_weights, k=count)
        kinds = rng.choices(TYPES, weights=TYPE_WEIGHTS, k=count)
        chunk = []
        for i in range(count):
            user, kind = users[i], kinds[i]
            created = start + int((offset + i) * step)
            if kind in (2, 5):
                model = rng.choices(user.models, weights=user.model_weights)[0]
                token_id, token_name = rng.choice(user.tokens)
                channel = rng.choice(world.channels_of[model])
                prompt, completion = rng.randint(10, 4000), rng.randint(1, 1000)
                quota = 0 if kind == 5 else prompt + completion * 4
                chunk.append((
                    user.id, created, kind, "model ratio 0.075, completion ratio 4" if kind == 2 else "upstream 502",
                    user.name, token_name, world.models[model], quota, prompt, completion,
                    rng.randint(1, 30), rng.random() < 0.6, channel, token_id, user.group,
                    other if kind == 2 else "", f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                    f"{rng.getrandbits(128):032x}",
                ))  # fmt: skip
            else:
                chunk.append((
                    user.id, created, kind, "an account event", user.name, "", "", 5000 if kind == 1 else 0,
                    0, 0, 0, False, 0, 0, user.group, "", "", f"{rng.getrandbits(128):032x}",
                ))  # fmt: skip
        yield chunk


# ----- databases --------------------------------------------------------------------------------


async def _pg_admin(sql: str) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _dsn(args: argparse.Namespace) -> str:
    if args.db == "sqlite":
        return f"sqlite:///{args.dir / f'tollway-logscale-{args.rows}.db'}"
    return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/tollway_logscale_{args.rows}?sslmode=disable"


async def _exists(args: argparse.Namespace) -> bool:
    if args.db == "sqlite":
        path: Path = args.dir / f"tollway-logscale-{args.rows}.db"
        return await asyncio.to_thread(path.exists)
    name = f"tollway_logscale_{args.rows}"
    return bool(await _pg_admin(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))


async def _drop(args: argparse.Namespace) -> None:
    if args.db == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            (args.dir / f"tollway-logscale-{args.rows}.db{suffix}").unlink(missing_ok=True)
    else:
        await _pg_admin(f'DROP DATABASE IF EXISTS "tollway_logscale_{args.rows}" WITH (FORCE)')


async def seeded_at(db: Database) -> int | None:
    """The seed's "now", or None when the database was not seeded to the end."""
    async with db.log_engine.connect() as conn:
        try:
            return int(await conn.scalar(text("SELECT seeded_at FROM bench_seed")) or 0) or None
        except Exception:
            return None


def _secondary_indexes(sync: Connection, create: bool) -> None:
    for index in Log.__table__.indexes:  # type: ignore[attr-defined]
        if create:
            index.create(sync)
        else:
            sync.execute(text(f'DROP INDEX IF EXISTS "{index.name}"'))


async def seed(db: Database, args: argparse.Namespace) -> int:
    now = int(time.time())
    end = now - now % 60
    start = end - DAYS * 86400
    world = make_world(random.Random(args.seed))
    async with db.log_engine.begin() as conn:
        if db.log_url.dialect == "postgresql":
            first = datetime.fromtimestamp(start, UTC)
            await conn.run_sync(lambda sync: create_month_partitions(sync, "logs", months_ahead=4, now=first))
        await conn.run_sync(log_counts.drop_triggers)
        await conn.run_sync(_secondary_indexes, False)
    began = time.perf_counter()
    chunks = generate(world, args.rows, start, end, args.seed)
    if db.log_url.dialect == "sqlite":
        await asyncio.to_thread(_load_sqlite, str(db.log_url.url.database), chunks, args.rows)
    else:
        await _load_postgres(args, chunks)
    print(f"  loaded {args.rows:,} rows in {time.perf_counter() - began:.0f} s", flush=True)
    began = time.perf_counter()
    async with db.log_engine.begin() as conn:
        await conn.run_sync(_secondary_indexes, True)
        print(f"  indexes built in {time.perf_counter() - began:.0f} s", flush=True)
        await conn.run_sync(log_counts.rebuild)
        await conn.run_sync(log_counts.create_triggers)
        await conn.execute(text("CREATE TABLE bench_seed (seeded_at BIGINT NOT NULL)"))
        await conn.execute(text("INSERT INTO bench_seed VALUES (:now)"), {"now": end})
    print(f"  indexes and summaries built in {time.perf_counter() - began:.0f} s", flush=True)
    async with db.log_engine.connect() as conn:
        if db.log_url.dialect == "postgresql":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
        else:
            await conn.execute(text("ANALYZE"))
    return end


def _load_sqlite(path: str, chunks: Iterator[list[tuple[Any, ...]]], rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-500000")
    sql = f"INSERT INTO logs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    done = 0
    for chunk in chunks:
        conn.executemany(sql, chunk)
        conn.commit()
        done += len(chunk)
        if done % 1_000_000 < CHUNK:
            print(f"  {done:,} / {rows:,}", flush=True)
    conn.close()


async def _load_postgres(args: argparse.Namespace, chunks: Iterator[list[tuple[Any, ...]]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=f"tollway_logscale_{args.rows}"
    )
    try:
        done = 0
        for chunk in chunks:
            await conn.copy_records_to_table("logs", records=chunk, columns=list(COLUMNS))
            done += len(chunk)
            if done % 1_000_000 < CHUNK:
                print(f"  {done:,} / {args.rows:,}", flush=True)
    finally:
        await conn.close()


# ----- the queries ------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    run: Callable[[int], Awaitable[int | None]]  # (repetition) -> the total it answered, if any
    filters: Callable[[int], LogFilter | None]  # the filter of that repetition, for the check
    page: bool = True  # a page query: held to the 100 ms target


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# Users 1, 2, 10, 60 and 250: the busiest (activity falls with the id) down to a light one.
QUERIED_USERS = [1, 2, 10, 60, 250]
QUERIED_MODELS = [0, 3, 10, 30]  # indexes into the world's models, by popularity: busy to rare


def cases(db: Database, now: int, users: list[int], models: list[str]) -> list[Case]:
    day = 86400
    odd = 1234  # consoles send date-picker timestamps, not whole hours

    def by_user(i: int) -> LogFilter:
        return LogFilter(user_id=users[i % len(users)])

    def model_week(i: int) -> LogFilter:
        return LogFilter(model_name=models[i % len(models)], start=now - 7 * day - odd, end=now - odd)

    def month(i: int) -> LogFilter:
        return LogFilter(start=now - 30 * day + odd, end=now)

    async def page(flt: LogFilter, offset: int = 0, limit: int = 10) -> int:
        return (await list_logs(db, flt, offset=offset, limit=limit)).total

    async def keyset(i: int) -> int:
        first = await list_logs(db, LogFilter(), offset=0, limit=1)
        before = first.rows[0].id - 49_900
        return (await list_logs(db, LogFilter(), offset=0, limit=100, before_id=before)).total

    async def stat(i: int) -> int:
        return (await log_stat(db, month(i), now=now)).total_requests

    async def export(_i: int) -> None:
        size = 0
        async for chunk in export_csv(db, LogFilter(), admin=True, quota_per_unit=500_000, max_rows=100_000):
            size += len(chunk)

    return [
        Case("first page, unfiltered", lambda i: page(LogFilter()), lambda i: LogFilter()),
        Case("first page, by user", lambda i: page(by_user(i)), by_user),
        Case("first page, by type (errors)", lambda i: page(LogFilter(type=5)), lambda i: LogFilter(type=5)),
        Case("model + 7 days", lambda i: page(model_week(i)), model_week),
        Case("deep page (p=500, 100/page)", lambda i: page(LogFilter(), 49_900, 100), lambda i: LogFilter()),
        Case("deep page, keyset (before_id)", keyset, lambda i: LogFilter()),
        Case("stat, 30 days", stat, lambda i: LogFilter(type=LOG_CONSUME, start=now - 30 * day + odd, end=now)),
        Case("stat, 30 days, by user", lambda i: _stat_user(db, now, users[i % len(users)]),
             lambda i: LogFilter(type=LOG_CONSUME, user_id=users[i % len(users)], start=now - 30 * day + odd, end=now)),
        Case("export 100k rows (CSV)", export, lambda i: None, page=False),
    ]  # fmt: skip


async def _stat_user(db: Database, now: int, user_id: int) -> int:
    flt = LogFilter(user_id=user_id, start=now - 30 * 86400 + 1234, end=now)
    return (await log_stat(db, flt, now=now)).total_requests


async def brute_force(db: Database, flt: LogFilter) -> tuple[int, float]:
    """The plain ``COUNT(*)`` with the same filters, and its time in ms."""
    started = time.perf_counter()
    async with db.log_session() as session:
        count = int(await session.scalar(select(func.count()).select_from(Log).where(*flt.conditions())) or 0)
    return count, (time.perf_counter() - started) * 1000


async def measure(db: Database, case: Case, repeat: int) -> dict[str, Any]:
    await case.run(0)  # warm-up, untimed
    times: list[float] = []
    mismatches = 0
    raw_ms: list[float] = []
    checked: set[LogFilter] = set()
    for i in range(repeat):
        started = time.perf_counter()
        total = await case.run(i)
        times.append((time.perf_counter() - started) * 1000)
        flt = case.filters(i)
        if total is not None and flt is not None and flt not in checked:
            checked.add(flt)
            expected, ms = await brute_force(db, flt)
            raw_ms.append(ms)
            mismatches += expected != total
    p95 = percentile(times, 95)
    return {
        "query": case.name,
        "n": repeat,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(max(times), 2),
        "raw_count_ms": round(statistics.median(raw_ms), 1) if raw_ms else None,
        "exact": mismatches == 0 if raw_ms else None,
        "page_query": case.page,
        "met": p95 < TARGET_MS if case.page else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.reseed:
        await _drop(args)
    fresh = not await _exists(args)
    if fresh and args.db == "postgres":
        await _pg_admin(f'CREATE DATABASE "tollway_logscale_{args.rows}"')
    settings = load_settings(
        sql_dsn=_dsn(args), log_sql_dsn="", session_secret="bench-session", crypto_secret="bench-crypto"
    )
    db = Database(settings)
    try:
        now = None if fresh else await seeded_at(db)
        seed_seconds = None
        if now is None:
            if not fresh:  # an interrupted seed: start over
                await db.dispose()
                await _drop(args)
                if args.db == "postgres":
                    await _pg_admin(f'CREATE DATABASE "tollway_logscale_{args.rows}"')
                db = Database(settings)
            print(f"seeding {args.rows:,} rows into {args.db} ({_dsn(args)})", flush=True)
            started = time.perf_counter()
            await migrate(db)
            now = await seed(db, args)
            seed_seconds = round(time.perf_counter() - started, 1)
        else:
            print(f"reusing the seeded database {_dsn(args)}", flush=True)
        world = make_world(random.Random(args.seed))  # the same names as the seed's
        models = [world.models[index] for index in QUERIED_MODELS]
        results = []
        for case in cases(db, now, QUERIED_USERS, models):
            repeat = max(3, args.repeat // 5) if not case.page else args.repeat
            result = await measure(db, case, repeat)
            results.append(result)
            print(f"  {case.name}: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms", flush=True)
    finally:
        await db.dispose()
        if args.db == "postgres" and not args.keep:
            await _drop(args)
    return {
        "db": args.db,
        "rows": args.rows,
        "seed_seconds": seed_seconds,
        "target_ms": TARGET_MS,
        "results": results,
        "meta": {"cores": os.cpu_count(), "load": os.getloadavg(), "repeat": args.repeat},
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['db']}, {result['rows']:,} rows (target: every page query p95 < {TARGET_MS:.0f} ms)",
        f"{'query':<32} {'p50 ms':>9} {'p95 ms':>9} {'raw COUNT ms':>13} {'exact':>6} {'met':>5}",
    ]
    for row in result["results"]:
        raw = "" if row["raw_count_ms"] is None else f"{row['raw_count_ms']:.1f}"
        exact = "" if row["exact"] is None else ("yes" if row["exact"] else "NO")
        met = "" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(
            f"{row['query']:<32} {row['p50_ms']:>9.2f} {row['p95_ms']:>9.2f} {raw:>13} {exact:>6} {met:>5}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per page query")
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")), help="SQLite files"
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--reseed", action="store_true", help="drop a seeded database and seed again")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database for the next run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(table(result))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(row["exact"] is not False for row in result["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
