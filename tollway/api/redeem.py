"""Redeeming a code (``POST /api/user/topup``): credit the user exactly once, under concurrency.

One short transaction per attempt: lock the code's row, check it, mark it used (a conditional
UPDATE, so even without the lock a code cannot be used twice), credit the user with
``quota = quota + amount``, record the use in ``redemption_logs`` (whose unique index allows a gift
code once per user) and write the top-up log row in the same transaction. new-api instead
serialised every redemption of the process behind one mutex, which does not hold across workers
or nodes; the row lock does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import case, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.api.token_fields import take_write_lock
from tollway.db.models import Redemption, RedemptionLog, User
from tollway.db.models.log import LOG_TOPUP
from tollway.db.models.redemption import REDEMPTION_DISABLED, REDEMPTION_ENABLED, REDEMPTION_USED
from tollway.errors import BusinessError
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log
from tollway.usage.records import LogEntry

MAX_CODE_LENGTH = 64
ATTEMPTS = 3
_BUSY_MARKERS = ("database is locked", "deadlock", "lock wait timeout", "could not serialize")


@dataclass(frozen=True)
class Redeemed:
    code_id: int
    quota: int
    is_gift: bool


def _busy(exc: DBAPIError) -> bool:
    """Lock contention the database gave up on (SQLite's busy timeout, a deadlock victim): the
    transaction was rolled back whole, so trying again is safe."""
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(marker in text for marker in _BUSY_MARKERS)


def _check_usable(code: Redemption | None, now: int) -> Redemption:
    if code is None:
        raise BusinessError("invalid redemption code")
    if code.status == REDEMPTION_DISABLED:
        raise BusinessError("this redemption code is disabled")
    if code.status == REDEMPTION_USED:
        raise BusinessError("this redemption code has already been used")
    if code.status != REDEMPTION_ENABLED:
        raise BusinessError("this redemption code cannot be used")
    if code.valid_from and now < code.valid_from:
        raise BusinessError("this redemption code is not valid yet")
    if code.valid_until and now > code.valid_until:
        raise BusinessError("this redemption code has expired")
    return code


async def _use_single(session: AsyncSession, code: Redemption, user_id: int, now: int) -> None:
    used = await session.execute(
        update(Redemption)
        .where(Redemption.id == code.id, Redemption.status == REDEMPTION_ENABLED)
        .values(status=REDEMPTION_USED, redeemed_time=now, used_user_id=user_id)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise BusinessError("this redemption code has already been used")


async def _use_gift(session: AsyncSession, code: Redemption, user_id: int, now: int) -> None:
    """A gift code: once per user, ``max_uses`` uses in all (-1: unlimited); it becomes used
    (status 3) with its last use."""
    earlier = await session.scalar(
        select(RedemptionLog.id).where(
            RedemptionLog.redemption_id == code.id, RedemptionLog.user_id == user_id
        )
    )
    if earlier is not None:
        raise BusinessError("you have already redeemed this gift code")
    unlimited = Redemption.max_uses == -1
    last_use = ~unlimited & (Redemption.used_count + 1 >= Redemption.max_uses)
    used = await session.execute(
        update(Redemption)
        .where(
            Redemption.id == code.id,
            Redemption.status == REDEMPTION_ENABLED,
            or_(unlimited, Redemption.used_count < Redemption.max_uses),
        )
        # status first: MySQL evaluates SET left to right with the new values of earlier columns.
        .ordered_values(
            (Redemption.status, case((last_use, REDEMPTION_USED), else_=Redemption.status)),
            (Redemption.used_count, Redemption.used_count + 1),
            (Redemption.redeemed_time, now),
        )
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise BusinessError("this gift code has reached its maximum number of uses")


async def _credit(session: AsyncSession, user: User, code: Redemption, now: int) -> None:
    credited = await session.execute(
        update(User)
        .where(User.id == user.id, User.deleted_at.is_(None))
        .values(quota=User.quota + code.quota)
        .execution_options(synchronize_session=False)
    )
    if credited.rowcount != 1:  # type: ignore[attr-defined]
        raise BusinessError("your account no longer exists")
    await session.execute(insert(RedemptionLog).values(redemption_id=code.id, user_id=user.id, used_time=now))


def _topup_entry(user: User, code: Redeemed) -> LogEntry:
    content = f"redeemed code #{code.code_id} for {code.quota} quota"
    return log_entry(LOG_TOPUP, user.id, user.username, content, quota=code.quota)


async def _redeem_once(runtime: Runtime, user: User, key: str) -> Redeemed:
    """One attempt. The top-up log row commits with the credit; when logs live in another
    database (``LOG_SQL_DSN``) it is written right after the commit instead, never before it."""
    now = int(time.time())
    shared_logs = not runtime.db.separate_logs
    async with runtime.db.session() as session, session.begin():
        await take_write_lock(session, runtime.db.dialect, Redemption, Redemption.key == key)
        code = _check_usable(
            await session.scalar(
                select(Redemption)
                .where(Redemption.key == key, Redemption.deleted_at.is_(None))
                .with_for_update()
            ),
            now,
        )
        if code.is_gift:
            await _use_gift(session, code, user.id, now)
        else:
            await _use_single(session, code, user.id, now)
        # The user's row is locked after the code's, in every redemption: no lock-order deadlock.
        await _credit(session, user, code, now)
        redeemed = Redeemed(code_id=code.id, quota=int(code.quota), is_gift=bool(code.is_gift))
        if shared_logs:
            await record_log(runtime.db, _topup_entry(user, redeemed), session=session)
    if not shared_logs:
        await record_log(runtime.db, _topup_entry(user, redeemed))
    return redeemed


async def redeem(runtime: Runtime, user: User, key: str) -> Redeemed:
    """Redeem ``key`` for ``user`` or raise :class:`BusinessError` with the reason."""
    key = key.strip()
    if not key:
        raise BusinessError("please enter a redemption code")
    if len(key) > MAX_CODE_LENGTH:
        raise BusinessError("invalid redemption code")
    for _attempt in range(ATTEMPTS):
        try:
            redeemed = await _redeem_once(runtime, user, key)
        except IntegrityError:
            # Only the once-per-user index can refuse: a parallel redemption by the same user won,
            # or an administrator re-enabled a code this user had redeemed before.
            raise BusinessError("you have already redeemed this code") from None
        except DBAPIError as exc:
            if not _busy(exc):
                raise
            continue
        runtime.relay.accounts.users_changed()
        return redeemed
    raise BusinessError("the database is busy: please retry")
