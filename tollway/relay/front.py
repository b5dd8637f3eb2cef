"""The relay's hot path as plain handlers: ``POST /v1/chat/completions`` and its siblings.

Every other path goes through the general stack (request-id, body-limit, sync-point middleware,
Starlette's router and responses). For the relayed POST routes that stack costs more than the
gateway's own work: each middleware wraps ``send`` in another coroutine, Starlette builds request
and response objects, and its streaming response starts a task group per stream. This module does
the same jobs once, inline, with identical behaviour: a request id (header, log context), the
active-request count and metrics, the body limit (413 before the body is read whole), the options
sync point, OpenAI-style errors, and for streams a watcher that notices a client going away, so
the stream is cut and charged for what was delivered.

Two entry points share that work: :meth:`RelayFront.__call__` for ASGI servers (uvicorn, tests)
and :meth:`RelayFront.rsgi` for granian's RSGI interface, the default server (see
``tollway/rsgi.py``), which skips ASGI's message dictionaries altogether.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from tollway.errors import InternalError, PayloadTooLarge, TollwayError
from tollway.ops.health import ActiveRequests
from tollway.ops.logging import request_id_var
from tollway.ops.metrics import Metrics
from tollway.ops.request_id import new_request_id
from tollway.options import Options
from tollway.relay.engine import RelayEngine
from tollway.relay.incoming import Incoming, Reply, StreamReply
from tollway.relay.requests import RouteSpec

if TYPE_CHECKING:
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope as RsgiScope

log = logging.getLogger("tollway.relay.front")

REQUEST_ID = "x-oneapi-request-id"
_REQUEST_ID = REQUEST_ID.encode()
_JSON = (b"content-type", b"application/json")
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}


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

    # ----- shared -----------------------------------------------------------------------------

    def _begin(self) -> tuple[str, contextvars.Token[str]]:
        active, metrics = self.active, self.metrics
        active.current += 1
        if active.current > active.peak:
            active.peak = active.current
        if metrics is not None:
            metrics.active_requests.inc()
        request_id = new_request_id()
        return request_id, request_id_var.set(request_id)

    def _end(self, path: str, status: int, context: contextvars.Token[str]) -> None:
        request_id_var.reset(context)
        self.active.current -= 1
        metrics = self.metrics
        if metrics is not None:
            metrics.active_requests.dec()
            metrics.http_requests(path, "POST", str(status)).inc()

    async def _relay(self, spec: RouteSpec, incoming: Incoming) -> Reply | StreamReply:
        await self.options.refresh_if_changed()
        return await self.engine.relay(incoming, spec)

    def _check_length(self, declared: str | bytes | None) -> None:
        if declared is not None and declared.isdigit() and int(declared) > self.body_limit:
            raise _too_large(self.body_limit)

    # ----- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send, spec: RouteSpec) -> None:
        request_id, context = self._begin()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        try:
            status = await self._handle(scope, receive, send, spec, request_id)
        finally:
            self._end(scope["path"], status, context)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, spec: RouteSpec, request_id: str
    ) -> int:
        """Answer the request; return the status sent."""
        id_header = (_REQUEST_ID, request_id.encode())
        try:
            body = await self._read_body(scope, receive)
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
            result = await self._relay(spec, incoming)
        except TollwayError as error:
            return await _send_error(send, error, request_id, id_header)
        except Exception:
            log.exception("relay request failed")
            return await _send_error(send, InternalError("internal error"), request_id, id_header)
        if isinstance(result, Reply):
            headers = _encode(result.headers)
            headers.append((b"content-length", str(len(result.body)).encode()))
            headers.append(id_header)
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
                self._check_length(value)
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

    # ----- RSGI (granian) ---------------------------------------------------------------------

    async def rsgi(self, scope: RsgiScope, protocol: HTTPProtocol, spec: RouteSpec) -> None:
        request_id, context = self._begin()
        status = 500
        try:
            status = await self._handle_rsgi(scope, protocol, spec, request_id)
        finally:
            self._end(scope.path, status, context)

    async def _handle_rsgi(
        self, scope: RsgiScope, protocol: HTTPProtocol, spec: RouteSpec, request_id: str
    ) -> int:
        id_header = (REQUEST_ID, request_id)
        try:
            headers = dict(scope.headers.items())
            body = await self._read_rsgi_body(headers.get("content-length"), protocol)
            incoming = Incoming(
                method="POST",
                path=scope.path,
                query=scope.query_string,
                headers=headers,
                body=body,
                client_ip=_client_host(scope.client),
                request_id=request_id,
            )
            result = await self._relay(spec, incoming)
        except TollwayError as error:
            return _rsgi_error(protocol, error, request_id)
        except Exception:
            log.exception("relay request failed")
            return _rsgi_error(protocol, InternalError("internal error"), request_id)
        if isinstance(result, Reply):
            result.headers.append(id_header)
            protocol.response_bytes(result.status, result.headers, result.body)
            return result.status
        result.headers.append(id_header)
        await _rsgi_stream(result, protocol)
        return result.status

    async def _read_rsgi_body(self, declared: str | None, protocol: HTTPProtocol) -> bytes:
        """granian buffers a body it knows the length of; a chunked one is counted as it comes."""
        self._check_length(declared)
        try:
            if declared is not None:
                return await protocol()
            chunks: list[bytes] = []
            size, limit = 0, self.body_limit
            body = protocol.__aiter__()  # granian's iterator refuses a second __aiter__ (async for)
            while (chunk := await _next_chunk(body)) is not None:
                size += len(chunk)
                if size > limit:
                    await discard_rest(body, DISCARD_LIMIT_FACTOR * limit)
                    raise _too_large(limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except RuntimeError:  # granian's ProtocolClosed / ProtocolError
            raise InternalError("the client went away before sending its request") from None


# A chunked body found too large is read on, unkept, up to this multiple of the limit, so that the
# client (still sending) gets to read the 413 instead of a reset connection.
DISCARD_LIMIT_FACTOR = 4


async def discard_rest(body: Any, budget: int) -> None:
    """Read and drop what the client still sends, up to ``budget`` bytes."""
    try:
        while (chunk := await _next_chunk(body)) is not None:
            budget -= len(chunk)
            if budget < 0:
                return
    except RuntimeError:
        return  # the client went away


async def _next_chunk(body: Any) -> bytes | None:
    try:
        chunk: bytes = await body.__anext__()
    except StopAsyncIteration:
        return None
    return chunk


def _client_host(client: str) -> str:
    """``"1.2.3.4:5678"`` or ``"[::1]:5678"`` → the host part."""
    host, _, _ = client.rpartition(":")
    return host.strip("[]") if host else client


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


def _rsgi_error(protocol: HTTPProtocol, error: TollwayError, request_id: str) -> int:
    body = orjson.dumps(error.openai_body(request_id))
    headers = [("content-type", "application/json"), (REQUEST_ID, request_id)]
    protocol.response_bytes(error.status, headers, body)
    return error.status


class _StreamCopy:
    """Copies a stream to the client; a watcher cancels the copy when the client goes away (the
    servers drop writes to a departed client without telling the app), and the engine then
    settles for what was sent. The reply is always closed: that settles the request."""

    __slots__ = ("client_gone", "finished", "task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.finished = self.client_gone = False

    def client_left(self) -> None:
        if not self.finished:
            self.client_gone = True
            self.task.cancel()

    async def run(self, reply: StreamReply, write: Any, watcher: asyncio.Task[None], end: Any = None) -> None:
        try:
            async for chunk in reply.chunks:
                await write(chunk)
            self.finished = True
            if end is not None:
                await end()
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            self.task.uncancel()
        except (OSError, RuntimeError):
            pass  # the connection broke while writing (granian: ProtocolClosed): the client is gone
        finally:
            self.finished = True
            watcher.cancel()
            await reply.close()


async def _send_stream(
    reply: StreamReply, receive: Receive, send: Send, id_header: tuple[bytes, bytes]
) -> None:
    copy = _StreamCopy()

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        copy.client_left()

    async def write(chunk: bytes) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})

    watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    headers = _encode(reply.headers)
    headers.append(id_header)
    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    except BaseException:
        watcher.cancel()
        await reply.close()
        raise

    async def end() -> None:
        await send(_END)

    await copy.run(reply, write, watcher, end)


async def _rsgi_stream(reply: StreamReply, protocol: HTTPProtocol) -> None:
    copy = _StreamCopy()

    async def watch_disconnect() -> None:
        await protocol.client_disconnect()
        copy.client_left()

    watcher = asyncio.get_running_loop().create_task(watch_disconnect())
    try:
        transport = protocol.response_stream(reply.status, reply.headers)
    except BaseException:
        watcher.cancel()
        await reply.close()
        raise
    await copy.run(reply, transport.send_bytes, watcher)
