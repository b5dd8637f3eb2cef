"""CSV export of the usage logs, streamed in constant memory.

Rows are read by keyset pagination over ``id`` (newest first, as the console lists them): each
batch of ``EXPORT_BATCH`` rows is one short query on a connection that is returned to the pool
before the batch is sent, so a slow download holds no connection and no transaction, and memory
stays at one batch whatever the number of rows. Rows written while an export runs get ids above
those already read and are left out, so an export never chases live traffic.

Free-text cells that a spreadsheet would read as a formula (starting with ``=``, ``+``, ``-``,
``@``, tab or carriage return) are prefixed with ``'`` (OWASP's CSV-injection advice). The file
starts with a UTF-8 byte order mark so that Excel shows non-ASCII names correctly.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, select

from tollway.db.engine import Database
from tollway.db.models import Log
from tollway.options import REGISTRY
from tollway.usage.queries import LogFilter, channel_names

LOG_EXPORT_ENABLED = REGISTRY.declare("LogExportEnabled", True)
"""Whether users may download their own logs as CSV (administrators always may)."""

EXPORT_BATCH = 2000
DEFAULT_MAX_ROWS = 1_000_000
BOM = "\ufeff"
_TWO_DIGITS = tuple(f"{number:02d}" for number in range(60))
_FORMULA_STARTS = frozenset("=+-@\t\r")
TYPE_NAMES = {
    0: "unknown",
    1: "topup",
    2: "consume",
    3: "manage",
    4: "system",
    5: "error",
    6: "refund",
    7: "login",
}
ADMIN_COLUMNS = (
    "id",
    "created_at",
    "type",
    "username",
    "token_name",
    "model_name",
    "quota",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "use_time",
    "is_stream",
    "channel_id",
    "channel_name",
    "group",
    "request_id",
    "ip",
    "content",
)
USER_COLUMNS = tuple(column for column in ADMIN_COLUMNS if column != "channel_name")
_SELECTED = (
    Log.id,
    Log.created_at,
    Log.type,
    Log.username,
    Log.token_name,
    Log.model_name,
    Log.quota,
    Log.prompt_tokens,
    Log.completion_tokens,
    Log.use_time,
    Log.is_stream,
    Log.channel_id,
    Log.group,
    Log.request_id,
    Log.ip,
    Log.content,
)

_CHANNEL = 11  # position of Log.channel_id in _SELECTED


def csv_safe(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would evaluate it as a formula."""
    return "'" + value if value[:1] in _FORMULA_STARTS else value


def iso_utc(timestamp: int) -> str:
    """``2024-05-01T12:00:00Z``; a timestamp no calendar can show is written as the number."""
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return str(timestamp)


class _Clock:
    """:func:`iso_utc` for rows that mostly share a day: the date part is formatted once per day
    (``strftime`` per row was a sixth of a large export's time)."""

    def __init__(self) -> None:
        self.day: int | None = None
        self.prefix = ""

    def iso(self, timestamp: int) -> str:
        day, second = divmod(timestamp, 86_400)
        if day != self.day:
            formatted = iso_utc(day * 86_400)
            if not formatted.endswith("T00:00:00Z"):
                return iso_utc(timestamp)
            self.day, self.prefix = day, formatted[:11]
        hour, rest = divmod(second, 3600)
        return f"{self.prefix}{_TWO_DIGITS[hour]}:{_TWO_DIGITS[rest // 60]}:{_TWO_DIGITS[rest % 60]}Z"


def _day(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y%m%d")
    except (ValueError, OverflowError, OSError):
        return str(timestamp)


def export_filename(flt: LogFilter, *, now: int) -> str:
    """``logs-<from>-<to>.csv`` with UTC days (``YYYYMMDD``): ``earliest`` without a start, today
    without an end."""
    start = _day(flt.start) if flt.start else "earliest"
    end = _day(flt.end) if flt.end else _day(now)
    return f"logs-{start}-{end}.csv"


class _RowWriter:
    """Formats batches of selected rows into CSV text."""

    def __init__(self, *, admin: bool, quota_per_unit: float) -> None:
        self.admin = admin
        self.quota_per_unit = quota_per_unit
        self.parts: list[str] = []
        self.writer = csv.writer(self)
        self.clock = _Clock()
        # The owner's view leaves out channel_name (the only column ADMIN_COLUMNS has in addition).
        self.pick = None if admin else itemgetter(*(ADMIN_COLUMNS.index(name) for name in USER_COLUMNS))

    def header(self) -> bytes:
        self.writer.writerow(ADMIN_COLUMNS if self.admin else USER_COLUMNS)
        return (BOM + self.take()).encode("utf-8")

    def write(self, line: str) -> None:
        """The csv writer's file: lines are kept until :meth:`take` joins them (cheaper than a
        growing ``StringIO``)."""
        self.parts.append(line)

    def take(self) -> str:
        chunk = "".join(self.parts)
        self.parts.clear()
        return chunk

    def cost(self, quota: int) -> str:
        return f"{quota / self.quota_per_unit:.6f}" if self.quota_per_unit > 0 else ""

    def rows(self, rows: Sequence[Any], names: dict[int, str]) -> bytes:
        safe, iso, cost, writerow = csv_safe, self.clock.iso, self.cost, self.writer.writerow
        for (id_, created, kind, user, token, model, quota, prompt, completion, use_time, stream,
             channel, group, request_id, ip, content) in rows:  # fmt: skip
            cells = (
                id_, iso(created), TYPE_NAMES.get(kind) or str(kind), safe(user), safe(token),
                safe(model), quota, cost(quota), prompt, completion, use_time,
                "true" if stream else "false", channel, safe(names.get(channel, "")), safe(group),
                safe(request_id), safe(ip), safe(content),
            )  # fmt: skip
            writerow(cells if self.pick is None else self.pick(cells))
        return self.take().encode("utf-8")


async def _batch(
    db: Database, conditions: list[ColumnElement[bool]], before: int | None, limit: int
) -> Sequence[Any]:
    query = select(*_SELECTED).where(*conditions).order_by(Log.id.desc()).limit(limit)
    if before is not None:
        query = query.where(Log.id < before)
    async with db.log_engine.connect() as conn:  # Core rows: no ORM bookkeeping per row
        return (await conn.execute(query)).all()


async def _learn_names(db: Database, names: dict[int, str], rows: Sequence[Any]) -> None:
    """Add the names of channels not seen yet (read from the main database: logs may live apart)."""
    unknown = {int(row[_CHANNEL]) for row in rows if row[_CHANNEL] and row[_CHANNEL] not in names}
    if unknown:
        found = await channel_names(db, unknown)
        names.update({channel_id: found.get(channel_id, "") for channel_id in unknown})


async def export_csv(
    db: Database,
    flt: LogFilter,
    *,
    admin: bool,
    quota_per_unit: float,
    max_rows: int = DEFAULT_MAX_ROWS,
    batch_size: int = EXPORT_BATCH,
) -> AsyncIterator[bytes]:
    """The CSV file of the logs matching ``flt``, newest first, at most ``max_rows`` rows, as
    UTF-8 chunks of one batch each. ``admin=False`` is the owner's view: no channel names."""
    out = _RowWriter(admin=admin, quota_per_unit=quota_per_unit)
    yield out.header()
    conditions = flt.conditions()
    names: dict[int, str] = {}
    before: int | None = None
    remaining = max_rows
    while remaining > 0:
        limit = min(batch_size, remaining)
        rows = await _batch(db, conditions, before, limit)
        if not rows:
            return
        if admin:
            await _learn_names(db, names, rows)
        yield out.rows(rows, names)
        before = int(rows[-1][0])
        remaining -= len(rows)
        if len(rows) < limit:
            return
