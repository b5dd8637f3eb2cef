"""CPU profiles on demand (root only: a profile shows the code's internals).

``POST /api/debug/profile`` captures on the worker that receives the request (``seconds`` from
the query string or a JSON body, 1 … 60, default ``PPROF_DURATION`` bounded to that range) and
answers the file's name; a second capture while one runs in that worker answers "busy".
``GET /api/debug/profile`` lists the files of ``PPROF_DIR`` (every worker's);
``GET /api/debug/profile/{name}`` downloads one, or renders it with ``?format=html|speedscope|text``.
See ``tollway.ops.profiler``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

from tollway.api.deps import RootUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.errors import BusinessError, InvalidRequest, NotFound
from tollway.ops.profiler import (
    EXTENSIONS,
    Format,
    ProfileFileError,
    ProfilerBusy,
    list_profiles,
    profile_path,
    render_file,
)

router = APIRouter()

MIN_SECONDS = 1.0
MAX_SECONDS = 60.0
MEDIA_TYPES: dict[Format, str] = {
    "html": "text/html; charset=utf-8",
    "speedscope": "application/json",
    "text": "text/plain; charset=utf-8",
}


class CaptureRequest(BaseModel):
    seconds: float | None = Field(None, ge=MIN_SECONDS, le=MAX_SECONDS)


class Busy(BusinessError):
    """A capture is already running on this worker (HTTP 200, ``success: false``, as every refusal)."""


@router.post("/debug/profile")
async def capture_profile(
    runtime: RuntimeDep,
    _root: RootUser,
    seconds: Annotated[float | None, Query(ge=MIN_SECONDS, le=MAX_SECONDS)] = None,
    body: Annotated[CaptureRequest | None, Body()] = None,
) -> dict[str, Any]:
    if seconds is None and body is not None:
        seconds = body.seconds
    if seconds is None:
        seconds = min(max(runtime.settings.pprof_duration, MIN_SECONDS), MAX_SECONDS)
    try:
        path = await runtime.profiler.capture(seconds, reason="requested through /api/debug/profile")
    except ProfilerBusy as exc:
        raise Busy(f"busy: {exc}; try again when it ends") from None
    except OSError as exc:
        raise BusinessError(f"could not write the profile: {exc}") from None
    data = {"name": path.name, "seconds": seconds, "pid": os.getpid(), "size": path.stat().st_size}
    return ok(data, f"captured {seconds:g} s of CPU profile into {path.name}")


@router.get("/debug/profile")
async def list_profile_files(runtime: RuntimeDep, _root: RootUser) -> dict[str, Any]:
    files = await asyncio.to_thread(list_profiles, runtime.profiler.directory)
    return ok(
        {
            "directory": str(runtime.profiler.directory),
            "capturing": runtime.profiler.busy,
            "items": [asdict(item) for item in files],
        }
    )


@router.get("/debug/profile/{name}", response_model=None)
async def download_profile(
    name: str, runtime: RuntimeDep, _root: RootUser, format: Format | None = None
) -> Response:
    try:
        path = profile_path(runtime.profiler.directory, name)
    except (ProfileFileError, FileNotFoundError) as exc:
        raise NotFound(str(exc)) from None
    if format is None:
        media_type = "application/gzip" if name.endswith(".gz") else "application/json"
        return FileResponse(path, media_type=media_type, filename=name)
    try:
        text = await asyncio.to_thread(render_file, path, format)
    except ProfileFileError as exc:
        raise InvalidRequest(str(exc)) from None
    filename = name.split(".", 1)[0] + EXTENSIONS[format]
    disposition = "inline" if format == "html" else "attachment"
    headers = {"Content-Disposition": f'{disposition}; filename="{filename}"'}
    return Response(text, media_type=MEDIA_TYPES[format], headers=headers)
