"""A lean HTTP/1.1 client for the relay's hot path: asyncio protocols, httptools' C response parser
and a keep-alive pool per (scheme, host, port).

One :class:`Http1Client` per process. :meth:`Http1Client.request` sends a request and returns a
:class:`Response` as soon as its headers arrived; the caller reads the body (``read``,
``read_limited`` or ``iter_chunks``), then calls ``release()`` (the connection goes back to the pool
when it can serve another request) or ``close()``.

Timeouts: connecting (``connect_timeout``), the response headers (``headers_timeout`` per request,
:class:`HeadersTimeout`) and every wait for upstream bytes (``read_timeout``, :class:`ReadTimeout`),
all checked by one timer per request. Failures to connect or broken answers raise
:class:`UpstreamConnectionError`, an ``OSError``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import re
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, Protocol, cast
from urllib.parse import quote, urlsplit

import httptools

CONNECT_TIMEOUT: Final = 30.0
IDLE_TTL: Final = 30.0  # seconds a pooled connection may stay unused
HIGH_WATER: Final = 256 * 1024  # undelivered body bytes above which reading pauses
LOW_WATER: Final = 64 * 1024  # ... and below which it resumes
_EARLY: Final = 0.001  # timers may fire up to the clock's resolution early
_NO_BODY_STATUS: Final = frozenset({204, 304})
_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")  # spaces, controls, non-ASCII: percent-encode
_TARGET_SAFE: Final = "/?#[]@!$&'()*+,;=%:~-._"

_Key = tuple[str, str, int]  # (scheme, host, port)


class UpstreamConnectionError(OSError):
    """Connecting failed, the connection broke before the response was complete, or the answer
    was not valid HTTP/1.1."""


class ConnectTimeout(UpstreamConnectionError, TimeoutError):
    """No connection within the connect timeout."""


class HeadersTimeout(TimeoutError):
    """The response headers did not arrive within the request's ``headers_timeout``."""


class ReadTimeout(TimeoutError):
    """The upstream sent nothing for ``read_timeout`` seconds while the response was awaited."""


class _Decoder(Protocol):
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


def _decoder_for(encoding: str) -> _Decoder | None:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Zlib(encoding)
    if encoding == "br" and _brotli is not None:
        return _Brotli()
    return None  # identity, or an encoding we pass through as it is


@lru_cache(maxsize=1024)
def _parse_url(url: str) -> tuple[_Key, str, str, str | None]:
    """(pool key, request target, Host header, Authorization from userinfo) of an absolute URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamConnectionError(f"invalid upstream URL: {exc}") from None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host:
        raise UpstreamConnectionError(f"unsupported upstream URL: {url!r}")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    default = 443 if scheme == "https" else 80
    port = port or default
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header = f"{host_header}:{port}"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    if _UNSAFE_TARGET.search(target):
        target = quote(target, safe=_TARGET_SAFE)
    auth = None
    if parts.username is not None:
        userinfo = f"{parts.username}:{parts.password or ''}".encode()
        auth = "Basic " + base64.b64encode(userinfo).decode("ascii")
    return (scheme, host, port), target, host_header, auth


def _request_head(
    method: str,
    target: str,
    host: str,
    headers: Mapping[str, str],
    body: bytes | None,
    auth: str | None,
) -> bytes:
    """The request line and headers: the caller's headers as given, plus Host and Content-Length."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    count = len(headers)
    if fields.count("\n") != count or fields.count("\r") != count:
        raise ValueError("a header name or value contains a newline or carriage return")
    extra = ""
    if "Host" not in headers and "host" not in headers:
        extra = f"Host: {host}\r\n"
    if body is not None:
        extra += f"Content-Length: {len(body)}\r\n"
    elif method in ("POST", "PUT", "PATCH"):
        extra += "Content-Length: 0\r\n"
    if auth is not None and "Authorization" not in headers and "authorization" not in headers:
        extra += f"Authorization: {auth}\r\n"
    return f"{method} {target} HTTP/1.1\r\n{extra}{fields}\r\n".encode()


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
        decoder: _Decoder | None,
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


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: writes requests, parses responses with httptools."""

    __slots__ = (
        "_head_only",
        "_headers",
        "_headers_deadline",
        "_informational",
        "_last_data",
        "_parser",
        "_read_timeout",
        "_timer",
        "_until_close",
        "_waiter",
        "active",
        "client",
        "got_bytes",
        "idle_since",
        "in_pool",
        "keep_alive",
        "key",
        "loop",
        "paused",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, client: Http1Client, key: _Key, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None  # of the request in flight, once its headers arrived
        self.active = False  # a request is in flight and its response is not complete
        self.reused = False  # served a request before
        self.got_bytes = False  # a byte of the current response arrived
        self.keep_alive = False
        self.in_pool = False
        self.idle_since = 0.0
        self.paused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._head_only = False
        self._informational = False
        self._until_close = False
        self._timer: asyncio.TimerHandle | None = None
        self._headers_deadline: float | None = None
        self._read_timeout: float | None = None
        self._last_data = 0.0

    # ----- sending ----------------------------------------------------------------------------------

    async def send(
        self,
        head: bytes,
        body: bytes | None,
        *,
        head_only: bool,
        headers_deadline: float | None,
        read_timeout: float | None,
    ) -> Response:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise UpstreamConnectionError("the pooled connection was closed")
        self.active, self.got_bytes, self.keep_alive = True, False, False
        self.response, self._head_only = None, head_only
        self._headers_deadline, self._read_timeout = headers_deadline, read_timeout
        waiter: asyncio.Future[Response] = self.loop.create_future()
        self._waiter = waiter
        now = self._last_data = self.loop.time()
        when = headers_deadline
        if read_timeout is not None and (when is None or now + read_timeout < when):
            when = now + read_timeout
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)
        if body is None:
            transport.write(head)
        elif len(body) <= HIGH_WATER:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        try:
            return await waiter
        except BaseException:  # failed, timed out or cancelled: never reuse the connection
            self.abort()
            raise
        finally:
            self._waiter = None

    def abort(self) -> None:
        self.active = self.keep_alive = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.active = self.keep_alive = False
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        """Too many undelivered body bytes: stop reading until the consumer catches up."""
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        self._last_data = self.loop.time()  # the wait for upstream bytes starts again
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # ----- timeouts ---------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if not self.active:
            return
        now = self.loop.time()
        when = None
        deadline = self._headers_deadline
        if deadline is not None and self.response is None:
            if now >= deadline - _EARLY:
                self._fail(HeadersTimeout("the upstream sent no response headers in time"))
                return
            when = deadline
        if self._read_timeout is not None:
            if self.paused:  # the consumer is behind: not a wait for the upstream
                self._last_data = now
            idle_end = self._last_data + self._read_timeout
            if now >= idle_end - _EARLY:
                self._fail(ReadTimeout(f"the upstream sent nothing for {self._read_timeout:g} s"))
                return
            if when is None or idle_end < when:
                when = idle_end
        if when is not None:
            self._timer = self.loop.call_at(max(when, now + _EARLY), self._on_timer)

    # ----- failure and completion -----------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self.response is not None and not self.response._done:
            self.response._error = exc
            self.response._wake()
        self.abort()

    def _complete(self) -> None:
        self.active = False
        self._cancel_timer()
        response = self.response
        if response is not None:
            response._done = True
            response._wake()
        if self.paused:
            self.resume()

    # ----- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.active:  # bytes nobody asked for: the connection is out of step
            self.abort()
            return
        self.got_bytes = True
        self._last_data = self.loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            error = UpstreamConnectionError(f"invalid HTTP response from the upstream: {cause or exc}")
            error.__cause__ = cause
            self._fail(error)

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.in_pool:
            self.client.discard(self)
        if not self.active:
            return
        if self.response is not None and self._until_close and (exc is None or isinstance(exc, ssl.SSLError)):
            self.keep_alive = False
            self._complete()  # a body delimited by the end of the connection
            return
        error = UpstreamConnectionError("the upstream closed the connection before the response was complete")
        error.__cause__ = exc
        self._fail(error)

    # ----- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        if not self.active:  # more bytes after the complete response: out of step, do not reuse
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        if not self.active:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: informational, the real answer follows
            self._informational = True
            return
        headers = self._headers
        self._headers = []  # trailers of a chunked body, if any, land here: not in the response
        content_type = "application/octet-stream"
        decoder = None
        framed = False
        for name, value in headers:
            if name == "content-type":
                content_type = value.partition(";")[0].strip().lower()
            elif name == "content-encoding":
                decoder = _decoder_for(value)
            elif name == "content-length" or name == "transfer-encoding":
                framed = True
        no_body = self._head_only or status in _NO_BODY_STATUS
        self._until_close = not framed and not no_body
        response = self.response = Response(self, status, headers, content_type, decoder)
        if self._head_only:  # llhttp does not know the request was HEAD: stop here, do not reuse
            self._complete()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None or response._done:
            return
        response._feed(body)
        if response._buffered > HIGH_WATER and not self.paused:
            self.pause()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        response = self.response
        if response is None or response._done:
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()


class Http1Client:
    """A per-process HTTP/1.1 client with a keep-alive pool per (scheme, host, port).

    No redirects are followed and no header is added besides Host, Content-Length (and
    Authorization from a URL's userinfo)."""

    def __init__(
        self, *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float | None = None
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[_Key, list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        headers_timeout: float | None = None,
    ) -> Response:
        """Send a request; returns once the response headers arrived. The caller reads the body
        and must ``release()`` (or ``close()``) the response."""
        if self._closed:
            raise UpstreamConnectionError("the HTTP client is closed")
        key, target, host, auth = _parse_url(url)
        head = _request_head(method, target, host, headers, body, auth)
        loop = asyncio.get_running_loop()
        deadline = None if headers_timeout is None else loop.time() + headers_timeout
        head_only = method == "HEAD"
        conn = self._take_idle(key, loop.time())
        if conn is not None:
            try:
                return await conn.send(
                    head, body, head_only=head_only, headers_deadline=deadline, read_timeout=self.read_timeout
                )
            except UpstreamConnectionError:
                if conn.got_bytes:
                    raise
                # The keep-alive race: the upstream closed the idle connection as we reused it.
        conn = await self._connect(key, loop, deadline)
        return await conn.send(
            head, body, head_only=head_only, headers_deadline=deadline, read_timeout=self.read_timeout
        )

    async def close(self) -> None:
        """Close every pooled connection; responses in flight are closed when released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.in_pool = False
                conn.close()
        await asyncio.sleep(0)  # let the transports report connection_lost

    def idle_count(self, key: _Key | None = None) -> int:
        """Pooled connections, of one (scheme, host, port) or all."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(conns) for conns in self._idle.values())

    # ----- the pool ---------------------------------------------------------------------------------

    def _take_idle(self, key: _Key, now: float) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            conn.in_pool = False
            transport = conn.transport
            if transport is None or transport.is_closing() or now - conn.idle_since > IDLE_TTL:
                conn.close()
                continue
            return conn
        return None

    def put_back(self, conn: _Connection) -> None:
        """A connection whose response was read to the end: pool it (or close it)."""
        transport = conn.transport
        if self._closed or transport is None or transport.is_closing():
            conn.close()
            return
        conn.reused = True
        conn.idle_since = conn.loop.time()
        conn.in_pool = True
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_at(conn.idle_since + IDLE_TTL, self._sweep, conn.loop)

    def discard(self, conn: _Connection) -> None:
        """Drop a pooled connection the upstream closed."""
        conn.in_pool = False
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the connections idle for more than IDLE_TTL; re-armed for the next oldest one."""
        self._sweeper = None
        now = loop.time()
        oldest = None
        for key in list(self._idle):
            idle = self._idle[key]
            expired = 0
            while expired < len(idle) and now - idle[expired].idle_since >= IDLE_TTL - _EARLY:
                idle[expired].in_pool = False
                idle[expired].close()
                expired += 1
            del idle[:expired]
            if not idle:
                del self._idle[key]
            elif oldest is None or idle[0].idle_since < oldest:
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + IDLE_TTL, self._sweep, loop)

    async def _connect(
        self, key: _Key, loop: asyncio.AbstractEventLoop, deadline: float | None
    ) -> _Connection:
        scheme, host, port = key
        limit, headers_first = self.connect_timeout, False
        if deadline is not None and deadline - loop.time() < limit:
            limit, headers_first = max(deadline - loop.time(), 0.0), True
        tls: dict[str, Any] = {}
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = {"ssl": self._ssl, "server_hostname": host}
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self, key, loop), host, port, **tls
                )
        except TimeoutError:
            if headers_first:
                raise HeadersTimeout("the upstream sent no response headers in time") from None
            raise ConnectTimeout(f"could not connect to {host}:{port} within {limit:g} s") from None
        except OSError as exc:
            raise UpstreamConnectionError(f"could not connect to {host}:{port}: {exc}") from exc
        return conn
