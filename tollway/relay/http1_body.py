"""The body side of :mod:`tollway.relay.http1`: an upstream :class:`Response` and its decoders.

A response's bytes arrive from its connection's parser (``_feed``, then ``_done`` or ``_error``)
and are handed to one consumer (``read``, ``read_limited`` or ``iter_chunks``). Reading is flow
controlled: past ``HIGH_WATER`` undelivered bytes the connection stops reading from the socket, and
it resumes below ``LOW_WATER``.
"""

from __future__ import annotations

import importlib
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

if TYPE_CHECKING:
    import asyncio

    from tollway.relay.http1 import _Connection

HIGH_WATER: Final = 256 * 1024  # undelivered body bytes above which reading pauses
LOW_WATER: Final = 64 * 1024  # ... and below which it resumes


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Zlib:
    """gzip or zlib-wrapped deflate (detected from the header); raw deflate as a fallback."""

    __slots__ = ("_obj", "_raw_fallback")

    def __init__(self, encoding: str) -> None:
        self._obj = zlib.decompressobj(zlib.MAX_WBITS | 32)
        self._raw_fallback = encoding == "deflate"

    def decompress(self, data: bytes) -> bytes:
        try:
            out = self._obj.decompress(data)
        except zlib.error:
            if not self._raw_fallback:
                raise
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._obj.decompress(data)
        self._raw_fallback = False
        return out


class _Brotli:
    __slots__ = ("_obj",)

    def __init__(self) -> None:
        self._obj = _brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        process = getattr(self._obj, "process", None) or self._obj.decompress
        return cast(bytes, process(data))


try:
    _brotli: Any = importlib.import_module("brotli")
except ImportError:  # br bodies are then passed through as they are
    _brotli = None


def decoder_for(encoding: str) -> Decoder | None:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Zlib(encoding)
    if encoding == "br" and _brotli is not None:
        return _Brotli()
    return None  # identity, or an encoding we pass through as it is


class Response:
    """An upstream answer: ``status``, ``headers`` (as received, names lower-cased) and the body,
    decoded from gzip/deflate (br when the ``brotli`` module is installed), read once."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_released",
        "_waiter",
        "content_type",
        "headers",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        status: int,
        headers: list[tuple[str, str]],
        content_type: str,
        decoder: Decoder | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_type = content_type  # media type only, lower-case (like aiohttp's)
        self._conn = conn
        self._decoder = decoder
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False  # the whole body arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type}>"

    # ----- reading (the consumer side) ----------------------------------------------------------

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        if self._done and self._error is None and len(self._chunks) <= 1:
            return self._take_all() if self._chunks else b""
        parts: list[bytes] = []
        while True:
            if self._chunks:
                parts.append(self._take_all())
            elif self._error is not None:
                raise self._error
            elif self._done:
                return b"".join(parts)
            else:
                await self._wait()

    async def read_limited(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body, then stop reading."""
        parts: list[bytes] = []
        left = limit
        while left > 0:
            if self._chunks:
                data = self._take_one(left)
                parts.append(data)
                left -= len(data)
            elif self._error is not None:
                raise self._error
            elif self._done:
                break
            else:
                await self._wait()
        return b"".join(parts)

    @property
    def at_hand(self) -> bool:
        """The next read returns at once (bytes are buffered, or the body is over)."""
        return bool(self._chunks) or self._done

    @property
    def ended(self) -> bool:
        """Every byte of the body was received and handed out: the next read returns at once."""
        return self._done and not self._chunks

    def iter_chunks(self) -> Response:
        """``async for data in response.iter_chunks()``: the body as it arrives (all the bytes
        buffered at each step, joined)."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            await self._wait()
        return self._take_all()

    def release(self) -> None:
        """Done with the response: its connection goes back to the pool when the body was read to
        the end and the connection is keep-alive, else it is closed."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        if self._done and self._error is None and conn.keep_alive and conn.response is self:
            conn.response = None
            conn.client.put_back(conn)
        else:
            conn.abort()

    def close(self) -> None:
        """Close the connection (unless the response was already released)."""
        if not self._released:
            self._released = True
            self._conn.abort()

    # ----- internals ------------------------------------------------------------------------------

    async def _wait(self) -> None:
        waiter = self._waiter = self._conn.loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled mid-response: the connection cannot be reused
            self._waiter = None
            self.close()
            raise

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            data = self._decoder.decompress(data)
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()

    def _take_all(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._conn.paused:
            self._conn.resume()
        return data

    def _take_one(self, limit: int) -> bytes:
        data = self._chunks.popleft()
        if len(data) > limit:
            self._chunks.appendleft(data[limit:])
            data = data[:limit]
        self._buffered -= len(data)
        if self._conn.paused and self._buffered <= LOW_WATER:
            self._conn.resume()
        return data
