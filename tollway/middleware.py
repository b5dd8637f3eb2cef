"""ASGI middleware applied to every route: request-body size limit and cache re-sync."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollway.errors import PayloadTooLarge
from tollway.ops.logging import request_id_var
from tollway.runtime import Runtime


class BodyLimitMiddleware:
    """Refuse a body over ``limit`` bytes with 413: at once from ``Content-Length``, otherwise as
    soon as the streamed body passes the limit (the body is never read whole first)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(scope, send)
                    return
                break
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            # Over the limit: answer 413 ourselves and tell the app the client went away, so no
            # framework can turn the refusal into a parse error.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = PayloadTooLarge(f"request body larger than {self.limit // (1024 * 1024)} MB")
        path: str = scope.get("path", "")
        if path.startswith("/api"):
            body = orjson.dumps(error.envelope_body())
        else:
            body = orjson.dumps(error.openai_body(request_id_var.get()))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SyncPointMiddleware:
    """Applies changes other workers of this node made (options, …) before the request runs."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.runtime.options.refresh_if_changed()
        await self.app(scope, receive, send)


class JsonBodyMiddleware:
    """new-api parses management bodies as JSON whatever their Content-Type; scripts rely on it.

    A body sent as ``application/x-www-form-urlencoded`` (curl's default) or without a type is
    handed to the API as JSON; multipart uploads are left alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if not content_type.startswith((b"multipart/", b"application/json")):
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
