"""The management envelope ``{success, message, data}`` and its error handlers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tollway.errors import RateLimited, TollwayError
from tollway.http import JSONResponse


def ok(data: Any = None, message: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "message": message}
    if data is not None:
        body["data"] = data
    return body


def fail(message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(
            f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg", "invalid"))
        )
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TollwayError)
    async def _tollway_error(_request: Request, exc: TollwayError) -> JSONResponse:
        response = fail(exc.message, exc.status)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # new-api's console expects HTTP 200 with success:false for bad input.
        return fail(_describe_validation(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return fail(f"Invalid URL ({request.method} {request.url.path})", 404)
        if exc.status_code == 405:
            return fail(f"Method not allowed ({request.method} {request.url.path})", 405)
        return fail(str(exc.detail), exc.status_code)
