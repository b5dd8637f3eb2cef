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

This module holds the connection (request writing, response parsing, timers) and the pool; the
response's body side (:class:`Response`, decoders, flow control) is :mod:`tollway.relay.http1_body`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final, cast
from urllib.parse import quote, urlsplit

import httptools

from tollway.relay.http1_body import HIGH_WATER, Response, decoder_for

CONNECT_TIMEOUT: Final = 30.0
IDLE_TTL: Final = 30.0  # seconds a pooled connection may stay unused
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
                decoder = decoder_for(value)
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
