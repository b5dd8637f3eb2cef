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


def _never() -> bool:
    return False


@dataclass(slots=True)
class StreamReply:
    """A streamed answer. ``close`` must be awaited when the response ends, whatever happened:
    it settles the request even if the body was never iterated.

    ``ended()`` True means the rest of ``chunks`` is already at hand (the upstream's answer was
    received whole): reading on settles the request without waiting, so that the last bytes and
    the end of the response can go out in one write."""

    status: int
    headers: list[tuple[str, str]]
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    ended: Callable[[], bool] = _never
    at_hand: Callable[[], bool] = _never  # the first chunk can be read without waiting
