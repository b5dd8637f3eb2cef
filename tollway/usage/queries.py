"""Reads (and the retention delete) of the usage logs and the hourly ``quota_data`` rollup.

No HTTP here: the routes in ``tollway.api.logs`` / ``tollway.api.data`` parse and validate their
parameters, then call these functions.

The ``logs`` table may live in its own database (``LOG_SQL_DSN``), so every log read goes through
``db.log_session()`` and never joins a main-database table: channel names are fetched from the
main database by id set and joined in Python (as new-api does). Every filter maps onto an indexed
column, and list totals are an exact ``COUNT(*)`` with the same filters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.engine import Database
from tollway.db.models import Channel, Log, QuotaData
from tollway.db.models.log import LOG_CONSUME

SEARCH_LIMIT = 100  # rows answered by the search routes and the unpaged token route
DELETE_BATCH = 1000  # rows removed per statement (and per transaction) by DELETE /api/log/
RECENT_SECONDS = 60  # the window of rpm / tpm
LIKE_ESCAPE = "!"


def like_pattern(value: str) -> str:
    """``value`` for a LIKE where ``%`` stays the caller's wildcard and ``_`` is a plain character
    (model names contain underscores; new-api's console only ever sends ``%``)."""
    return value.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("_", LIKE_ESCAPE + "_")


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The filters of the log routes. Empty strings, ``0`` and ``None`` mean "no filter"."""

    type: int = 0
    start: int | None = None  # created_at >= start (unix s)
    end: int | None = None  # created_at <= end
    username: str = ""
    token_name: str = ""
    model_name: str = ""  # exact, or a LIKE pattern when it contains "%"
    channel_id: int = 0
    group: str = ""
    request_id: str = ""
    user_id: int | None = None
    token_id: int | None = None

    def conditions(self, *, with_type: bool = True, with_range: bool = True) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.user_id is not None:
            found.append(Log.user_id == self.user_id)
        if self.token_id is not None:
            found.append(Log.token_id == self.token_id)
        if with_type and self.type:
            found.append(Log.type == self.type)
        if with_range:
            found.extend(self.range_conditions())
        for column, value in (
            (Log.username, self.username),
            (Log.token_name, self.token_name),
            (Log.group, self.group),
            (Log.request_id, self.request_id),
        ):
            if value:
                found.append(column == value)
        if self.model_name:
            found.append(
                Log.model_name.like(like_pattern(self.model_name), escape=LIKE_ESCAPE)
                if "%" in self.model_name
                else Log.model_name == self.model_name
            )
        if self.channel_id:
            found.append(Log.channel_id == self.channel_id)
        return found

    def range_conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.start:
            found.append(Log.created_at >= self.start)
        if self.end:
            found.append(Log.created_at <= self.end)
        return found


# ----- lists ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogPage:
    rows: Sequence[Log]
    total: int  # every row matching the filters, whatever the page or ``before_id``


async def list_logs(
    db: Database, flt: LogFilter, *, offset: int, limit: int, before_id: int | None = None
) -> LogPage:
    """One page, newest first. With ``before_id`` the page is the ``limit`` rows with a smaller id
    (keyset paging: as fast on page 10 000 as on page 1); otherwise ``offset`` rows are skipped."""
    conditions = flt.conditions()
    async with db.log_session() as session:
        total = int(await session.scalar(select(func.count()).select_from(Log).where(*conditions)) or 0)
        query = select(Log).where(*conditions).order_by(Log.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(Log.id < before_id)
        elif offset >= total:
            return LogPage(rows=[], total=total)
        else:
            query = query.offset(offset)
        rows = (await session.scalars(query)).all()
    return LogPage(rows=rows, total=total)


async def newest_logs(db: Database, flt: LogFilter, limit: int) -> Sequence[Log]:
    """The ``limit`` newest rows matching ``flt``, without counting them."""
    return await _newest(db, flt.conditions(), limit)


async def search_logs(db: Database, keyword: str) -> Sequence[Log]:
    """new-api's admin search: ``type = keyword OR content LIKE 'keyword%'``, newest 100."""
    condition: ColumnElement[bool] = Log.content.like(like_pattern(keyword) + "%", escape=LIKE_ESCAPE)
    as_type = _small_int(keyword)
    if as_type is not None:
        condition = or_(Log.type == as_type, condition)
    return await _newest(db, [condition], SEARCH_LIMIT)


async def search_own_logs(db: Database, user_id: int, log_type: int) -> Sequence[Log]:
    """new-api's self search: the caller's logs of type ``keyword``, newest 100."""
    return await _newest(db, [Log.user_id == user_id, Log.type == log_type], SEARCH_LIMIT)


async def _newest(db: Database, conditions: list[ColumnElement[bool]], limit: int) -> Sequence[Log]:
    async with db.log_session() as session:
        query = select(Log).where(*conditions).order_by(Log.id.desc()).limit(limit)
        return (await session.scalars(query)).all()


def _small_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if -(2**31) <= value < 2**31 else None


# ----- formatting -------------------------------------------------------------------------------


async def channel_names(db: Database, ids: Iterable[int]) -> dict[int, str]:
    """Names of the given channels, read from the main database (logs may live elsewhere)."""
    wanted = {channel_id for channel_id in ids if channel_id}
    if not wanted:
        return {}
    async with db.session() as session:
        rows = await session.execute(select(Channel.id, Channel.name).where(Channel.id.in_(wanted)))
        return {int(row[0]): str(row[1]) for row in rows}


def _log_json(row: Log, channel_name: str, other: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "created_at": row.created_at,
        "type": row.type,
        "content": row.content,
        "username": row.username,
        "token_name": row.token_name,
        "model_name": row.model_name,
        "quota": row.quota,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "use_time": row.use_time,
        "is_stream": bool(row.is_stream),
        "channel": row.channel_id,
        "channel_name": channel_name,
        "token_id": row.token_id,
        "group": row.group,
        "other": other,
        "ip": row.ip,
        "request_id": row.request_id,
    }


async def admin_logs(db: Database, rows: Sequence[Log]) -> list[dict[str, Any]]:
    """Logs as administrators see them: everything, with channel names."""
    names = await channel_names(db, (row.channel_id for row in rows))
    return [_log_json(row, names.get(row.channel_id, ""), row.other) for row in rows]


def user_logs(rows: Sequence[Log]) -> list[dict[str, Any]]:
    """Logs as their owner sees them: no channel name, no ``other.admin_info`` (the retry chain
    names channels). Ids stay real (new-api's ``id % 1024`` made them collide)."""
    return [_log_json(row, "", strip_admin_info(row.other)) for row in rows]


def strip_admin_info(other: str) -> str:
    """``other`` without its ``admin_info`` key; text that is not a JSON object is left alone."""
    if "admin_info" not in other:
        return other
    try:
        parsed = json.loads(other)
    except ValueError:
        return other
    if not isinstance(parsed, dict):
        return other
    parsed.pop("admin_info", None)
    return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))


# ----- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogStat:
    quota: int  # consume quota over [start, end]
    total_requests: int  # consume logs over [start, end]
    rpm: int  # consume logs in the last 60 s
    tpm: int  # prompt + completion tokens of those
    today_requests: int  # consume logs since 00:00 UTC
    today_quota: int

    def as_json(self) -> dict[str, int]:
        return {
            "quota": self.quota,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "today_requests": self.today_requests,
            "today_quota": self.today_quota,
            "total_requests": self.total_requests,
            "total_quota": self.quota,
        }


async def log_stat(db: Database, flt: LogFilter, *, now: int) -> LogStat:
    """Consume statistics under ``flt`` (its type is ignored: always consume). Only the range sums
    honour start/end; the last-minute and today figures apply the other filters to their window."""
    base = [Log.type == LOG_CONSUME, *flt.conditions(with_type=False, with_range=False)]
    tokens = Log.prompt_tokens + Log.completion_tokens
    async with db.log_session() as session:
        total_requests, quota = await _count_and_sum(session, base + flt.range_conditions(), Log.quota)
        rpm, tpm = await _count_and_sum(session, [*base, Log.created_at >= now - RECENT_SECONDS], tokens)
        today_requests, today_quota = await _count_and_sum(
            session, [*base, Log.created_at >= now - now % 86400], Log.quota
        )
    return LogStat(quota, total_requests, rpm, tpm, today_requests, today_quota)


async def _count_and_sum(
    session: AsyncSession, conditions: list[ColumnElement[bool]], summed: SQLColumnExpression[int]
) -> tuple[int, int]:
    row = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(summed), 0)).select_from(Log).where(*conditions)
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


# ----- retention --------------------------------------------------------------------------------


# ----- quota_data -------------------------------------------------------------------------------


def _quota_json(row: QuotaData) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "username": row.username,
        "model_name": row.model_name,
        "created_at": row.created_at,
        "token_used": row.token_used,
        "count": row.count,
        "quota": row.quota,
    }


async def quota_rows(
    db: Database, *, start: int, end: int | None, username: str | None = None, user_id: int | None = None
) -> list[dict[str, Any]]:
    """Raw hourly rows in ``[start, end]`` of one username or one user id, oldest first."""
    conditions: list[ColumnElement[bool]] = [QuotaData.created_at >= start]
    if end is not None:
        conditions.append(QuotaData.created_at <= end)
    if username is not None:
        conditions.append(QuotaData.username == username)
    if user_id is not None:
        conditions.append(QuotaData.user_id == user_id)
    async with db.session() as session:
        query = select(QuotaData).where(*conditions).order_by(QuotaData.created_at, QuotaData.id)
        return [_quota_json(row) for row in (await session.scalars(query)).all()]


async def quota_by_model_hour(db: Database, *, start: int, end: int | None) -> list[dict[str, Any]]:
    """Every user's hourly rows in ``[start, end]`` summed per (model, hour), as new-api answers
    ``/api/data/`` without a username (``id``/``user_id`` 0, ``username`` empty)."""
    conditions: list[ColumnElement[bool]] = [QuotaData.created_at >= start]
    if end is not None:
        conditions.append(QuotaData.created_at <= end)
    query = (
        select(
            QuotaData.model_name,
            QuotaData.created_at,
            func.sum(QuotaData.count),
            func.sum(QuotaData.quota),
            func.sum(QuotaData.token_used),
        )
        .where(*conditions)
        .group_by(QuotaData.model_name, QuotaData.created_at)
        .order_by(QuotaData.created_at, QuotaData.model_name)
    )
    async with db.session() as session:
        rows = (await session.execute(query)).all()
    return [
        {
            "id": 0,
            "user_id": 0,
            "username": "",
            "model_name": model,
            "created_at": int(created_at),
            "token_used": int(token_used or 0),
            "count": int(count or 0),
            "quota": int(quota or 0),
        }
        for model, created_at, count, quota, token_used in rows
    ]
