"""Relay answers written straight to uvicorn's transport: each answer in as few writes as it allows.

Through ASGI, uvicorn writes the status line and headers of every answer in one ``write`` and each
body message in another: a non-stream answer costs two system calls and usually two segments, and
the client wakes twice; a stream's headers leave before its first chunk, although the upstream
sent both together. For the relay's hot routes that is a measurable share of the added latency
(the benchmark's time to first token), so :class:`DirectWriter` does the writing itself on the
request's uvicorn cycle: headers with the body (or the first chunk) in one write, chunk framing,
the end of a stream with its last bytes, and the cycle's bookkeeping that uvicorn's own ``send``
does (started, complete, keep-alive, flow control, a client that went away). It also tells the
caller at once when the client goes away, without a task waiting on ``receive`` for it.

It relies on uvicorn's httptools cycle (``RequestResponseCycle``), which is not a public API, so
:meth:`DirectWriter.of` checks the cycle it is given and declines anything else; the caller then
uses plain ASGI messages. The tests run the relay under real uvicorn and assert this path is taken,
so an uvicorn release that changes the cycle fails the build rather than silently slowing down.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http import httptools_impl

_CYCLE = httptools_impl.RequestResponseCycle
_STATUS_LINE: dict[int, bytes] = httptools_impl.STATUS_LINE
_CYCLE_FIELDS = ("transport", "flow", "keep_alive", "disconnected", "response_started", "on_response")
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_UNSAFE = re.compile(rb"[\r\n\0]")  # would split or end the header block: such a header is dropped


class DirectWriter:
    """Writes one answer on a uvicorn httptools cycle; see the module docstring."""

    __slots__ = ("_cycle", "_head")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._head = b""  # a stream's status line and headers, until they leave with its first bytes

    @classmethod
    def of(cls, send: Any) -> DirectWriter | None:
        """The writer for the cycle behind uvicorn's ``send``, or None (another server, or a
        cycle that already started answering)."""
        cycle = getattr(send, "__self__", None)
        if type(cycle) is not _CYCLE or cycle.response_started:
            return None
        if not all(hasattr(cycle, name) for name in _CYCLE_FIELDS):
            return None
        return cls(cycle)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) if the client goes away before the answer is complete.

        uvicorn marks the cycle disconnected and sets its message event when the connection is
        lost; the event is replaced by one that also makes this call. A client that is already
        gone is not reported: see :attr:`gone`."""
        self._cycle.message_event = _DisconnectSignal(self._cycle, callback)

    def detach(self) -> None:
        """The answer is over, however it ended: forget the callback. The signal and the cycle
        refer to each other, so without this every stream would leave a reference cycle (the
        cycle, its task, their closures: some 16 objects) for the garbage collector."""
        signal = self._cycle.message_event
        if isinstance(signal, _DisconnectSignal):
            signal.forget()

    @property
    def gone(self) -> bool:
        """The client went away (before the answer was complete)."""
        return bool(self._cycle.disconnected)

    def _status_and_headers(self, status: int, headers: list[tuple[bytes, bytes]], framing: bytes) -> bytes:
        cycle = self._cycle
        parts = [_STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            if _UNSAFE.search(name) or _UNSAFE.search(value):
                continue
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(_CLOSE)
        parts += (framing, b"\r\n")
        return b"".join(parts)

    def whole(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A complete answer with a known length, in one write."""
        length = b"content-length: %d\r\n" % len(body)
        cycle = self._cycle
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        if cycle.disconnected:
            return  # as uvicorn does: nothing more is written, nor is the cycle completed
        cycle.transport.write(self._status_and_headers(status, headers, length) + body)
        self._complete()

    async def start_stream(self, status: int, headers: list[tuple[bytes, bytes]], *, hold: bool) -> None:
        """Begin a chunked answer. With ``hold`` the headers wait for the first chunk (it is at
        hand), so that both leave in one write; otherwise they are written now."""
        cycle = self._cycle
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        head = self._status_and_headers(status, headers, _CHUNKED)
        if hold:
            self._head = head
        elif not cycle.disconnected:
            cycle.transport.write(head)

    async def chunk(self, data: bytes) -> None:
        """One chunk of the stream, once the client's socket has room (uvicorn's flow control)."""
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return  # as uvicorn does: the watcher of the disconnect ends the stream
        framed = b"%x\r\n%b\r\n" % (len(data), data)
        if self._head:
            framed, self._head = self._head + framed, b""
        cycle.transport.write(framed)

    async def end_stream(self, last: bytes = b"") -> None:
        """The stream's last bytes and its end, in one write; the cycle is then complete."""
        cycle = self._cycle
        if cycle.disconnected:
            return
        data = (b"%x\r\n%b\r\n" % (len(last), last) if last else b"") + _LAST_CHUNK
        if self._head:
            data, self._head = self._head + data, b""
        cycle.transport.write(data)
        self._complete()

    def _complete(self) -> None:
        """What uvicorn's ``send`` does after the last body message."""
        cycle = self._cycle
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


class _DisconnectSignal(asyncio.Event):
    """The cycle's message event, which also calls back when it is set for a lost connection."""

    def __init__(self, cycle: Any, callback: Callable[[], None]) -> None:
        super().__init__()
        self._cycle: Any = cycle
        self._callback: Callable[[], None] | None = callback

    def set(self) -> None:
        super().set()
        if self._callback is not None and self._cycle is not None and self._cycle.disconnected:
            callback, self._callback = self._callback, None
            callback()

    def forget(self) -> None:
        self._callback = self._cycle = None
