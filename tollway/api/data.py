"""Usage data routes: new-api's hourly ``quota_data`` reads and Tollway's usage dashboard.

``GET /api/data/`` (admin) — ``start_timestamp``, ``end_timestamp`` (inclusive; default: all
history up to now), ``username``: that username's hourly rows; without ``username`` every user's
rows summed per (model, hour) with ``id``/``user_id`` 0 and ``username`` "". Plain array.

``GET /api/data/self`` — the caller's hourly rows (by user id, so renames keep their history).
``end_timestamp`` defaults to now and ``start_timestamp`` to 30 days before it; a range over
30 days (2 592 000 s) answers ``success:false``. Plain array.

``GET /api/data/dashboard`` (admin) and ``GET /api/data/self/dashboard`` (any user): usage
charts computed from the consume logs (type 2) with one ``GROUP BY``; always exact, whether or
not the hourly rollup has been flushed. Query parameters:

* ``start_timestamp``, ``end_timestamp`` — unix seconds, inclusive; default the 7 days up to now;
  at most 90 days apart.
* ``granularity`` — ``hour`` (default), ``day`` or ``week``: UTC buckets, weeks start Monday
  00:00 UTC.
* ``group_by`` — ``model`` (default), ``channel``, ``token`` or ``user``; all but ``model`` are for
  administrators only (a common user's ``/self/dashboard`` may group by model only).
* ``scope`` — on ``/dashboard`` only: ``all`` (default, every user) or ``self`` (the caller's
  own logs, as ``/self/dashboard`` answers).

Answer ``data``::

    {"totals": {"requests", "quota", "prompt_tokens", "completion_tokens"},   # over the range
     "series": [{"bucket_start", "key", "name", "requests", "quota", "tokens"}],
     "rpm": …, "tpm": …}                                   # the last 60 seconds, same scope

``series`` has one entry per (bucket, key) that saw usage (empty buckets are left out), ordered by
``bucket_start`` then quota descending. ``key`` is a string: the model name, or the channel, token
or user id; ``name`` labels it (model name, channel name, token name or username as logged). Only
the 20 keys with the most quota over the range keep their own series; the others are summed per
bucket under ``key`` = ``name`` = ``"other"``. ``tokens`` = prompt + completion tokens.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from tollway.api.deps import AdminUser, CurrentUser, RuntimeDep, Session
from tollway.api.envelope import ok
from tollway.api.logs import text_param, timestamp_param
from tollway.db.models.user import ROLE_ADMIN
from tollway.errors import BusinessError
from tollway.usage.dashboard import (
    ADMIN_GROUPINGS,
    DEFAULT_RANGE_SECONDS,
    GRANULARITIES,
    GROUPINGS,
    MAX_RANGE_SECONDS,
    DashboardQuery,
    dashboard,
)
from tollway.usage.queries import quota_by_model_hour, quota_rows

router = APIRouter()

SELF_MAX_RANGE_SECONDS = 30 * 86400  # new-api: 2 592 000


def _range(request: Request, *, default_span: int) -> tuple[int, int]:
    """``(start, end)``: end defaults to now, start to ``default_span`` before end."""
    end = timestamp_param(request, "end_timestamp")
    end = int(time.time()) if end is None else end
    start = timestamp_param(request, "start_timestamp")
    start = max(end - default_span, 0) if start is None else start
    if end < start:
        raise BusinessError("end_timestamp must not be before start_timestamp")
    return start, end


@router.get("/data/")
async def get_all_quota_data(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    start = timestamp_param(request, "start_timestamp") or 0
    end = timestamp_param(request, "end_timestamp")
    username = text_param(request, "username")
    if username:
        return ok(await quota_rows(runtime.db, start=start, end=end, username=username))
    return ok(await quota_by_model_hour(runtime.db, start=start, end=end))


@router.get("/data/self")
async def get_own_quota_data(request: Request, runtime: RuntimeDep, session: CurrentUser) -> dict[str, Any]:
    start, end = _range(request, default_span=SELF_MAX_RANGE_SECONDS)
    if end - start > SELF_MAX_RANGE_SECONDS:
        raise BusinessError("the time range may not exceed 30 days")
    return ok(await quota_rows(runtime.db, start=start, end=end, user_id=session.id))


def _dashboard_query(request: Request, session: Session, *, own: bool) -> DashboardQuery:
    start, end = _range(request, default_span=DEFAULT_RANGE_SECONDS)
    if end - start > MAX_RANGE_SECONDS:
        raise BusinessError("the time range may not exceed 90 days")
    granularity = request.query_params.get("granularity") or "hour"
    if granularity not in GRANULARITIES:
        raise BusinessError("granularity must be hour, day or week")
    group_by = request.query_params.get("group_by") or "model"
    if group_by not in GROUPINGS:
        raise BusinessError("group_by must be model, channel, token or user")
    if group_by in ADMIN_GROUPINGS and session.role < ROLE_ADMIN:
        raise BusinessError(f"group_by={group_by} is for administrators only; use group_by=model")
    return DashboardQuery(
        start=start, end=end, granularity=granularity, group_by=group_by, user_id=session.id if own else None
    )


@router.get("/data/dashboard")
async def get_dashboard(request: Request, runtime: RuntimeDep, session: AdminUser) -> dict[str, Any]:
    scope = request.query_params.get("scope") or "all"
    if scope not in ("all", "self"):
        raise BusinessError("scope must be all or self")
    query = _dashboard_query(request, session, own=scope == "self")
    return ok(await dashboard(runtime.db, query, now=int(time.time())))


@router.get("/data/self/dashboard")
async def get_own_dashboard(request: Request, runtime: RuntimeDep, session: CurrentUser) -> dict[str, Any]:
    query = _dashboard_query(request, session, own=True)
    return ok(await dashboard(runtime.db, query, now=int(time.time())))
