"""CSV download of the logs: ``GET /api/log/export`` (administrators, every log) and
``GET /api/log/self/export`` (the caller's own logs). new-api has no export; these are Tollway's.

Both take the filters of their list routes (``/api/log/`` and ``/api/log/self``) plus ``max_rows``
(1 … 1 000 000, default 1 000 000). Parameters and permissions are checked before the first byte is
sent, so a refusal is the usual ``{success:false, message}``; the file itself is streamed (see
``tollway.usage.export``). Users can download only while the ``LogExportEnabled`` option is on,
and their route shares the search rate limit since each call may read a million rows.
"""

from __future__ import annotations

import time
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tollway.api.deps import AdminUser, CurrentUser, RuntimeDep
from tollway.api.logs import int_param, log_filter
from tollway.errors import BusinessError
from tollway.ops.ratelimit import SearchRateLimit
from tollway.options import QUOTA_PER_UNIT
from tollway.runtime import Runtime
from tollway.usage.export import DEFAULT_MAX_ROWS, LOG_EXPORT_ENABLED, export_csv, export_filename
from tollway.usage.queries import LogFilter

router = APIRouter()

MEDIA_TYPE = "text/csv; charset=utf-8"


def _max_rows(request: Request) -> int:
    what = f"a number of rows from 1 to {DEFAULT_MAX_ROWS}"
    value = int_param(request, "max_rows", low=1, high=DEFAULT_MAX_ROWS, what=what)
    return DEFAULT_MAX_ROWS if value is None else value


def _csv_response(runtime: Runtime, flt: LogFilter, *, admin: bool, max_rows: int) -> StreamingResponse:
    filename = export_filename(flt, now=int(time.time()))
    body = export_csv(
        runtime.db,
        flt,
        admin=admin,
        quota_per_unit=float(runtime.options.get(QUOTA_PER_UNIT)),
        max_rows=max_rows,
    )
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    return StreamingResponse(body, media_type=MEDIA_TYPE, headers=headers)


@router.get("/log/export", response_model=None)
async def export_all_logs(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> StreamingResponse:
    flt = log_filter(request, admin=True)
    return _csv_response(runtime, flt, admin=True, max_rows=_max_rows(request))


@router.get("/log/self/export", response_model=None)
async def export_own_logs(
    request: Request, runtime: RuntimeDep, session: CurrentUser, _limit: SearchRateLimit
) -> StreamingResponse:
    if not runtime.options.get(LOG_EXPORT_ENABLED):
        raise BusinessError("log export is turned off by the administrator (option LogExportEnabled)")
    flt = replace(log_filter(request, admin=False), user_id=session.id)
    return _csv_response(runtime, flt, admin=False, max_rows=_max_rows(request))
