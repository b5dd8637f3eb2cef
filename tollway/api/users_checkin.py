"""Daily check-in: a small reward once per UTC calendar day.

Both dialects are served: Veloera's ``/api/user/check_in_status`` + ``/api/user/check_in`` and
newer new-api's ``/api/user/checkin``. The claim is one conditional UPDATE on
``users.last_check_in_time`` that also credits the reward, so parallel calls credit exactly once on
every database. Each reward writes a system log (type 4) in the same transaction; the monthly
statistics are read back from those log rows.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, or_, select, update

from tollway import options as opt
from tollway.api.deps import CurrentUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.api.users_self import describe_quota
from tollway.db.models import Log, User
from tollway.db.models.log import LOG_SYSTEM
from tollway.errors import BusinessError
from tollway.options import REGISTRY, OptionError
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log

router = APIRouter()


def _positive(value: int) -> None:
    if value < 0:
        raise OptionError("must not be negative")


CHECK_IN_QUOTA = REGISTRY.declare("CheckInQuota", 1000, _positive)
CHECK_IN_MAX_QUOTA = REGISTRY.declare("CheckInMaxQuota", 0, _positive)

CHECK_IN_LOG_PREFIX = "Daily check-in reward"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def _today_start(now: datetime | None = None) -> datetime:
    """Midnight UTC today, naive (the column stores naive UTC)."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


def reward_bounds(runtime: Runtime) -> tuple[int, int]:
    """``CheckInQuota`` alone, or a uniform draw up to ``CheckInMaxQuota`` when that is larger."""
    low = runtime.options.get(CHECK_IN_QUOTA)
    high = runtime.options.get(CHECK_IN_MAX_QUOTA)
    return low, max(low, high)


async def check_in(runtime: Runtime, user_id: int, username: str) -> tuple[int, datetime]:
    """Claim today's reward for the user; returns (reward, when). Refused when already claimed."""
    if not runtime.options.get(opt.CHECK_IN_ENABLED):
        raise BusinessError("check-in is not enabled")
    low, high = reward_bounds(runtime)
    if low <= 0:
        raise BusinessError("check-in is misconfigured: CheckInQuota must be greater than 0")
    reward = random.randint(low, high)
    moment = datetime.now(UTC)
    now = moment.replace(tzinfo=None, microsecond=0)
    async with runtime.db.session() as session, session.begin():
        claimed = await session.execute(
            update(User)
            .where(
                User.id == user_id,
                User.deleted_at.is_(None),
                or_(User.last_check_in_time.is_(None), User.last_check_in_time < _today_start(moment)),
            )
            .values(quota=User.quota + reward, last_check_in_time=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            raise BusinessError("you have already checked in today")
        content = f"{CHECK_IN_LOG_PREFIX}: {describe_quota(runtime.options, reward)}"
        entry = log_entry(LOG_SYSTEM, user_id, username, content, quota=reward)
        await record_log(runtime.db, entry, session=session)
    runtime.relay.accounts.users_changed()
    return reward, now


def checked_in_today(last: datetime | None) -> bool:
    return last is not None and last >= _today_start()


def _month_range(month: str) -> tuple[int, int]:
    """Unix seconds [start, end) of a ``YYYY-MM`` month in UTC."""
    match = _MONTH.match(month)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
        raise BusinessError("month must look like YYYY-MM")
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, number, 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return int(start.timestamp()), int(end.timestamp())


async def _stats(runtime: Runtime, user_id: int, month: str, today: bool) -> dict[str, Any]:
    start, end = _month_range(month)
    mine = (
        Log.user_id == user_id,
        Log.type == LOG_SYSTEM,
        Log.content.like(f"{CHECK_IN_LOG_PREFIX}%"),
    )
    async with runtime.db.log_session() as session:
        total_count, total_quota = (
            await session.execute(select(func.count(), func.coalesce(func.sum(Log.quota), 0)).where(*mine))
        ).one()
        rows = (
            await session.execute(
                select(Log.created_at, Log.quota)
                .where(*mine, Log.created_at >= start, Log.created_at < end)
                .order_by(Log.created_at)
            )
        ).all()
    records = [
        {
            "checkin_date": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d"),
            "quota_awarded": int(quota),
        }
        for created, quota in rows
    ]
    return {
        "total_quota": int(total_quota),
        "total_checkins": int(total_count),
        "checkin_count": len(records),
        "checked_in_today": today,
        "records": records,
    }


# ----- Veloera ------------------------------------------------------------------------------------


@router.get("/user/check_in_status")
async def check_in_status(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    enabled = runtime.options.get(opt.CHECK_IN_ENABLED)
    return ok({"can_check_in": enabled and not checked_in_today(caller.user.last_check_in_time)})


@router.post("/user/check_in")
async def veloera_check_in(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    reward, _ = await check_in(runtime, caller.id, caller.user.username)
    return ok({"quota": reward}, "check-in successful")


# ----- newer new-api ------------------------------------------------------------------------------


@router.get("/user/checkin")
async def checkin_status(caller: CurrentUser, runtime: RuntimeDep, month: str = "") -> dict[str, Any]:
    month = month.strip() or datetime.now(UTC).strftime("%Y-%m")
    low, high = reward_bounds(runtime)
    stats = await _stats(runtime, caller.id, month, checked_in_today(caller.user.last_check_in_time))
    return ok(
        {
            "enabled": runtime.options.get(opt.CHECK_IN_ENABLED),
            "min_quota": low,
            "max_quota": high,
            "stats": stats,
        }
    )


@router.post("/user/checkin")
async def checkin(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    reward, when = await check_in(runtime, caller.id, caller.user.username)
    return ok({"quota_awarded": reward, "checkin_date": when.strftime("%Y-%m-%d")}, "check-in successful")
