"""Tollway under granian's RSGI interface: the default server of ``tollway serve``.

Measured on the project's benchmark, RSGI serves the relay faster than any ASGI server: granian's
Rust side parses HTTP and hands Python a scope object and a protocol to answer with, with no
per-message dictionaries. The relay's POST routes are answered that way
(:meth:`RelayFront.rsgi`); every other request (``/api``, probes, metrics, the relay's other
routes) runs the unchanged ASGI application through a small bridge. The ASGI lifespan runs in
``__rsgi_init__`` / ``__rsgi_del__``; shutdown first lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Scope

from tollway.app import TollwayApp, app_from_environment
from tollway.relay.front import DISCARD_LIMIT_FACTOR, discard_rest

if TYPE_CHECKING:
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope as RsgiScope

log = logging.getLogger("tollway.rsgi")

DRAIN_SECONDS = 20.0  # how long shutdown waits for in-flight requests, as uvicorn's graceful timeout
_DISCONNECT: Message = {"type": "http.disconnect"}


class RsgiApp:
    """granian's target: ``__rsgi__`` per request, ``__rsgi_init__`` / ``__rsgi_del__`` per worker."""

    def __init__(self, app: TollwayApp) -> None:
        self.app = app
        self.routes = app.front.routes
        self._lifespan: AbstractAsyncContextManager[Any] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.run_until_complete(self.startup())
        except Exception:
            log.exception("worker start-up failed")
            sys.exit(3)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def startup(self) -> None:
        """The application's lifespan start (database, caches, writer, jobs)."""
        lifespan = self.app.router.lifespan_context(self.app.relay)
        await lifespan.__aenter__()
        self._lifespan = lifespan

    async def shutdown(self) -> None:
        """Let in-flight requests finish (at most :data:`DRAIN_SECONDS`), then end the lifespan:
        the log writer and the rollups flush, connections close."""
        deadline = time.monotonic() + DRAIN_SECONDS
        # The request counter has no event to wait on; polling for at most 20 s is cheap.
        while self.app.active.current > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.app.active.current:
            log.warning("shutting down with %d request(s) still in flight", self.app.active.current)
        if self._lifespan is not None:
            lifespan, self._lifespan = self._lifespan, None
            await lifespan.__aexit__(None, None, None)

    async def __rsgi__(self, scope: RsgiScope, protocol: HTTPProtocol) -> None:
        if scope.method == "POST":
            spec = self.routes.get(scope.path)
            if spec is not None:
                await self.app.front.rsgi(scope, protocol, spec)
                return
        bridge = _AsgiBridge(protocol)
        await self.app(asgi_scope(scope), bridge.receive, bridge.send)
        await bridge.finish(self.app.runtime.settings.max_request_body_bytes)


def asgi_scope(scope: RsgiScope) -> Scope:
    """The ASGI HTTP scope of an RSGI request (granian's path is already percent-decoded)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()],
        "client": _address(scope.client),
        "server": _address(scope.server),
        "state": {},
    }


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


class _AsgiBridge:
    """ASGI ``receive`` / ``send`` over an RSGI protocol: the body arrives in chunks as the client
    sends it (so the body-limit middleware can refuse early), a response with one body message
    goes out whole, a longer one as a stream."""

    __slots__ = ("_body", "_headers", "_protocol", "_status", "_stream", "answered")

    def __init__(self, protocol: HTTPProtocol) -> None:
        self._protocol = protocol
        self._body: Any = None
        self._status = 500
        self._headers: list[tuple[str, str]] = []
        self._stream: Any = None
        self.answered = False

    async def receive(self) -> Message:
        if self._body is None:
            self._body = self._protocol.__aiter__()
        if self._body is not False:
            try:
                chunk = await self._body.__anext__()
                return {"type": "http.request", "body": chunk, "more_body": True}
            except StopAsyncIteration:
                self._body = False
                return {"type": "http.request", "body": b"", "more_body": False}
            except RuntimeError:  # the client went away
                self._body = False
                return _DISCONNECT
        await self._protocol.client_disconnect()
        return _DISCONNECT

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._status = message["status"]
            self._headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", ())
            ]
        elif kind == "http.response.body":
            body = message.get("body", b"")
            if self._stream is None:
                if not message.get("more_body", False):
                    self._protocol.response_bytes(self._status, self._headers, body)
                    self.answered = True
                    return
                self._stream = self._protocol.response_stream(self._status, self._headers)
                self.answered = True
            if body:
                try:
                    await self._stream.send_bytes(body)
                except RuntimeError:
                    raise OSError("the client went away") from None

    async def finish(self, body_limit: int) -> None:
        """After the application returned: a body it left unread (a 413, say) is read on, unkept,
        so the client gets to read the answer; an app that did not answer still gets one out."""
        if self._body not in (None, False):
            await discard_rest(self._body, DISCARD_LIMIT_FACTOR * body_limit)
        if not self.answered:
            self._protocol.response_empty(self._status, self._headers)


def rsgi_from_environment() -> RsgiApp:
    """Factory for granian workers."""
    return RsgiApp(app_from_environment())
