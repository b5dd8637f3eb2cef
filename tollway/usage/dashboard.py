"""The usage dashboard's aggregation (``/api/data/dashboard``; the contract is documented in
``tollway.api.data``): consume logs summed per (time bucket, key) in one ``GROUP BY``.

Buckets are computed in SQL as ``created_at - created_at % size`` (UTC hours and days); weeks are
shifted by three days first, because 1970-01-01 was a Thursday, so that they start on Monday
00:00 UTC. The bucket size is rendered as a literal, not a bound parameter: PostgreSQL would see
``$1`` in the select list and ``$2`` in ``GROUP BY`` as different expressions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, func, literal_column, select

from tollway.db.engine import Database
from tollway.db.models import Log
from tollway.db.models.log import LOG_CONSUME
from tollway.usage.queries import RECENT_SECONDS, channel_names

GRANULARITIES: dict[str, int] = {"hour": 3600, "day": 86400, "week": 7 * 86400}
GROUPINGS = ("model", "channel", "token", "user")
ADMIN_GROUPINGS = frozenset({"channel", "token", "user"})
MAX_RANGE_SECONDS = 90 * 86400
DEFAULT_RANGE_SECONDS = 7 * 86400
TOP_KEYS = 20
OTHER_KEY = "other"
_WEEK_SHIFT = 3 * 86400  # Thursday 1970-01-01 + 3 days = Sunday; + shift makes Monday a multiple


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    start: int
    end: int
    granularity: str  # a key of GRANULARITIES
    group_by: str  # one of GROUPINGS
    user_id: int | None  # only this user's logs (the self dashboard), or everyone's


@dataclass(slots=True)
class _Cell:
    """The sums of one (bucket, key)."""

    name: str
    requests: int = 0
    quota: int = 0
    tokens: int = 0

    def add(self, other: _Cell) -> None:
        self.requests += other.requests
        self.quota += other.quota
        self.tokens += other.tokens


def bucket_start(granularity: str) -> ColumnElement[int]:
    size: ColumnElement[int] = literal_column(str(GRANULARITIES[granularity]), Integer())
    if granularity == "week":
        return Log.created_at - (Log.created_at + literal_column(str(_WEEK_SHIFT), Integer())) % size
    return Log.created_at - Log.created_at % size


def _key_columns(group_by: str) -> tuple[ColumnElement[Any], ColumnElement[Any] | None]:
    """The grouping column and, where logs carry one, a label column (the name at the time)."""
    if group_by == "channel":
        return Log.channel_id.expression, None
    if group_by == "token":
        return Log.token_id.expression, func.max(Log.token_name)
    if group_by == "user":
        return Log.user_id.expression, func.max(Log.username)
    return Log.model_name.expression, None


async def dashboard(db: Database, query: DashboardQuery, *, now: int) -> dict[str, Any]:
    scope: list[ColumnElement[bool]] = [Log.type == LOG_CONSUME]
    if query.user_id is not None:
        scope.append(Log.user_id == query.user_id)
    bucket = bucket_start(query.granularity)
    key, label = _key_columns(query.group_by)
    columns: list[ColumnElement[Any]] = [
        bucket,
        key,
        func.count(),
        func.coalesce(func.sum(Log.quota), 0),
        func.coalesce(func.sum(Log.prompt_tokens), 0),
        func.coalesce(func.sum(Log.completion_tokens), 0),
    ]
    if label is not None:
        columns.append(label)
    grouped = (
        select(*columns)
        .where(*scope, Log.created_at >= query.start, Log.created_at <= query.end)
        .group_by(bucket, key)
    )
    recent = select(
        func.count(), func.coalesce(func.sum(Log.prompt_tokens + Log.completion_tokens), 0)
    ).where(*scope, Log.created_at >= now - RECENT_SECONDS)
    async with db.log_session() as session:
        rows = (await session.execute(grouped)).all()
        rpm, tpm = (await session.execute(recent)).one()
    names = await channel_names(db, (int(row[1]) for row in rows)) if query.group_by == "channel" else {}
    totals = {"requests": 0, "quota": 0, "prompt_tokens": 0, "completion_tokens": 0}
    cells: dict[tuple[int, str], _Cell] = {}
    for row in rows:
        requests, quota, prompt, completion = (int(value or 0) for value in row[2:6])
        totals["requests"] += requests
        totals["quota"] += quota
        totals["prompt_tokens"] += prompt
        totals["completion_tokens"] += completion
        if label is not None:
            name = str(row[6] or "")
        elif query.group_by == "channel":
            name = names.get(int(row[1]), "")
        else:
            name = str(row[1])
        cells[(int(row[0]), str(row[1]))] = _Cell(name, requests, quota, prompt + completion)
    return {
        "totals": totals,
        "series": _series(_fold_minor_keys(cells)),
        "rpm": int(rpm or 0),
        "tpm": int(tpm or 0),
    }


def _fold_minor_keys(cells: dict[tuple[int, str], _Cell]) -> dict[tuple[int, str], _Cell]:
    """Keep the ``TOP_KEYS`` keys with the most quota over the range; sum the rest per bucket
    under ``OTHER_KEY`` so a chart never gets hundreds of series."""
    per_key: dict[str, tuple[int, int]] = {}
    for (_bucket, key), cell in cells.items():
        quota, requests = per_key.get(key, (0, 0))
        per_key[key] = (quota + cell.quota, requests + cell.requests)
    if len(per_key) <= TOP_KEYS:
        return cells
    ranked = sorted(per_key, key=lambda k: (-per_key[k][0], -per_key[k][1], k))
    kept = set(ranked[:TOP_KEYS])
    folded: dict[tuple[int, str], _Cell] = {}
    for (bucket, key), cell in cells.items():
        if key in kept:
            folded[(bucket, key)] = cell
        else:
            folded.setdefault((bucket, OTHER_KEY), _Cell(OTHER_KEY)).add(cell)
    return folded


def _series(cells: dict[tuple[int, str], _Cell]) -> list[dict[str, Any]]:
    ordered: Sequence[tuple[tuple[int, str], _Cell]] = sorted(
        cells.items(), key=lambda item: (item[0][0], -item[1].quota, item[0][1])
    )
    return [
        {
            "bucket_start": bucket,
            "key": key,
            "name": cell.name,
            "requests": cell.requests,
            "quota": cell.quota,
            "tokens": cell.tokens,
        }
        for (bucket, key), cell in ordered
    ]
