"""Request ids in new-api's format, and the ASGI middleware that stamps every response with one."""

from __future__ import annotations

import random
import string
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollway.ops.logging import request_id_var

REQUEST_ID_HEADER = "X-Oneapi-Request-Id"
_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode()
_ALPHABET = string.ascii_letters + string.digits


def new_request_id() -> str:
    """``yyyyMMddHHmmss`` + nanoseconds within the second (not padded) + 8 random alphanumerics."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now // 1_000_000_000))
    return f"{stamp}{now % 1_000_000_000}{''.join(random.choices(_ALPHABET, k=8))}"


class RequestIdMiddleware:
    """Sets ``scope["state"]["request_id"]`` and the logging context, and adds the response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        header = (_HEADER_BYTES, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
