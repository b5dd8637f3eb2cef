"""The relay's view of an HTTP request and of its answer, free of any web framework."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Incoming:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    client_ip: str
    request_id: str


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(slots=True)
class StreamReply:
    """A streamed answer. ``close`` must be awaited when the response ends, whatever happened:
    it settles the request even if the body was never iterated."""

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
