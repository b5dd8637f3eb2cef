"""``create_app(settings)`` builds the ASGI application; its lifespan owns every resource."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tollway.api.app import build_api
from tollway.api.channels_ops import ChannelTester
from tollway.errors import NotFound
from tollway.middleware import BodyLimitMiddleware, SyncPointMiddleware
from tollway.ops.health import ActiveRequests, health_routes
from tollway.ops.logging import configure_logging
from tollway.ops.metrics_endpoint import MetricsEndpoint
from tollway.ops.ratelimit import RedisLimiter
from tollway.ops.request_id import RequestIdMiddleware
from tollway.relay.front import RelayFront
from tollway.relay.routes import RELAYED, build_relay_routes, relay_error
from tollway.runtime import Runtime
from tollway.settings import Settings, load_settings

log = logging.getLogger("tollway.app")

PROBE_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"

_HOME = """<!doctype html><html><head><meta charset="utf-8"><title>Tollway</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Tollway is running</h1>
<p>{setup_hint}</p>
<ul>
<li>OpenAI-compatible relay: <code>POST /v1/chat/completions</code> with <code>Authorization: Bearer sk-…</code></li>
<li>Management API: <code>/api</code> (schema at <a href="/api/openapi.json">/api/openapi.json</a>)</li>
<li>Status: <a href="/api/status">/api/status</a></li>
</ul></body></html>"""


class TollwayApp:
    """The ASGI entry point: ``/api…`` goes to the management API, everything else to the relay.

    Dispatching on the path prefix here (instead of mounting) keeps ``/api`` paths whole in the
    OpenAPI schema and keeps the relay's route lookup short. Every request passes the request-id,
    body-limit and sync-point middleware first.
    """

    def __init__(self, *, relay: Starlette, api: ASGIApp, runtime: Runtime) -> None:
        self.relay = relay
        self.api = api
        self.runtime = runtime
        self.router = relay.router  # lifespan_context, for tests and embedding
        self.state = relay.state
        self.active = ActiveRequests(
            RequestIdMiddleware(
                BodyLimitMiddleware(
                    SyncPointMiddleware(self._dispatch, runtime), runtime.settings.max_request_body_bytes
                )
            ),
            runtime.metrics if runtime.settings.metrics_enabled else None,
        )
        # Probes answer outside the middleware stack: no counter, no cache sync (which may need the
        # database that a readiness probe is asking about).
        self.probes = RequestIdMiddleware(Starlette(routes=health_routes(runtime.health)))
        self.front = RelayFront(
            runtime.relay.engine,
            runtime.options,
            {path: spec for path, spec in RELAYED if "{" not in path},
            active=self.active,
            metrics=self.active.metrics,
            body_limit=runtime.settings.max_request_body_bytes,
        )
        self.scrape = MetricsEndpoint(runtime.metrics, runtime.settings.metrics_token, runtime.sample_metrics)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if path.startswith("/api/") or path == "/api":
            await self.api(scope, receive, send)
        else:
            await self.relay(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            spec = self.front.routes.get(scope["path"])
            if spec is not None:
                await self.front(scope, receive, send, spec)
                return
        if scope["type"] == "lifespan":
            await self.relay(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] in PROBE_PATHS:
            await self.probes(scope, receive, send)
        elif (
            scope["type"] == "http"
            and scope["path"] == METRICS_PATH
            and self.runtime.settings.metrics_enabled
        ):
            await self.scrape(scope, receive, send)
        else:
            await self.active(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    run_migrations: bool = False,
    runtime: Runtime | None = None,
    freeze_gc: bool = False,
) -> TollwayApp:
    """Build the application. ``run_migrations`` applies migrations at start (single process only:
    with several workers the CLI migrates once before starting them). ``freeze_gc`` (server
    workers) moves what start-up loaded out of the cyclic collector's way."""
    runtime = runtime or Runtime(settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await runtime.start(run_migrations=run_migrations)
        tester = api.state.channel_tester = ChannelTester(runtime)
        if settings.channel_test_frequency and settings.is_master:
            runtime.every(settings.channel_test_frequency * 60, tester.run, "channel tests")
        if not runtime.setup_done:
            log.info(
                "no root user yet: create one with POST http://127.0.0.1:%d/api/setup "
                '(body {"username":…,"password":…,"confirmPassword":…})',
                settings.port,
            )
        # Everything loaded at start (modules, caches, the tokenizers' tables) lives as long as the
        # process: out of the collector's way, so full collections stay short under load.
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await tester.cancel()
            await runtime.stop()
            runtime.metrics.process_exited()
            limiter = getattr(api.state, "rate_limiter", None)
            if isinstance(limiter, RedisLimiter):
                await limiter.aclose()

    async def home(_request: Request) -> Response:
        hint = (
            "Set up: <code>POST /api/setup</code> creates the root user."
            if not runtime.setup_done
            else "Log in with <code>POST /api/user/login</code>."
        )
        return HTMLResponse(_HOME.format(setup_hint=hint))

    async def unknown_path(request: Request) -> Response:
        return relay_error(request, NotFound(f"Invalid URL ({request.method} {request.url.path})"))

    api = build_api(runtime)
    api.state.database_health = runtime.health
    relay = Starlette(
        routes=[
            Route("/", home),
            *build_relay_routes(runtime.relay),
            Route(
                "/{path:path}",
                unknown_path,
                methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
            ),
        ],
        lifespan=lifespan,
    )
    relay.state.runtime = runtime
    app = TollwayApp(relay=relay, api=api, runtime=runtime)
    api.state.active_requests = app.active
    return app


def app_from_environment() -> TollwayApp:
    """Factory for uvicorn workers: settings from the environment, secrets already ensured by the CLI."""
    settings = load_settings().with_secrets()
    configure_logging(
        debug=settings.debug,
        log_dir=settings.log_dir,
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backup_count,
    )
    return create_app(settings, freeze_gc=True)
