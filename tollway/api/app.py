"""The management API (``/api``): a FastAPI app, so it publishes ``/api/openapi.json``."""

from __future__ import annotations

from fastapi import FastAPI

from tollway import __version__
from tollway.api import (
    channels,
    data,
    debug,
    health,
    log_export,
    logs,
    options,
    redemptions,
    setup,
    status,
    tokens,
    topups,
    users,
    users_admin,
)
from tollway.api.envelope import install_error_handlers
from tollway.http import JSONResponse
from tollway.middleware import JsonBodyMiddleware
from tollway.ops.ratelimit import GlobalRateLimitMiddleware, build_limiter
from tollway.runtime import Runtime


def build_api(runtime: Runtime) -> FastAPI:
    """The FastAPI app behind ``/api``; routes reach the process state through ``app.state.runtime``."""
    api = FastAPI(
        title="Tollway management API",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        default_response_class=JSONResponse,
    )
    api.state.runtime = runtime
    settings = runtime.settings
    api.state.rate_limiter = limiter = build_limiter(settings)
    install_error_handlers(api)
    modules = (
        setup,
        status,
        health,
        users,
        users_admin,
        tokens,
        redemptions,
        topups,
        channels,
        options,
        log_export,
        logs,
        data,
        debug,
    )
    for module in modules:
        api.include_router(module.router, prefix="/api")
    api.add_middleware(JsonBodyMiddleware)
    if settings.global_api_rate_limit_enable:
        api.add_middleware(
            GlobalRateLimitMiddleware,
            limiter=limiter,
            limit=settings.global_api_rate_limit,
            window=settings.global_api_rate_limit_duration,
        )
    return api
