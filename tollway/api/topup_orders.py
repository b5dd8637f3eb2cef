"""Online top-up orders: pricing a top-up, opening an order and crediting a paid one exactly once.

Crediting is one short transaction: lock the order's row, check it, flip it from unpaid to
``success`` with a conditional UPDATE (whose row count decides: a duplicate or concurrent
notification, or a second manual completion, finds nothing to flip and changes nothing), add the
order's quota with ``quota = quota + :q`` and write the top-up log in the same transaction. The
lock and the condition hold across workers and nodes, unlike new-api's per-process order mutex.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import Enum

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tollway import options as opt
from tollway.api.token_fields import take_write_lock
from tollway.billing.epay import TOPUP_GROUP_RATIO
from tollway.db.models import TopUp, User
from tollway.db.models.log import LOG_TOPUP
from tollway.db.models.topup import TOPUP_FAILED, TOPUP_PENDING, TOPUP_SUCCESS
from tollway.errors import BusinessError
from tollway.options import Options
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log
from tollway.usage.records import LogEntry

log = logging.getLogger("tollway.topups")

CENT = Decimal("0.01")
MAX_ORDER_QUOTA = 2**53 - 1  # consoles hold quota in a JavaScript number
MAX_MONEY = Decimal("1e11")  # the money and amount columns hold 12 digits before the point
ATTEMPTS = 3
_TRADE_ALPHABET = string.ascii_letters + string.digits
_BUSY_MARKERS = ("database is locked", "deadlock", "lock wait timeout", "could not serialize")
# A paid order may have been marked failed by an earlier "not paid" notification or by nobody
# yet: both may still be credited when the gateway confirms the payment (or an admin does).
_UNPAID = (TOPUP_PENDING, TOPUP_FAILED)


@dataclass(frozen=True)
class Quote:
    """What a top-up of ``amount`` (in the user's display unit) costs and credits."""

    usd: Decimal  # the amount in currency units, as stored in the order's ``amount``
    money: Decimal  # what the payer pays, to the cent
    quota: int  # what the user's balance receives


class Outcome(Enum):
    CREDITED = "credited"
    ALREADY_DONE = "already done"
    UNKNOWN = "unknown order"
    MONEY_MISMATCH = "money mismatch"


def cents(value: Decimal | float) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def parse_money(raw: str) -> Decimal | None:
    """A gateway's ``money`` field as cents, or None when it is not a finite number."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        return None
    return cents(value) if value.is_finite() else None


def minimum_amount(options: Options) -> int:
    """``MinTopUp`` in the unit users enter: currency, or quota when currency is not displayed."""
    minimum = int(options.get(opt.MIN_TOP_UP))
    if options.get(opt.DISPLAY_IN_CURRENCY_ENABLED):
        return minimum
    return int(Decimal(minimum) * Decimal(str(options.get(opt.QUOTA_PER_UNIT))))


def group_ratio(options: Options, group: str) -> Decimal:
    """The user's group's ``TopupGroupRatio``; unknown groups and 0 pay the plain price (new-api)."""
    ratio = options.get(TOPUP_GROUP_RATIO).get(group, 1)
    return Decimal(str(ratio)) if ratio else Decimal(1)


def quote(options: Options, amount: int, group: str) -> Quote:
    """Price a top-up as new-api does: ``money = amount × Price × TopupGroupRatio[group]``, the
    amount converted from quota to currency first when the console shows quota."""
    if amount <= 0:
        raise BusinessError("the top-up amount must be a positive integer")
    minimum = minimum_amount(options)
    if amount < minimum:
        raise BusinessError(f"the minimum top-up is {minimum}")
    if amount > MAX_ORDER_QUOTA:
        raise BusinessError("the top-up amount is too large")
    per_unit = Decimal(str(options.get(opt.QUOTA_PER_UNIT)))
    if per_unit <= 0:
        raise BusinessError("online top-up is unavailable: QuotaPerUnit is not set")
    if options.get(opt.DISPLAY_IN_CURRENCY_ENABLED):
        usd, quota = Decimal(amount), int(Decimal(amount) * per_unit)
    else:
        usd, quota = Decimal(amount) / per_unit, amount
    money = cents(usd * Decimal(str(options.get(opt.PRICE))) * group_ratio(options, group))
    if quota > MAX_ORDER_QUOTA or money >= MAX_MONEY or cents(usd) >= MAX_MONEY:
        raise BusinessError("the top-up amount is too large")
    if money < CENT:
        raise BusinessError("the amount to pay is too low")
    return Quote(usd=usd, money=money, quota=quota)


def new_trade_no(user_id: int) -> str:
    """new-api's order number: ``USR<user id>NO<6 random letters or digits><unix time>``."""
    suffix = "".join(secrets.choice(_TRADE_ALPHABET) for _ in range(6))
    return f"USR{user_id}NO{suffix}{int(time.time())}"


async def open_order(runtime: Runtime, user_id: int, priced: Quote, payment_method: str) -> TopUp:
    """Insert a pending order under a fresh trade number."""
    for _attempt in range(ATTEMPTS):
        order = TopUp(
            user_id=user_id,
            amount=float(cents(priced.usd)),
            money=float(priced.money),
            quota=priced.quota,
            trade_no=new_trade_no(user_id),
            status=TOPUP_PENDING,
            payment_method=payment_method,
            created_time=int(time.time()),
            paid_time=0,
        )
        try:
            async with runtime.db.session() as session, session.begin():
                session.add(order)
        except IntegrityError:
            continue  # the same trade number drawn twice within one second
        return order
    raise BusinessError("could not create the order: please retry")


def _busy(exc: DBAPIError) -> bool:
    """Lock contention the database gave up on: the transaction was rolled back whole."""
    text = str(exc.orig if exc.orig is not None else exc).lower()
    return any(marker in text for marker in _BUSY_MARKERS)


def _topup_log(order: TopUp, username: str, completed_by: str | None) -> LogEntry:
    content = f"online top-up of ${cents(order.amount)} (order {order.trade_no})"
    if completed_by is not None:
        content += f", completed manually by {completed_by}"
    return log_entry(LOG_TOPUP, order.user_id, username, content, quota=int(order.quota))


async def _credit(session: AsyncSession, order: TopUp, now: int) -> str | None:
    """Flip the order to success and credit its user; None when it was already paid (no change)."""
    flipped = await session.execute(
        update(TopUp)
        .where(TopUp.trade_no == order.trade_no, TopUp.status.in_(_UNPAID))
        .values(status=TOPUP_SUCCESS, paid_time=now)
        .execution_options(synchronize_session=False)
    )
    if flipped.rowcount != 1:  # type: ignore[attr-defined]
        return None
    credited = await session.execute(
        update(User)
        .where(User.id == order.user_id)
        .values(quota=User.quota + order.quota)
        .execution_options(synchronize_session=False)
    )
    if credited.rowcount != 1:  # type: ignore[attr-defined]
        raise BusinessError("the order's user no longer exists")
    return str(await session.scalar(select(User.username).where(User.id == order.user_id)) or "")


async def _complete_once(
    runtime: Runtime, trade_no: str, paid_money: Decimal | None, completed_by: str | None
) -> Outcome:
    now = int(time.time())
    shared_logs = not runtime.db.separate_logs
    async with runtime.db.session() as session, session.begin():
        await take_write_lock(session, runtime.db.dialect, TopUp, TopUp.trade_no == trade_no)
        order = await session.scalar(select(TopUp).where(TopUp.trade_no == trade_no).with_for_update())
        if order is None:
            return Outcome.UNKNOWN
        if paid_money is not None and cents(order.money) != paid_money:
            return Outcome.MONEY_MISMATCH
        username = await _credit(session, order, now)
        if username is None:
            return Outcome.ALREADY_DONE
        entry = _topup_log(order, username, completed_by)
        if shared_logs:
            await record_log(runtime.db, entry, session=session)
    if not shared_logs:
        await record_log(runtime.db, entry)
    runtime.relay.accounts.users_changed()
    log.info("top-up order %s credited %d quota to user %d", trade_no, order.quota, order.user_id)
    return Outcome.CREDITED


async def complete_order(
    runtime: Runtime, trade_no: str, *, paid_money: Decimal | None = None, completed_by: str | None = None
) -> Outcome:
    """Credit a paid order once. ``paid_money`` (from the gateway) must equal the order's money;
    ``completed_by`` names the administrator who completed it by hand."""
    for _attempt in range(ATTEMPTS):
        try:
            return await _complete_once(runtime, trade_no, paid_money, completed_by)
        except DBAPIError as exc:
            if not _busy(exc):
                raise
    raise BusinessError("the database is busy: please retry")


async def fail_order(runtime: Runtime, trade_no: str) -> bool:
    """Mark an order failed if it is still pending (a paid one stays paid); False when unknown."""
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(TopUp)
            .where(TopUp.trade_no == trade_no, TopUp.status == TOPUP_PENDING)
            .values(status=TOPUP_FAILED)
            .execution_options(synchronize_session=False)
        )
        known = await session.scalar(select(TopUp.id).where(TopUp.trade_no == trade_no))
    return known is not None
