"""Log routes (new-api's ``/api/log…``): lists, searches, statistics, a token's own logs, and the
retention delete. The queries live in ``tollway.usage.queries``.

Query parameters are read the lenient way new-api's console needs: an absent or empty value, and
the ``NaN``/``undefined``/``null`` a cleared date picker sends, mean "no filter"; a decimal
timestamp is truncated. Anything else that is not a number in range (``start_timestamp=abc``, an
unknown ``type``) answers ``success:false`` with the parameter's name, never a server error.

Deviations from new-api, on purpose: ``model_name`` matches exactly unless it contains ``%``
(then LIKE, ``_`` literal); user-facing ids are the real ones (no ``id % 1024``); ``/log/token``
authenticates the API key in ``Authorization`` as the relay does (NA+), instead of NA's
unauthenticated ``?key=``; ``before_id`` adds keyset paging for deep pages.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request

from tollway.api.deps import AdminUser, CurrentUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.api.paging import Page
from tollway.db.models.log import LOG_LOGIN
from tollway.errors import BusinessError
from tollway.ops.ratelimit import CriticalRateLimit, SearchRateLimit
from tollway.relay.auth import authenticate
from tollway.relay.routes import incoming_of
from tollway.runtime import Runtime
from tollway.usage.queries import (
    DELETE_BATCH,
    SEARCH_LIMIT,
    LogFilter,
    admin_logs,
    list_logs,
    log_stat,
    newest_logs,
    search_logs,
    search_own_logs,
    user_logs,
)
from tollway.usage.retention import purge_logs_before

router = APIRouter()

MAX_TIMESTAMP = 2**53  # beyond any real date, inside every driver's integer range
MAX_ID = 2**53
MAX_INT32 = 2**31 - 1
MAX_TEXT = 255
_ABSENT = frozenset({"", "nan", "undefined", "null"})
LOG_TYPES = "1 top-up, 2 consume, 3 manage, 4 system, 5 error, 6 refund, 7 login"


# ----- parameters (shared with tollway.api.data) ------------------------------------------------


def int_param(request: Request, name: str, *, low: int, high: int, what: str) -> int | None:
    """The integer value of query parameter ``name``, or None when it is absent."""
    raw = request.query_params.get(name)
    text = (raw or "").strip()
    if text.lower() in _ABSENT:
        return None
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)  # JavaScript's Date.parse(...) / 1000 may carry a fraction
        except ValueError:
            raise BusinessError(f"{name} must be {what}") from None
        if not math.isfinite(number):
            raise BusinessError(f"{name} must be {what}") from None
        value = int(number)
    if not low <= value <= high:
        raise BusinessError(f"{name} must be {what}")
    return value


def timestamp_param(request: Request, name: str) -> int | None:
    return int_param(request, name, low=0, high=MAX_TIMESTAMP, what="a unix timestamp in seconds")


def text_param(request: Request, name: str) -> str:
    value = request.query_params.get(name) or ""
    if len(value) > MAX_TEXT:
        raise BusinessError(f"{name} is too long (at most {MAX_TEXT} characters)")
    if "\x00" in value:
        raise BusinessError(f"{name} must not contain NUL characters")
    return value


def log_filter(request: Request, *, admin: bool, typed: bool = True) -> LogFilter:
    """The filters of ``/log/`` (``admin``) or ``/log/self``; ``typed=False`` for the stat routes,
    which always count consume logs and ignore ``type``."""
    log_type = (
        int_param(request, "type", low=0, high=LOG_LOGIN, what=f"a log type (0 all, {LOG_TYPES})")
        if typed
        else None
    )
    return LogFilter(
        type=log_type or 0,
        start=timestamp_param(request, "start_timestamp"),
        end=timestamp_param(request, "end_timestamp"),
        username=text_param(request, "username") if admin else "",
        token_name=text_param(request, "token_name"),
        model_name=text_param(request, "model_name"),
        channel_id=(int_param(request, "channel", low=0, high=MAX_INT32, what="a channel id") or 0)
        if admin
        else 0,
        group=text_param(request, "group"),
        request_id=text_param(request, "request_id"),
    )


async def _page_of(runtime: Runtime, request: Request, flt: LogFilter, *, admin: bool) -> dict[str, Any]:
    page = Page.from_request(request)  # clamps absurd page numbers
    before_id = int_param(request, "before_id", low=1, high=MAX_ID, what="a log id")
    result = await list_logs(runtime.db, flt, offset=page.offset, limit=page.page_size, before_id=before_id)
    items = await admin_logs(runtime.db, result.rows) if admin else user_logs(result.rows)
    return page.answer(items, result.total)


# ----- routes -----------------------------------------------------------------------------------


@router.get("/log/")
async def get_all_logs(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    return ok(await _page_of(runtime, request, log_filter(request, admin=True), admin=True))


@router.get("/log/self")
async def get_own_logs(request: Request, runtime: RuntimeDep, session: CurrentUser) -> dict[str, Any]:
    flt = replace(log_filter(request, admin=False), user_id=session.id)
    return ok(await _page_of(runtime, request, flt, admin=False))


@router.get("/log/search")
async def search_all_logs(
    request: Request, runtime: RuntimeDep, _admin: AdminUser, _limit: SearchRateLimit
) -> dict[str, Any]:
    rows = await search_logs(runtime.db, text_param(request, "keyword"))
    return ok(await admin_logs(runtime.db, rows))


@router.get("/log/self/search")
async def search_own(
    request: Request, runtime: RuntimeDep, session: CurrentUser, _limit: SearchRateLimit
) -> dict[str, Any]:
    what = f"a log type number (0 unknown, {LOG_TYPES})"
    log_type = int_param(request, "keyword", low=0, high=LOG_LOGIN, what=what)
    if log_type is None:
        raise BusinessError(f"keyword must be {what}")
    return ok(user_logs(await search_own_logs(runtime.db, session.id, log_type)))


@router.get("/log/stat")
async def get_all_stat(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    flt = log_filter(request, admin=True, typed=False)
    return ok((await log_stat(runtime.db, flt, now=int(time.time()))).as_json())


@router.get("/log/self/stat")
async def get_own_stat(request: Request, runtime: RuntimeDep, session: CurrentUser) -> dict[str, Any]:
    flt = replace(log_filter(request, admin=False, typed=False), user_id=session.id)
    return ok((await log_stat(runtime.db, flt, now=int(time.time()))).as_json())


@router.get("/log/token")
async def get_token_logs(request: Request, runtime: RuntimeDep, _limit: CriticalRateLimit) -> dict[str, Any]:
    """The logs of the API key in ``Authorization: Bearer sk-…`` (checked exactly as the relay
    checks it): the newest 100 as a plain array, or a page when ``p``/``page_size`` is given."""
    engine = runtime.relay.engine
    await engine.sync()
    incoming = await incoming_of(request)
    caller = await authenticate(
        incoming, engine.accounts, engine.balances, engine.options, engine.prices, read_only=True
    )
    flt = LogFilter(user_id=caller.user.id, token_id=caller.token.id)
    if "p" in request.query_params or "page_size" in request.query_params:
        return ok(await _page_of(runtime, request, flt, admin=False))
    return ok(user_logs(await newest_logs(runtime.db, flt, SEARCH_LIMIT)))


@router.delete("/log/")
async def delete_old_logs(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    target = timestamp_param(request, "target_timestamp")
    if target is None:
        raise BusinessError("target_timestamp is required: logs created before it are deleted")
    return ok(await purge_logs_before(runtime.db, target, batch_size=DELETE_BATCH))
