"""DirectWriter writes what uvicorn's own ``send`` writes, in fewer writes, on a real uvicorn cycle."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from tollway.relay.direct_writer import DirectWriter

DEFAULT_HEADERS = [(b"date", b"Mon, 30 Nov 2026 12:00:00 GMT")]
HEADERS = [(b"content-type", b"text/event-stream"), (b"x-oneapi-request-id", b"abc")]


class Transport:
    """Records each write; uvicorn's flow control only pauses and resumes reading on it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle(*, keep_alive: bool = True) -> tuple[RequestResponseCycle, Transport, list[str]]:
    transport = Transport()
    completed: list[str] = []
    scope: Any = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "http_version": "1.1"}
    logger = logging.getLogger("test")
    made = RequestResponseCycle(
        scope=scope,
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logger,
        access_logger=logger,
        access_log=False,
        default_headers=DEFAULT_HEADERS,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: completed.append("done"),
    )
    return made, transport, completed


def direct(*, keep_alive: bool = True) -> tuple[RequestResponseCycle, DirectWriter, Transport, list[str]]:
    """A fresh cycle and the writer for it."""
    made, transport, completed = cycle(keep_alive=keep_alive)
    writer = DirectWriter.of(made.send)
    assert writer is not None
    return made, writer, transport, completed


async def test_a_whole_answer_is_one_write_of_what_uvicorn_would_send() -> None:
    body = b'{"id":"x","object":"chat.completion"}'
    theirs, their_transport, _ = cycle()
    length = (b"content-length", str(len(body)).encode())
    await theirs.send({"type": "http.response.start", "status": 200, "headers": [*HEADERS, length]})
    await theirs.send({"type": "http.response.body", "body": body})

    ours, writer, transport, completed = direct()
    writer.whole(200, HEADERS, body)
    assert len(transport.writes) == 1
    assert _parsed(transport.writes[0]) == _parsed(b"".join(their_transport.writes))
    assert b"content-length: %d\r\n" % len(body) in transport.writes[0]
    assert ours.response_started and ours.response_complete and completed == ["done"]
    assert not transport.closed


async def test_a_stream_sends_its_headers_with_the_first_chunk_and_its_end_with_the_last() -> None:
    theirs, their_transport, _ = cycle()
    await theirs.send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    for data in (b"data: 1\n\n", b"data: 2\n\n"):
        await theirs.send({"type": "http.response.body", "body": data, "more_body": True})
    await theirs.send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    ours, writer, transport, completed = direct()
    await writer.start_stream(200, HEADERS, hold=True)
    assert transport.writes == []  # the headers wait for the first chunk
    await writer.chunk(b"data: 1\n\n")
    await writer.chunk(b"data: 2\n\n")
    assert not ours.response_complete and completed == []
    await writer.end_stream(b"data: [DONE]\n\n")
    assert len(transport.writes) == 3
    assert transport.writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert transport.writes[2] == b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    assert b"".join(transport.writes) == b"".join(their_transport.writes)
    assert ours.response_complete and completed == ["done"]


async def test_headers_not_held_leave_at_once_and_an_empty_end_is_the_last_chunk_only() -> None:
    _, writer, transport, _ = direct()
    await writer.start_stream(200, HEADERS, hold=False)
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
    await writer.end_stream()
    assert transport.writes[1] == b"0\r\n\r\n"


async def test_a_closing_connection_says_so_and_is_closed_after_the_answer() -> None:
    _, writer, transport, completed = direct(keep_alive=False)
    writer.whole(200, HEADERS, b"{}")
    assert b"connection: close\r\n" in transport.writes[0]
    assert transport.closed and completed == ["done"]


async def test_nothing_is_written_to_a_client_that_went_away() -> None:
    ours, writer, transport, completed = direct()
    await writer.start_stream(200, HEADERS, hold=True)
    ours.disconnected = True
    await writer.chunk(b"data: 1\n\n")
    await writer.end_stream(b"data: [DONE]\n\n")
    assert transport.writes == [] and completed == []


async def test_the_client_going_away_is_reported_once() -> None:
    ours, writer, _, _ = direct()
    calls: list[str] = []
    assert not writer.gone
    writer.on_disconnect(lambda: calls.append("gone"))
    ours.message_event.set()  # more body, or the answer completing: not a disconnect
    assert calls == []
    ours.disconnected = True  # what uvicorn's connection_lost does
    ours.message_event.set()
    ours.message_event.set()
    assert calls == ["gone"]

    assert writer.gone


async def test_a_header_that_would_break_the_header_block_is_dropped() -> None:
    _, writer, transport, _ = direct()
    bad = [(b"x-evil", b"a\r\nset-cookie: b=c"), (b"x-nul", b"a\0b"), (b"x-fine", b"ok")]
    writer.whole(200, bad, b"{}")
    head = transport.writes[0].split(b"\r\n\r\n")[0]
    assert b"x-fine: ok" in head and b"x-evil" not in head and b"set-cookie" not in head
    assert b"x-nul" not in head


async def test_a_finished_stream_leaves_no_reference_cycle() -> None:
    """Freed by reference counting alone: the garbage collector has nothing to do per stream."""
    ours, writer, _, _ = direct()
    calls: list[str] = []
    writer.on_disconnect(lambda: calls.append("gone"))
    await writer.start_stream(200, HEADERS, hold=True)
    await writer.end_stream(b"data: [DONE]\n\n")
    writer.detach()
    ours.disconnected = True
    ours.message_event.set()  # a late connection_lost: nobody is called any more
    assert calls == []
    gone = weakref.ref(ours)
    gc.disable()
    try:
        del ours, writer
        assert gone() is None
    finally:
        gc.enable()


async def test_only_a_fresh_uvicorn_cycle_is_written_directly() -> None:
    async def other_server_send(message: object) -> None: ...

    assert DirectWriter.of(other_server_send) is None
    started, _, _ = cycle()
    await started.send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    assert DirectWriter.of(started.send) is None  # uvicorn already began this answer


def _parsed(data: bytes) -> tuple[bytes, set[bytes], bytes]:
    """Status line, header lines (any order) and body of one HTTP/1.1 answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, set(lines), body
