"""The relay's hot path as one plain ASGI handler: ``POST /v1/chat/completions`` and its siblings.

Every other path goes through the general stack (request-id, body-limit, sync-point middleware,
Starlette's router and responses). For the relayed POST routes that stack costs more than the
gateway's own work: each middleware wraps ``send`` in another coroutine, Starlette builds request
and response objects, and its streaming response starts a task group per stream. This handler does
the same jobs once, inline, with identical behaviour: a request id (header, log context), the
active-request count and metrics, the body limit (413 before the body is read whole), the options
sync point, OpenAI-style errors, and for streams the notice of a client going away, so
the stream is cut and charged for what was delivered. Answers go out in as few writes as the
upstream allows (:mod:`tollway.relay.direct_writer`): a whole answer with its headers, a stream's
headers with a first chunk already at hand, its last bytes with the end of the response.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.types import Receive, Scope, Send

from tollway.errors import InternalError, PayloadTooLarge, TollwayError
from tollway.ops.health import ActiveRequests
from tollway.ops.logging import request_id_var
from tollway.ops.metrics import Metrics
from tollway.ops.request_id import new_request_id
from tollway.options import Options
from tollway.relay.direct_writer import DirectWriter
from tollway.relay.engine import RelayEngine
from tollway.relay.incoming import Incoming, Reply, StreamReply
from tollway.relay.requests import RouteSpec

log = logging.getLogger("tollway.relay.front")

_REQUEST_ID = b"x-oneapi-request-id"
_JSON = (b"content-type", b"application/json")


class RelayFront:
    """Serves the exact-path relay routes in ``routes``; the app sends everything else elsewhere."""

    def __init__(
        self,
        engine: RelayEngine,
        options: Options,
        routes: dict[str, RouteSpec],
        *,
        active: ActiveRequests,
        metrics: Metrics | None,
        body_limit: int,
    ) -> None:
        self.engine = engine
        self.options = options
        self.routes = routes
        self.active = active
        self.metrics = metrics
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send, spec: RouteSpec) -> None:
        active, metrics = self.active, self.metrics
        active.current += 1
        if active.current > active.peak:
            active.peak = active.current
        if metrics is not None:
            metrics.active_requests.inc()
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        context = request_id_var.set(request_id)
        status = 500
        try:
            status = await self._handle(scope, receive, send, spec, request_id)
        finally:
            request_id_var.reset(context)
            active.current -= 1
            if metrics is not None:
                metrics.active_requests.dec()
                metrics.http_requests(scope["path"], "POST", str(status)).inc()

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, spec: RouteSpec, request_id: str
    ) -> int:
        """Answer the request; return the status sent."""
        id_header = (_REQUEST_ID, request_id.encode())
        try:
            body = await self._read_body(scope, receive)
            await self.options.refresh_if_changed()
            client = scope.get("client")
            incoming = Incoming(
                method="POST",
                path=scope["path"],
                query=scope.get("query_string", b"").decode("latin-1"),
                headers={name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
                body=body,
                client_ip=client[0] if client else "",
                request_id=request_id,
            )
            result = await self.engine.relay(incoming, spec)
        except TollwayError as error:
            return await _send_error(send, error, request_id, id_header)
        except Exception:
            log.exception("relay request failed")
            return await _send_error(send, InternalError("internal error"), request_id, id_header)
        if isinstance(result, Reply):
            headers = _encode(result.headers)
            headers.append(id_header)
            direct = DirectWriter.of(send)
            if direct is not None:
                direct.whole(result.status, headers, result.body)
                return result.status
            headers.append((b"content-length", str(len(result.body)).encode()))
            await send({"type": "http.response.start", "status": result.status, "headers": headers})
            await send({"type": "http.response.body", "body": result.body})
            return result.status
        await _send_stream(result, receive, send, id_header)
        return result.status

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, refused with 413 as soon as it is known to pass the limit."""
        limit = self.body_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise _too_large(limit)
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise InternalError("the client went away before sending its request")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than {limit // (1024 * 1024)} MB")


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def _send_error(
    send: Send, error: TollwayError, request_id: str, id_header: tuple[bytes, bytes]
) -> int:
    body = orjson.dumps(error.openai_body(request_id))
    headers = [_JSON, (b"content-length", str(len(body)).encode()), id_header]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return error.status


async def _send_stream(
    reply: StreamReply, receive: Receive, send: Send, id_header: tuple[bytes, bytes]
) -> None:
    """Pass the stream through chunk by chunk; always close the reply (it settles the request).

    uvicorn drops writes to a client that went away without telling the app, so the copy loop is
    cancelled as soon as the client is known to be gone (told by :class:`DirectWriter`, or by a
    watcher task waiting for ``http.disconnect``): the engine then settles for what was sent.
    """
    task = asyncio.current_task()
    assert task is not None
    finished = client_gone = False

    def client_left() -> None:
        nonlocal client_gone
        if not finished:
            client_gone = True
            task.cancel()

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        client_left()

    headers = _encode(reply.headers)
    headers.append(id_header)
    watcher = None
    direct = DirectWriter.of(send)
    out: DirectWriter | _AsgiStream
    if direct is not None:
        direct.on_disconnect(client_left)
        out = direct
    else:
        out = _AsgiStream(send)
        watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    try:
        if direct is not None and direct.gone:
            return  # it left while the upstream was being asked: nothing to send, nothing to read
        await out.start_stream(reply.status, headers, hold=reply.at_hand())
        ended = reply.ended
        async for chunk in reply.chunks:
            if ended():  # the rest is at hand: settle, then the last bytes and the end in one write
                rest = [chunk, *[more async for more in reply.chunks]]
                finished = True
                await out.end_stream(b"".join(rest))
                break
            await out.chunk(chunk)
        else:
            finished = True
            await out.end_stream()
    except asyncio.CancelledError:
        if not client_gone:
            raise
        task.uncancel()
    except OSError:
        pass  # the connection broke while writing: the client is gone
    finally:
        finished = True
        if watcher is not None:
            watcher.cancel()
        if direct is not None:
            direct.detach()
        await reply.close()


class _AsgiStream:
    """The stream as plain ASGI messages, where :class:`DirectWriter` does not apply."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def start_stream(self, status: int, headers: list[tuple[bytes, bytes]], *, hold: bool) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self, last: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": last, "more_body": False})
