"""The lease-based balance store on every database: reservations never overspend, settlements
and refunds are exact, and balance + leases + charged quota is conserved through crashes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, update

from tollway.billing.balances import InsufficientQuota, LeaseBalanceStore, leased_amounts
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models import LeaseHolder, QuotaLease, Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.db.sqlite_thread import run_on_sqlite_thread
from tollway.settings import Settings
from tollway.usage.records import Charge

pytestmark = pytest.mark.db


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await migrate(database)
    async with database.session() as session, session.begin():
        session.add(User(id=1, username="alice", password="x", quota=1000))
        await session.flush()
        session.add(
            Token(id=7, user_id=1, key_hash="h" * 64, name="t", remain_quota=300, unlimited_quota=False)
        )
    yield database
    await database.dispose()


async def user_row(db: Database) -> tuple[int, int, int]:
    async with db.session() as session:
        user = await session.get(User, 1)
        assert user is not None
        return user.quota, user.used_quota, user.request_count


async def held(db: Database, kind: int = ACCOUNT_USER, account: int = 1) -> int:
    async with db.session() as session:
        return (await leased_amounts(session, kind, [account])).get(account, 0)


async def flush(db: Database, store: LeaseBalanceStore, charges: list[Charge]) -> None:
    """As the log writer applies a batch: on SQLite on the connection's own thread, in one round
    trip (``apply_sqlite``), elsewhere statement by statement (``apply``)."""
    async with db.session() as session, session.begin():
        if db.dialect == "sqlite":
            conn = await session.connection()
            await run_on_sqlite_thread(conn, lambda raw: store.apply_sqlite(raw, charges))
        else:
            await store.apply(session, charges)


async def test_reserve_settle_and_flush_conserve_quota(db: Database) -> None:
    store = LeaseBalanceStore(db)
    await store.start()
    reservation = await store.reserve(1, None, 100, user_hint=1000)
    quota, _, _ = await user_row(db)
    assert quota + await held(db) == 1000  # the lease came out of the balance column
    store.settle(reservation, 60)
    await flush(db, store, [Charge(user_id=1, token_id=0, channel_id=0, quota=60, token_limited=False)])
    quota, used, requests = await user_row(db)
    assert quota + await held(db) == 940
    assert (used, requests) == (60, 1)
    await store.stop()
    assert await user_row(db) == (940, 60, 1)
    assert await held(db) == 0


async def test_refund_gives_everything_back(db: Database) -> None:
    store = LeaseBalanceStore(db)
    await store.start()
    reservation = await store.reserve(1, 7, 250, user_hint=1000, token_hint=300)
    store.refund(reservation)
    await store.stop()
    assert (await user_row(db))[0] == 1000
    async with db.session() as session:
        token = await session.get(Token, 7)
        assert token is not None and token.remain_quota == 300


async def test_insufficient_balance_is_refused_and_changes_nothing(db: Database) -> None:
    store = LeaseBalanceStore(db)
    await store.start()
    with pytest.raises(InsufficientQuota) as caught:
        await store.reserve(1, None, 1001, user_hint=1000)
    assert caught.value.kind == ACCOUNT_USER
    with pytest.raises(InsufficientQuota) as token_short:
        await store.reserve(1, 7, 301, user_hint=1000, token_hint=300)
    assert token_short.value.kind == ACCOUNT_TOKEN
    await store.stop()
    assert (await user_row(db))[0] == 1000


async def test_concurrent_reservations_on_two_workers_never_overspend(db: Database) -> None:
    workers = [LeaseBalanceStore(db), LeaseBalanceStore(db)]
    for worker in workers:
        await worker.start()

    async def one(worker: LeaseBalanceStore) -> int:
        try:
            reservation = await worker.reserve(1, None, 50, user_hint=1000)
        except InsufficientQuota:
            return 0
        await asyncio.sleep(0)
        worker.settle(reservation, 50)
        return 50

    spent = await asyncio.gather(*(one(workers[i % 2]) for i in range(64)))
    total = sum(spent)
    assert total <= 1000
    assert total >= 1000 - 2 * 49  # at most a crumb below one reservation may stay in each lease
    for worker in workers:
        charges = [Charge(user_id=1, token_id=0, channel_id=0, quota=50, token_limited=False)] * (
            total // 100
        )
        await flush(db, worker, charges)
    quota, used, _ = await user_row(db)
    assert quota + await held(db) + used == 1000
    for worker in workers:
        await worker.stop()
    quota, used, _ = await user_row(db)
    assert quota + used == 1000
    assert quota >= 0


async def test_settling_beyond_the_lease_becomes_a_debt_paid_on_return(db: Database) -> None:
    store = LeaseBalanceStore(db, fraction=0)
    await store.start()
    reservation = await store.reserve(1, None, 10, user_hint=1000)  # lease of exactly 10
    store.settle(reservation, 400)  # the answer cost far more than reserved
    await flush(db, store, [Charge(user_id=1, token_id=0, channel_id=0, quota=400, token_limited=False)])
    assert await held(db) == -390
    await store.stop()
    assert await user_row(db) == (600, 400, 1)


async def test_leases_of_a_crashed_worker_are_reclaimed(db: Database) -> None:
    crashed = LeaseBalanceStore(db)
    await crashed.start()
    reservation = await crashed.reserve(1, 7, 100, user_hint=1000, token_hint=300)
    crashed.settle(reservation, 30)
    await flush(db, crashed, [Charge(user_id=1, token_id=7, channel_id=0, quota=30, token_limited=True)])
    # ... and the process dies: no stop(), no more heartbeats.
    async with db.session() as session, session.begin():
        await session.execute(update(LeaseHolder).values(heartbeat_at=0))
    survivor = LeaseBalanceStore(db)
    await survivor.start()  # reclaims at start
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(QuotaLease)) == 0
        user = await session.get(User, 1)
        token = await session.get(Token, 7)
        assert user is not None and token is not None
        assert (user.quota, user.used_quota) == (970, 30)
        assert (token.remain_quota, token.used_quota) == (270, 30)
    await survivor.stop()


async def test_idle_leases_are_returned(db: Database) -> None:
    store = LeaseBalanceStore(db, idle_seconds=0)
    await store.start()
    reservation = await store.reserve(1, None, 10, user_hint=1000)
    assert await held(db) > 0
    assert await store.return_idle() == 0  # reserved: not idle
    store.settle(reservation, 10)
    await flush(db, store, [Charge(user_id=1, token_id=0, channel_id=0, quota=10, token_limited=False)])
    assert await store.return_idle() == 1
    assert await held(db) == 0
    assert (await user_row(db))[0] == 990
    await store.stop()
