"""The balance store: reserve, settle and refund quota without a database round trip per request.

Each worker process holds *leases*: slices of a user's ``quota`` (or a limited token's
``remain_quota``) moved into its custody by one conditional SQL update (``quota >= slice``), in the
same transaction that records the lease in ``quota_leases``. Requests reserve from the lease in
memory; settlement adjusts it in memory; the log writer's batch transaction turns settled charges
into durable changes (lease amount down, ``used_quota`` and ``request_count`` up) together with the
log rows that explain them. So at every commit, for every account::

    balance column + Σ lease amounts + Σ consume-log quota  ==  constant (apart from credits/debits)

and a balance never goes below zero except by the settlement difference of in-flight requests.

In memory, per account, ``available == lease amount in the database − reserved − settled but not
yet flushed``; every operation below keeps that equation true without waiting for a commit.

Leases are returned when idle, on shutdown, on a release signal from a worker that ran short, and —
for a process that died — by whoever notices its heartbeat stopped. See docs/adr/0003.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import cache

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.engine import Database
from tollway.db.models import LeaseHolder, QuotaLease, Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.usage.records import Charge

log = logging.getLogger("tollway.billing.balances")

HEARTBEAT_EXPIRY = 90  # seconds without a heartbeat before another process reclaims a holder's leases


class InsufficientQuota(Exception):
    """The account cannot cover the reservation: ``kind`` is ACCOUNT_USER or ACCOUNT_TOKEN."""

    def __init__(self, kind: int, needed: int) -> None:
        super().__init__(f"insufficient {'user' if kind == ACCOUNT_USER else 'token'} quota: needs {needed}")
        self.kind = kind
        self.needed = needed


@dataclass(frozen=True, slots=True)
class Reservation:
    user_id: int
    token_id: int | None  # None: an unlimited token, whose balance is not tracked
    amount: int


@dataclass
class _Account:
    kind: int
    id: int
    available: int = 0
    reserved: int = 0
    last_used: float = 0.0
    balance_hint: int = 0  # the balance column as last seen, to size the next lease
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def make_holder_id() -> str:
    return f"{socket.gethostname()[:48]}:{os.getpid()}:{time.time_ns() // 1_000_000}:{secrets.token_hex(3)}"


def _balance_column(kind: int) -> tuple[type[User] | type[Token], str]:
    return (User, "quota") if kind == ACCOUNT_USER else (Token, "remain_quota")


class LeaseBalanceStore:
    """Authoritative balances for this process, backed by leases in the main database."""

    def __init__(
        self,
        db: Database,
        *,
        holder: str | None = None,
        fraction: float = 0.25,
        max_slice: int = 25_000_000,
        idle_seconds: float = 30.0,
    ) -> None:
        self._db = db
        self.holder = holder or make_holder_id()
        self._fraction = fraction
        self._max_slice = max_slice
        self._idle_seconds = idle_seconds
        self._accounts: dict[tuple[int, int], _Account] = {}

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        now = int(time.time())
        async with self._db.session() as session, session.begin():
            await session.execute(
                insert(LeaseHolder).values(holder=self.holder, started_at=now, heartbeat_at=now)
            )
        await self.reclaim_expired()

    async def stop(self) -> None:
        """Return every lease. Call after the log writer's final flush."""
        for account in list(self._accounts.values()):
            await self._return(account)
        async with self._db.session() as session, session.begin():
            await session.execute(delete(LeaseHolder).where(LeaseHolder.holder == self.holder))

    # ----- the hot path ----------------------------------------------------------------------

    def _account(self, kind: int, account_id: int, hint: int) -> _Account:
        account = self._accounts.get((kind, account_id))
        if account is None:
            account = self._accounts[(kind, account_id)] = _Account(kind, account_id, balance_hint=hint)
        return account

    def available(self, kind: int, account_id: int) -> int:
        account = self._accounts.get((kind, account_id))
        return account.available if account else 0

    def estimate(self, kind: int, account_id: int, snapshot: int) -> int:
        """A best guess of the account's spendable balance (for the trust shortcut and messages)."""
        account = self._accounts.get((kind, account_id))
        if account is None:
            return snapshot
        return max(account.balance_hint, 0) + account.available

    def balance(self, kind: int, account_id: int, snapshot: int) -> int:
        """The balance as this process sees it, counting other requests' reservations as not yet
        spent (what a quota warning compares against its threshold)."""
        account = self._accounts.get((kind, account_id))
        if account is None:
            return snapshot
        return max(account.balance_hint, 0) + account.available + account.reserved

    async def reserve(
        self, user_id: int, token_id: int | None, amount: int, *, user_hint: int, token_hint: int = 0
    ) -> Reservation:
        """Set ``amount`` aside on the token (when limited) and the user, or raise InsufficientQuota."""
        now = time.monotonic()
        token = self._account(ACCOUNT_TOKEN, token_id, token_hint) if token_id is not None else None
        user = self._account(ACCOUNT_USER, user_id, user_hint)
        if token is not None:
            await self._take_from(token, amount, now)
        try:
            await self._take_from(user, amount, now)
        except InsufficientQuota:
            if token is not None:
                token.available += amount
                token.reserved -= amount
            raise
        return Reservation(user_id, token_id, amount)

    async def _take_from(self, account: _Account, amount: int, now: float) -> None:
        account.last_used = now
        if account.available < amount:
            await self._acquire(account, amount)
        account.available -= amount
        account.reserved += amount

    def settle(self, reservation: Reservation, cost: int) -> None:
        """The request finished: it cost ``cost`` (0 for a refund). Durable via the log writer."""
        delta = reservation.amount - cost
        user = self._accounts[(ACCOUNT_USER, reservation.user_id)]
        user.reserved -= reservation.amount
        user.available += delta
        if reservation.token_id is not None:
            token = self._accounts[(ACCOUNT_TOKEN, reservation.token_id)]
            token.reserved -= reservation.amount
            token.available += delta

    def refund(self, reservation: Reservation) -> None:
        self.settle(reservation, 0)

    # ----- leases ----------------------------------------------------------------------------

    def _slice(self, account: _Account, shortfall: int) -> int:
        spare = int(max(account.balance_hint - shortfall, 0) * self._fraction)
        return shortfall + min(spare, self._max_slice)

    async def _acquire(self, account: _Account, need: int) -> None:
        async with account.lock:
            shortfall = need - account.available
            if shortfall <= 0:
                return  # another request refilled the lease while we waited
            for amount in dict.fromkeys((self._slice(account, shortfall), shortfall)):
                if await self._take_lease(account, amount):
                    account.available += amount
                    return
        raise InsufficientQuota(account.kind, need)

    async def _take_lease(self, account: _Account, amount: int) -> bool:
        model, column = _balance_column(account.kind)
        balance = getattr(model, column)
        now = int(time.time())
        async with self._db.session() as session, session.begin():
            taken = await session.execute(
                update(model)
                .where(model.id == account.id, balance >= amount)
                .values({column: balance - amount})
                .execution_options(synchronize_session=False)
            )
            remaining = await session.scalar(select(balance).where(model.id == account.id))
            account.balance_hint = int(remaining or 0)
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return False
            await self._add_to_lease(session, account, amount, now)
        return True

    async def _add_to_lease(self, session: AsyncSession, account: _Account, amount: int, now: int) -> None:
        changed = await session.execute(
            update(QuotaLease)
            .where(
                QuotaLease.holder == self.holder,
                QuotaLease.account_kind == account.kind,
                QuotaLease.account_id == account.id,
            )
            .values(amount=QuotaLease.amount + amount, updated_at=now)
        )
        if changed.rowcount == 0:  # type: ignore[attr-defined]
            await session.execute(
                insert(QuotaLease).values(
                    holder=self.holder,
                    account_kind=account.kind,
                    account_id=account.id,
                    amount=amount,
                    updated_at=now,
                )
            )

    async def _return(self, account: _Account) -> int:
        """Give the lease back to the balance column. Returns the amount moved (may be negative:
        a debt from settlements beyond the lease)."""
        model, column = _balance_column(account.kind)
        balance = getattr(model, column)
        where_lease = (
            QuotaLease.holder == self.holder,
            QuotaLease.account_kind == account.kind,
            QuotaLease.account_id == account.id,
        )
        async with account.lock:
            async with self._db.session() as session, session.begin():
                # Lock order everywhere: the balance row, then the lease row.
                await session.execute(
                    update(model).where(model.id == account.id).values({column: balance + 0})
                )
                amount = await session.scalar(select(QuotaLease.amount).where(*where_lease).with_for_update())
                if amount is None:
                    return 0
                await session.execute(
                    update(model).where(model.id == account.id).values({column: balance + amount})
                )
                await session.execute(delete(QuotaLease).where(*where_lease))
            # The account object stays: requests in flight hold references to it.
            account.available -= amount
            account.balance_hint += amount
            return int(amount)

    async def return_idle(self, now: float | None = None) -> int:
        """Return the leases of accounts unused for ``idle_seconds`` (a periodic job)."""
        now = time.monotonic() if now is None else now
        idle = [
            a for a in self._accounts.values() if a.reserved == 0 and now - a.last_used >= self._idle_seconds
        ]
        for account in idle:
            await self._return(account)
        return len(idle)

    async def return_all_idle(self) -> None:
        """Another worker ran short: hand back everything not reserved right now."""
        await self.return_idle(now=float("inf"))

    async def heartbeat(self) -> None:
        async with self._db.session() as session, session.begin():
            alive = await session.execute(
                update(LeaseHolder)
                .where(LeaseHolder.holder == self.holder)
                .values(heartbeat_at=int(time.time()))
            )
            if alive.rowcount == 0:  # type: ignore[attr-defined]
                self._forget_reclaimed_leases()
                now = int(time.time())
                await session.execute(
                    insert(LeaseHolder).values(holder=self.holder, started_at=now, heartbeat_at=now)
                )

    def _forget_reclaimed_leases(self) -> None:
        """Our holder row vanished (we stalled and someone reclaimed our leases): whatever we
        thought we held was given back, so start from nothing; in-flight reservations become debt."""
        log.warning("quota leases of %s were reclaimed by another process; re-acquiring", self.holder)
        for account in self._accounts.values():
            account.available = -account.reserved

    async def reclaim_expired(self, now: int | None = None) -> int:
        """Return the leases of holders whose heartbeat stopped (crashed workers)."""
        now = int(time.time()) if now is None else now
        async with self._db.session() as session:
            dead = (
                await session.scalars(
                    select(LeaseHolder.holder).where(LeaseHolder.heartbeat_at < now - HEARTBEAT_EXPIRY)
                )
            ).all()
        for holder in dead:
            async with self._db.session() as session, session.begin():
                for kind in (ACCOUNT_USER, ACCOUNT_TOKEN):
                    model, column = _balance_column(kind)
                    owed = (
                        select(func.coalesce(func.sum(QuotaLease.amount), 0))
                        .where(QuotaLease.holder == holder, QuotaLease.account_kind == kind)
                        .where(QuotaLease.account_id == model.id)
                        .scalar_subquery()
                    )
                    held = select(QuotaLease.account_id).where(
                        QuotaLease.holder == holder, QuotaLease.account_kind == kind
                    )
                    await session.execute(
                        update(model)
                        .where(model.id.in_(held))
                        .values({column: getattr(model, column) + owed})
                        .execution_options(synchronize_session=False)
                    )
                await session.execute(delete(QuotaLease).where(QuotaLease.holder == holder))
                await session.execute(delete(LeaseHolder).where(LeaseHolder.holder == holder))
            log.warning("returned the quota leases of %s, which stopped sending heartbeats", holder)
        return len(dead)

    # ----- durable settlement (inside the log writer's transaction) ---------------------------

    async def apply(self, session: AsyncSession, charges: Sequence[Charge]) -> None:
        """Make ``charges`` durable in the session's transaction (see :meth:`_settlement`).

        The statements are plain SQL in the driver's paramstyle: through the ORM, compiling and
        evaluating them cost about a millisecond of the event loop's time per batch."""
        conn = await session.connection()
        sql = _settlement_sql(conn.dialect.paramstyle)
        for name, params, fallback, fallback_params in self._settlement(charges):
            done = await conn.exec_driver_sql(getattr(sql, name), params)
            if fallback and done.rowcount == 0:
                await conn.exec_driver_sql(getattr(sql, fallback), fallback_params)

    def apply_sqlite(self, conn: sqlite3.Connection, charges: Sequence[Charge]) -> None:
        """:meth:`apply` on SQLite's own connection, in its thread (the log writer's one round trip)."""
        sql = _settlement_sql("qmark")
        for name, params, fallback, fallback_params in self._settlement(charges):
            if conn.execute(getattr(sql, name), params).rowcount == 0 and fallback:
                conn.execute(getattr(sql, fallback), fallback_params)

    def _settlement(self, charges: Sequence[Charge]) -> list[_Step]:
        """Per account one update of its totals and one of this holder's lease, which falls back
        to a debit of the balance when the lease is gone (returned or reclaimed before this
        charge was flushed); then this holder's heartbeat. Accounts in id order (no deadlocks)."""
        users: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # used, requests
        tokens: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # used, limited spent
        channels: dict[int, int] = defaultdict(int)
        for charge in charges:
            entry = users[charge.user_id]
            entry[0] += charge.quota
            entry[1] += 1 if charge.count_request else 0
            if charge.token_id:
                tokens[charge.token_id][0] += charge.quota
                if charge.token_limited:
                    tokens[charge.token_id][1] += charge.quota
            if charge.channel_id:
                channels[charge.channel_id] += charge.quota
        now = int(time.time())
        holder = self.holder
        steps: list[_Step] = []
        for user_id in sorted(users):
            used, requests = users[user_id]
            steps.append(("user_totals", (used, requests, user_id), None, ()))
            if used:
                lease = (used, now, holder, ACCOUNT_USER, user_id)
                steps.append(("spend_lease", lease, "debit_user", (used, user_id)))
        for token_id in sorted(tokens):
            used, spent = tokens[token_id]
            steps.append(("token_totals", (used, now, token_id), None, ()))
            if spent:
                lease = (spent, now, holder, ACCOUNT_TOKEN, token_id)
                steps.append(("spend_lease", lease, "debit_token", (spent, token_id)))
        for channel_id in sorted(channels):
            steps.append(("channel_totals", (channels[channel_id], channel_id), None, ()))
        steps.append(("heartbeat", (now, holder), None, ()))
        return steps


_Step = tuple[str, tuple[object, ...], str | None, tuple[object, ...]]
"""(statement, parameters, statement to run instead when the first changed no row, its parameters)"""


@dataclass(frozen=True)
class _SettlementSql:
    """The settlement's statements, written with ``?`` and translated to a driver's paramstyle."""

    user_totals: str = (
        "UPDATE users SET used_quota = used_quota + ?, request_count = request_count + ? WHERE id = ?"
    )
    token_totals: str = "UPDATE tokens SET used_quota = used_quota + ?, accessed_time = ? WHERE id = ?"  # noqa: S105
    channel_totals: str = "UPDATE channels SET used_quota = used_quota + ? WHERE id = ?"
    heartbeat: str = "UPDATE quota_lease_holders SET heartbeat_at = ? WHERE holder = ?"
    spend_lease: str = (
        "UPDATE quota_leases SET amount = amount - ?, updated_at = ? "
        "WHERE holder = ? AND account_kind = ? AND account_id = ?"
    )
    debit_user: str = "UPDATE users SET quota = quota - ? WHERE id = ?"
    debit_token: str = "UPDATE tokens SET remain_quota = remain_quota - ? WHERE id = ?"  # noqa: S105


@cache
def _settlement_sql(paramstyle: str) -> _SettlementSql:
    if paramstyle == "qmark":
        return _SettlementSql()
    marks: dict[str, Callable[[int], str]] = {
        "numeric_dollar": lambda i: f"${i}",
        "numeric": lambda i: f":{i}",
        "format": lambda i: "%s",
        "pyformat": lambda i: "%s",
    }
    mark = marks[paramstyle]

    def translate(statement: str) -> str:
        parts = statement.split("?")
        return parts[0] + "".join(mark(i) + part for i, part in enumerate(parts[1:], 1))

    return _SettlementSql(
        **{f.name: translate(getattr(_SettlementSql, f.name)) for f in fields(_SettlementSql)}
    )


async def leased_amounts(session: AsyncSession, kind: int, account_ids: Sequence[int]) -> dict[int, int]:
    """Quota held in leases per account: add it to the balance column to show a balance exactly."""
    if not account_ids:
        return {}
    rows = await session.execute(
        select(QuotaLease.account_id, func.sum(QuotaLease.amount))
        .where(QuotaLease.account_kind == kind, QuotaLease.account_id.in_(account_ids))
        .group_by(QuotaLease.account_id)
    )
    return {int(account_id): int(total or 0) for account_id, total in rows.all()}
