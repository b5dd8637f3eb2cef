"""A fast mock of an OpenAI-compatible upstream, for benchmarking the gateway.

A raw asyncio protocol with a minimal HTTP/1.1 parser and pre-built responses, so that the mock
costs a few microseconds per request and is never the bottleneck. uvloop and orjson are used when
importable, the standard library otherwise. Listens on 127.0.0.1 only.

Endpoints:

* ``POST /v1/chat/completions``: JSON with a ``usage`` block; or, with ``"stream": true``, SSE
  (a role chunk, N content chunks, a finish chunk, a usage chunk when
  ``stream_options.include_usage``, then ``data: [DONE]``) in chunked transfer encoding.
* ``GET /v1/models``, ``GET /health``.

Knobs, from the environment or per request from the query string (the query wins):
``latency_ms`` / ``MOCK_LATENCY_MS`` (non-stream delay), ``ttft_ms`` / ``MOCK_TTFT_MS`` (delay before
the headers and the first chunk of a stream), ``chunk_ms`` / ``MOCK_CHUNK_MS`` (delay between stream
chunks), ``chunks`` / ``MOCK_CHUNKS`` (content chunks, default 10; also the completion tokens).

Long streams (more than ``INLINE_CHUNKS`` chunks) are written in slices that respect the client's
flow control, so the mock never buffers a whole 100k-chunk stream.

Delays are measured from the request's arrival to within some 0.1 ms (:class:`Sleeper`), not with
the event loop's timers: uvloop's (libuv's) have a resolution of one millisecond, so a 50 ms delay
lasted 49.2 to 51.5 ms depending on when in the millisecond the request came, and the first chunks
of streams whose requests came within the same millisecond left together, as a burst that the
gateway under test then had to forward one after the other. Both inflated the time to first token
added by anything between the client and the mock.

Usage: ``python bench/mock_upstream.py --port 18000``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast
from urllib.parse import parse_qsl

try:
    import orjson

    loads: Callable[[bytes], Any] = orjson.loads
    dumps: Callable[[Any], bytes] = orjson.dumps
    JSON_LIB = "orjson"
except ImportError:
    loads = json.loads
    JSON_LIB = "json"

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


CREATED = 1_700_000_000
PROMPT_TOKENS = 25
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo")
INLINE_CHUNKS = 256  # streams up to this many chunks (and without delays) go out in one write
SLICE_EVENTS = 64  # events per write for long streams
Knobs = dict[str, float]


def env_knobs() -> Knobs:
    """The default knobs, from the environment."""
    return {
        "latency_ms": float(os.environ.get("MOCK_LATENCY_MS", 0)),
        "ttft_ms": float(os.environ.get("MOCK_TTFT_MS", 0)),
        "chunk_ms": float(os.environ.get("MOCK_CHUNK_MS", 0)),
        "chunks": float(os.environ.get("MOCK_CHUNKS", 10)),
    }


DEFAULTS = env_knobs()


# ---------------------------------------------------------------- responses


def head(status: bytes, ctype: bytes, length: int | None = None, extra: bytes = b"") -> bytes:
    """Status line and headers; chunked when ``length`` is None."""
    h = b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\n" + extra
    if length is None:
        return h + b"Transfer-Encoding: chunked\r\n\r\n"
    return h + b"Content-Length: " + str(length).encode() + b"\r\n\r\n"


def full(status: bytes, ctype: bytes, body: bytes) -> bytes:
    return head(status, ctype, len(body)) + body


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n, "total_tokens": PROMPT_TOKENS + n}


def chat_response(model: str, n: int) -> bytes:
    body = dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(["tok"] * n)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage(n),
        }
    )
    return full(b"200 OK", b"application/json", body)


class StreamEvents:
    """The SSE events of one streamed completion, each one HTTP chunk: built once, shared."""

    def __init__(self, model: str, n: int, with_usage: bool) -> None:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data: dict[str, Any] = {
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "system_fingerprint": "fp_mock",
                "choices": choices,
            }
            if with_usage:
                data["usage"] = None
            data.update(extra)
            return http_chunk(b"data: " + dumps(data) + b"\n\n")

        def delta(content: dict[str, str], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}]

        self.n = n
        self.first = event(delta({"role": "assistant", "content": ""}))
        self.content = event(delta({"content": "tok "}))
        self.tail = [event(delta({}, "stop"))]
        if with_usage:
            self.tail.append(event([], usage=usage(n)))
        self.tail.append(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        for _ in range(self.n):
            yield self.content
        yield from self.tail

    def joined(self) -> bytes:
        return SSE_HEAD + b"".join(self)


SSE_HEAD = head(b"200 OK", b"text/event-stream", None, b"Cache-Control: no-cache\r\n")
MODELS_RESP = full(
    b"200 OK",
    b"application/json",
    dumps(
        {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": CREATED, "owned_by": "mock"} for m in MODELS],
        }
    ),
)
HEALTH = full(b"200 OK", b"text/plain", b"ok")
NOT_FOUND = full(
    b"404 Not Found", b"application/json", b'{"error":{"message":"not found","type":"invalid_request_error"}}'
)
BAD_REQUEST = full(
    b"400 Bad Request",
    b"application/json",
    b'{"error":{"message":"bad request body","type":"invalid_request_error"}}',
)

_cache: dict[tuple[Any, ...], Any] = {}


def cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """Memoise pre-built responses (keys are bounded by model, chunk count and usage flag)."""
    value = _cache.get(key)
    if value is None:
        if len(_cache) > 4096:
            _cache.clear()
        value = _cache[key] = build()
    return value


def knobs_from(query: bytes) -> Knobs:
    if not query:
        return DEFAULTS
    knobs = dict(DEFAULTS)
    for name, value in parse_qsl(query.decode()):
        if name in knobs:
            knobs[name] = float(value)
    return knobs


# ---------------------------------------------------------------- protocol


class MockProtocol(asyncio.Protocol):
    """One client connection: parses pipelined requests and answers them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a delayed response is in flight: hold further requests
        self.closing = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self.process()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def process(self) -> None:
        buf = self.buf
        while buf and not self.busy and not self.closing:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = buf[:end].split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self.write(BAD_REQUEST)
                self.close()
                break
            length, chunked, keep_alive = 0, False, version == b"HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    value = value.strip().lower()
                    keep_alive = value != b"close" if keep_alive else value == b"keep-alive"
            start = end + 4
            if chunked:
                body, consumed = dechunk(buf, start)
                if body is None:
                    break
                buf = buf[consumed:]
            else:
                if len(buf) - start < length:
                    break
                body, buf = buf[start : start + length], buf[start + length :]
            self.handle(method, target, body)
            if not keep_alive:
                self.closing = True
                if not self.busy:
                    self.close()
        self.buf = buf

    def handle(self, method: bytes, target: bytes, body: bytes) -> None:
        path, _, query = target.partition(b"?")
        if path == b"/v1/chat/completions" and method == b"POST":
            self.chat(body, knobs_from(query))
        elif path == b"/v1/models" and method == b"GET":
            self.write(MODELS_RESP)
        elif path == b"/health":
            self.write(HEALTH)
        else:
            self.write(NOT_FOUND)

    def chat(self, body: bytes, knobs: Knobs) -> None:
        try:
            request = loads(body)
            model = str(request.get("model", "gpt-4o-mini"))
        except (ValueError, AttributeError):
            self.write(BAD_REQUEST)
            return
        n = int(knobs["chunks"])
        if request.get("stream"):
            with_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            key = (model, n, with_usage)
            events: StreamEvents = cached(("sse", *key), lambda: StreamEvents(model, n, with_usage))
            if knobs["ttft_ms"] or knobs["chunk_ms"] or n > INLINE_CHUNKS:
                self.later(self.stream(events, knobs["ttft_ms"], knobs["chunk_ms"]))
            else:
                self.write(cached(("sse-joined", *key), events.joined))
            return
        response: bytes = cached(("chat", model, n), lambda: chat_response(model, n))
        if knobs["latency_ms"]:
            self.later(self.delayed(response, knobs["latency_ms"]))
        else:
            self.write(response)

    # Delayed responses hold the connection until done, then parsing resumes.
    def later(self, coro: Coroutine[Any, Any, None]) -> None:
        self.busy = True
        task = asyncio.get_running_loop().create_task(coro)
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    def done(self) -> None:
        self.busy = False
        if self.closing:
            self.close()
        elif self.buf:
            self.process()

    async def delayed(self, response: bytes, ms: float) -> None:
        await sleep_ms(ms)
        if not self.closing:
            self.write(response)
        self.done()

    async def stream(self, events: StreamEvents, ttft_ms: float, chunk_ms: float) -> None:
        if ttft_ms:
            await sleep_ms(ttft_ms)
        pending = [SSE_HEAD]
        for index, event in enumerate(events):
            if chunk_ms and index:
                await sleep_ms(chunk_ms)
            if self.closing:
                break
            pending.append(event)
            if chunk_ms or len(pending) >= SLICE_EVENTS:
                self.write(b"".join(pending))
                pending.clear()
                await self.writable.wait()
        if pending and not self.closing:
            self.write(b"".join(pending))
        self.done()


_tasks: set[asyncio.Task[None]] = set()


def dechunk(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    """Decode a chunked request body starting at ``pos``: (body, end) or (None, 0) if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(buf[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)
            return (b"".join(parts), end + 2) if end >= 0 else (None, 0)
        if len(buf) < pos + size + 2:
            return None, 0
        parts.append(buf[pos : pos + size])
        pos += size + 2


# ---------------------------------------------------------------- precise delays


class Sleeper:
    """``await sleeper.sleep(seconds)`` with sub-millisecond precision: a thread waits for the
    earliest deadline (a timed lock wait: some 0.1 ms late at most on Linux) and wakes the sleeper
    through the loop. The thread is idle, and holds no GIL, between deadlines."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="mock sleeper", daemon=True).start()

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        with self._changed:
            heapq.heappush(self._due, (time.monotonic() + seconds, next(self._order), future))
            self._changed.notify()
        await future

    def _run(self) -> None:
        with self._changed:
            while True:
                if not self._due:
                    self._changed.wait()
                    continue
                left = self._due[0][0] - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                _, _, future = heapq.heappop(self._due)
                self._loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_sleeper: Sleeper | None = None


async def sleep_ms(ms: float) -> None:
    """Sleep ``ms`` milliseconds, precisely (see :class:`Sleeper`)."""
    global _sleeper
    if _sleeper is None:
        _sleeper = Sleeper(asyncio.get_running_loop())
    await _sleeper.sleep(ms / 1000)


# ---------------------------------------------------------------- server


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(MockProtocol, host, port, backlog=4096, reuse_address=True)
    print(f"mock upstream on http://{host}:{port} knobs={DEFAULTS} json={JSON_LIB}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "localhost", "::1"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("MOCK_PORT", 18000)))
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))
    with contextlib.suppress(BrokenPipeError):
        print("mock upstream stopped", flush=True)


if __name__ == "__main__":
    main()
