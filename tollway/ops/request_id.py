"""Request ids in new-api's format, and the ASGI middleware that stamps every response with one."""

from __future__ import annotations

import functools
import random
import string
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollway.ops.logging import request_id_var

REQUEST_ID_HEADER = "X-Oneapi-Request-Id"
_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode()
_ALPHABET = string.ascii_letters + string.digits
# Byte → alphanumeric: 256 = 4 × 62 + 8, so eight characters are a little likelier than the rest,
# which is fine for a request id (uniqueness comes from the nanoseconds) and much cheaper than
# random.choices.
_BYTE_TO_CHAR = bytes((_ALPHABET * 5)[:256], "ascii")


@functools.lru_cache(maxsize=4)
def _stamp(second: int) -> str:
    """``yyyyMMddHHmmss`` of a second, formatted once per second (strftime is the costly part)."""
    return time.strftime("%Y%m%d%H%M%S", time.localtime(second))


def new_request_id() -> str:
    """``yyyyMMddHHmmss`` + nanoseconds within the second (not padded) + 8 random alphanumerics."""
    now = time.time_ns()
    suffix = random.randbytes(8).translate(_BYTE_TO_CHAR).decode("ascii")
    return f"{_stamp(now // 1_000_000_000)}{now % 1_000_000_000}{suffix}"


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
