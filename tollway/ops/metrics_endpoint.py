"""``GET /metrics``: the Prometheus scrape, optionally behind a bearer token (``METRICS_TOKEN``).

Served outside the middleware stack, like the probes: a scrape is not a request to count, and it
must answer even when the database is down.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from tollway.ops.metrics import Metrics


class MetricsEndpoint:
    def __init__(self, metrics: Metrics, token: str, before_scrape: Callable[[], None]) -> None:
        self.metrics = metrics
        self.before_scrape = before_scrape
        self.expected = f"Bearer {token}".encode() if token else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if request.method not in ("GET", "HEAD"):
            response: Response = JSONResponse({"error": "method not allowed"}, status_code=405)
        elif self.expected and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), self.expected
        ):
            response = JSONResponse(
                {"error": "a valid metrics bearer token is required"},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        else:
            self.before_scrape()
            # Multi-process collection reads every worker's files: off the event loop.
            body, content_type = await asyncio.to_thread(self.metrics.render)
            response = Response(body, media_type=content_type)
        await response(scope, receive, send)
