"""The relay's token and user cache on every database: one query for many concurrent misses, and an
expired entry served while a single background load replaces it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, update

from tollway.db.engine import Database
from tollway.db.models import Token, User
from tollway.node_sync import NodeCounters
from tollway.relay.accounts import AccountCache

pytestmark = pytest.mark.db
KEY_HASH = "k" * 64


@pytest.fixture(autouse=True)
async def seeded(db: Database) -> None:
    """alice and her token, in the migrated database of tests/integration/conftest.py."""
    async with db.session() as session, session.begin():
        session.add(User(id=1, username="alice", password="x", quota=1000))
        await session.flush()
        session.add(Token(id=7, user_id=1, key_hash=KEY_HASH, name="first", remain_quota=300))


@contextmanager
def counted_selects(db: Database, table: str) -> Iterator[list[str]]:
    """The SELECT statements on ``table`` sent to the database while the block runs."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement.replace('"', ""):
            seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", before)


async def rename_token(db: Database, name: str) -> None:
    async with db.session() as session, session.begin():
        await session.execute(update(Token).where(Token.id == 7).values(name=name))


async def test_concurrent_misses_share_one_query(db: Database) -> None:
    cache = AccountCache(db, NodeCounters(), ttl=60)
    with counted_selects(db, "tokens") as token_queries, counted_selects(db, "users") as user_queries:
        tokens = await asyncio.gather(*(cache.token(KEY_HASH) for _ in range(20)))
        users = await asyncio.gather(*(cache.user(1) for _ in range(20)))
    assert {t.name for t in tokens if t is not None} == {"first"} and None not in tokens
    assert {u.username for u in users if u is not None} == {"alice"} and None not in users
    assert len(token_queries) == 1
    assert len(user_queries) == 1


async def test_an_expired_entry_is_served_while_one_load_replaces_it(db: Database) -> None:
    cache = AccountCache(db, NodeCounters(), ttl=0.3)
    first = await cache.token(KEY_HASH)
    assert first is not None and first.name == "first"
    await rename_token(db, "second")
    await asyncio.sleep(0.35)  # expired, not yet twice the ttl
    with counted_selects(db, "tokens") as queries:
        stale = await asyncio.gather(*(cache.token(KEY_HASH) for _ in range(10)))
        assert [t.name for t in stale if t is not None] == ["first"] * 10  # no request waited
        for _ in range(100):
            fresh = await cache.token(KEY_HASH)
            if fresh is not None and fresh.name == "second":
                break
            await asyncio.sleep(0.01)
    assert fresh is not None and fresh.name == "second"
    assert len(queries) == 1  # one background load for the ten


async def test_an_entry_older_than_twice_its_ttl_is_read_again_before_answering(db: Database) -> None:
    cache = AccountCache(db, NodeCounters(), ttl=0.15)
    assert (await cache.token(KEY_HASH)) is not None
    await rename_token(db, "second")
    await asyncio.sleep(0.35)
    again = await cache.token(KEY_HASH)
    assert again is not None and again.name == "second"


async def test_a_cancelled_caller_does_not_cancel_the_load_others_wait_for(db: Database) -> None:
    cache = AccountCache(db, NodeCounters(), ttl=60)
    gone = asyncio.create_task(cache.token(KEY_HASH))
    staying = asyncio.create_task(cache.token(KEY_HASH))
    await asyncio.sleep(0)
    gone.cancel()
    record = await staying
    assert record is not None and record.name == "first"
    assert gone.cancelled()


async def test_a_load_finishing_after_a_change_is_not_cached(db: Database) -> None:
    cache = AccountCache(db, NodeCounters(), ttl=60)
    original = cache._load_token
    read, release = asyncio.Event(), asyncio.Event()

    async def slow_load(key_hash: str, now: float) -> Any:
        record = await original(key_hash, now)  # the row as it was
        read.set()
        await release.wait()
        return record

    cache._load_token = slow_load  # type: ignore[method-assign]
    loading = asyncio.create_task(cache.token(KEY_HASH))
    await read.wait()
    await rename_token(db, "second")
    cache.tokens_changed()  # what the management API does after changing a token
    release.set()
    assert (await loading) is not None
    cache._load_token = original  # type: ignore[method-assign]
    current = await cache.token(KEY_HASH)
    assert current is not None and current.name == "second"
