"""Reads (and the retention delete) of the usage logs and the hourly ``quota_data`` rollup.

No HTTP here: the routes in ``tollway.api.logs`` / ``tollway.api.data`` parse and validate their
parameters, then call these functions.

The ``logs`` table may live in its own database (``LOG_SQL_DSN``), so every log read goes through
``db.log_session()`` and never joins a main-database table: channel names are fetched from the
main database by id set and joined in Python (as new-api does). Every filter maps onto an indexed
column.

List totals and statistics are exact without scanning millions of rows: the whole UTC hours of
the range are summed from the hourly summaries that triggers keep in step with ``logs``
(``log_type_counts`` when only the type is filtered, ``log_dim_counts`` when one other
column is, ``log_counts`` for several; see ``tollway.usage.log_counts``), and only the partial hours at the range's edges are counted in
``logs`` itself, through its ``(x, created_at)`` indexes. Both parts are read by one statement, so
they see the same snapshot. A ``request_id`` filter (which the summaries do not carry, and which
is selective anyway) is counted in ``logs`` directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, func, or_, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.engine import Database
from tollway.db.models import Channel, Log, QuotaData
from tollway.db.models.log import LOG_CONSUME, LogCount, LogDimCount, LogTypeCount
from tollway.usage.log_counts import BUCKET_SECONDS, DIM_CODES, bucket_of

SEARCH_LIMIT = 100  # rows answered by the search routes and the unpaged token route
DELETE_BATCH = 1000  # rows removed per statement (and per transaction) by DELETE /api/log/
RECENT_SECONDS = 60  # the window of rpm / tpm
LIKE_ESCAPE = "!"


def like_pattern(value: str) -> str:
    """``value`` for a LIKE where ``%`` stays the caller's wildcard and ``_`` is a plain character
    (model names contain underscores; new-api's console only ever sends ``%``)."""
    return value.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("_", LIKE_ESCAPE + "_")


FilteredTable = type[Log] | type[LogCount]  # (``LogFilter.type`` shadows ``type`` in the class)


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
        found = self.dimension_conditions(Log)
        if with_type and self.type:
            found.append(Log.type == self.type)
        if with_range:
            found.extend(self.range_conditions())
        if self.request_id:
            found.append(Log.request_id == self.request_id)
        return found

    def dimension_conditions(self, table: FilteredTable) -> list[ColumnElement[bool]]:
        """The filters on the columns ``logs`` and ``log_counts`` share (all but type, range and
        request id), on ``table``."""
        found: list[ColumnElement[bool]] = []
        if self.user_id is not None:
            found.append(table.user_id == self.user_id)
        if self.token_id is not None:
            found.append(table.token_id == self.token_id)
        for column, value in (
            (table.username, self.username),
            (table.token_name, self.token_name),
            (table.group, self.group),
        ):
            if value:
                found.append(column == value)
        if self.model_name:
            found.append(
                table.model_name.like(like_pattern(self.model_name), escape=LIKE_ESCAPE)
                if "%" in self.model_name
                else table.model_name == self.model_name
            )
        if self.channel_id:
            found.append(table.channel_id == self.channel_id)
        return found

    def range_conditions(self, created_at: ColumnElement[int] | None = None) -> list[ColumnElement[bool]]:
        column = Log.created_at.expression if created_at is None else created_at
        found: list[ColumnElement[bool]] = []
        if self.start:
            found.append(column >= self.start)
        if self.end:
            found.append(column <= self.end)
        return found


# ----- exact totals -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    quota: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def whole_hours(start: int | None, end: int | None) -> tuple[int | None, int | None] | None:
    """``(lo, hi)``: the whole UTC hours ``[lo, hi)`` inside ``[start, end]`` (``None`` bounds are
    open, as a falsy ``start``/``end`` is in :class:`LogFilter`); ``None`` when there are none."""
    lo = start + (-start) % BUCKET_SECONDS if start else None
    hi = bucket_of(end + 1) if end else None
    if lo is not None and hi is not None and lo >= hi:
        return None
    return lo, hi


def _raw_part(conditions: list[ColumnElement[bool]], sums: bool) -> Select[Any]:
    columns: list[ColumnElement[Any]] = [func.count()]
    if sums:
        columns += [
            func.coalesce(func.sum(column), 0)
            for column in (Log.quota, Log.prompt_tokens, Log.completion_tokens)
        ]
    return select(*columns).select_from(Log).where(*conditions)


def _single_dimension(flt: LogFilter) -> list[ColumnElement[bool]] | None:
    """``log_dim_counts`` conditions when ``flt`` filters on exactly one of the shared columns."""
    values = [
        (column, value)
        for column, value in (
            ("user_id", None if flt.user_id is None else str(flt.user_id)),
            ("token_id", None if flt.token_id is None else str(flt.token_id)),
            ("username", flt.username or None),
            ("token_name", flt.token_name or None),
            ("group_name", flt.group or None),
            ("model_name", flt.model_name or None),
            ("channel_id", str(flt.channel_id) if flt.channel_id else None),
        )
        if value is not None
    ]
    if len(values) != 1:
        return None
    column, value = values[0]
    matches = (
        LogDimCount.value.like(like_pattern(value), escape=LIKE_ESCAPE)
        if column == "model_name" and "%" in value
        else LogDimCount.value == value
    )
    return [LogDimCount.dim == DIM_CODES[column], matches]


def _summary_part(flt: LogFilter, lo: int | None, hi: int | None, sums: bool) -> Select[Any]:
    """The sums over the whole hours ``[lo, hi)`` from the smallest summary that can answer:
    per (hour, type) without filters, per (filter value, hour, type) with one, else the full key."""
    single = _single_dimension(flt)
    table: type[LogCount] | type[LogTypeCount] | type[LogDimCount]
    if single is not None:
        table, conditions = LogDimCount, single
    else:
        conditions = flt.dimension_conditions(LogCount)
        table = LogCount if conditions else LogTypeCount
    if flt.type:
        conditions.append(table.type == flt.type)
    if lo is not None:
        conditions.append(table.bucket >= lo)
    if hi is not None:
        conditions.append(table.bucket < hi)
    summed = [table.count] + ([table.quota, table.prompt_tokens, table.completion_tokens] if sums else [])
    columns: list[ColumnElement[Any]] = [func.coalesce(func.sum(column), 0) for column in summed]
    return select(*columns).where(*conditions)


def totals_statement(flt: LogFilter, *, sums: bool = False) -> Select[Any] | Any:
    """One statement answering the rows matching ``flt`` (count, and with ``sums`` the sums of
    quota and tokens) as one row per part: the summary's whole hours, then the raw edge hours."""
    split = None if flt.request_id else whole_hours(flt.start, flt.end)
    if split is None:
        return _raw_part(flt.conditions(), sums)
    lo, hi = split
    parts: list[Select[Any]] = [_summary_part(flt, lo, hi, sums)]
    outside = flt.conditions(with_range=False)
    if flt.start and lo is not None and lo > flt.start:
        parts.append(_raw_part([*outside, Log.created_at >= flt.start, Log.created_at < lo], sums))
    if flt.end and hi is not None and hi <= flt.end:
        parts.append(_raw_part([*outside, Log.created_at >= hi, Log.created_at <= flt.end], sums))
    return parts[0] if len(parts) == 1 else union_all(*parts)


async def custom_plans(session: AsyncSession) -> None:
    """Have PostgreSQL plan this transaction's statements for their actual values. After five runs
    of a prepared statement it may switch to a generic plan, blind to which user or hour is asked
    for: measured at 10M logs, 150-200 ms instead of 15 ms for a busy user's totals."""
    conn = await session.connection()
    if conn.dialect.name == "postgresql" and (conn.dialect.server_version_info or (0,)) >= (12,):
        await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


async def count_totals(session: AsyncSession, flt: LogFilter, *, sums: bool = False) -> Totals:
    """The exact number of logs matching ``flt`` (and their quota and token sums with ``sums``)."""
    rows = (await session.execute(totals_statement(flt, sums=sums))).all()
    added = [sum(int(row[i] or 0) for row in rows) for i in range(len(rows[0]))]
    return Totals(*added)


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
    async with db.log_session() as session:
        await custom_plans(session)
        total = (await count_totals(session, flt)).count
        conditions = flt.conditions()
        if before_id is None and await _walk_ids(session, flt, offset + limit, total):
            conditions = [*flt.conditions(with_range=False), *flt.range_conditions(Log.created_at + 0)]
        query = select(Log).where(*conditions).order_by(Log.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(Log.id < before_id)
        elif offset >= total:
            return LogPage(rows=[], total=total)
        else:
            query = query.offset(offset)
        rows = (await session.scalars(query)).all()
    return LogPage(rows=rows, total=total)


async def _walk_ids(session: AsyncSession, flt: LogFilter, wanted: int, total: int) -> bool:
    """Whether SQLite should find a page of a time range by walking ids down (through the primary
    key, or a filter column's index, which SQLite orders by id) and checking each row's time,
    rather than read every row of the range through a ``(x, created_at)`` index and sort them all
    by id, as its planner prefers. Walking costs about the rows newer than the range plus the rows
    wanted (ids grow with time); sorting costs the whole range: the exact counts decide. (A
    ``created_at + 0`` condition is what keeps SQLite off the time indexes; PostgreSQL plans this
    well by itself, and there it would also defeat partition pruning.)"""
    if not (flt.start or flt.end) or flt.request_id:
        return False
    if (await session.connection()).dialect.name != "sqlite":
        return False
    newer = (await count_totals(session, replace(flt, start=flt.end + 1, end=None))).count if flt.end else 0
    return newer + wanted < total


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
    consume = replace(flt, type=LOG_CONSUME)
    tokens = Log.prompt_tokens + Log.completion_tokens
    recent = [*consume.conditions(with_range=False), Log.created_at >= now - RECENT_SECONDS]
    async with db.log_session() as session:
        await custom_plans(session)
        in_range = await count_totals(session, consume, sums=True)
        today = await count_totals(session, replace(consume, start=now - now % 86400, end=None), sums=True)
        rpm, tpm = await _count_and_sum(session, recent, tokens)
    return LogStat(in_range.quota, in_range.count, rpm, tpm, today.count, today.quota)


async def _count_and_sum(
    session: AsyncSession, conditions: list[ColumnElement[bool]], summed: SQLColumnExpression[int]
) -> tuple[int, int]:
    row = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(summed), 0)).select_from(Log).where(*conditions)
        )
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


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
