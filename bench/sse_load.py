"""Closed-loop SSE load client: time to first token and total time per stream.

``-c`` keep-alive connections each send a streaming chat request, read the whole chunked SSE
response, then send the next, until ``--requests`` or ``--duration`` is reached (both bound the
run). TTFT is the time from writing the request to the first received bytes holding ``data:``
(the first SSE event, not just the headers). A stream counts as an error unless it is a 200 that
ends with ``data: [DONE]``.

``--long`` sends one request and reads one (long) stream, counting its events. With ``--stall S``
the reader stops reading for S seconds after the first ``STALL_AFTER`` events, so a gateway that
does not apply backpressure would pull the rest of the stream into its memory meanwhile; the driver
samples the gateway's memory throughout.

Prints one line ``SSEJSON {...}`` (times in µs). Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import cast
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STALL_AFTER = 1_000  # events read before a --stall


def request_bytes(url: str, model: str, key: str, usage: bool) -> tuple[str, int, bytes]:
    """Host, port and the raw HTTP request for one streaming chat completion."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"refusing a non-loopback target: {url}")
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/v1/chat/completions") + (f"?{parts.query}" if parts.query else "")
    payload: dict[str, object] = {
        "model": model,
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Write a short haiku about load balancers and the sea."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
    }
    if usage:
        payload["stream_options"] = {"include_usage": True}
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {key}\r\n" if key else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body


class Conn(asyncio.Protocol):
    """One keep-alive connection; :meth:`run` performs one request."""

    def __init__(self, stall: float = 0.0) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.waiter: asyncio.Future[float | None] | None = None
        self.stall = stall  # seconds to stop reading once STALL_AFTER events arrived (once)
        self.reset()

    def reset(self) -> None:
        self.head: bytes | None = None
        self.buf = b""
        self.tail = b""  # the last bytes seen: the end marker, and "data:" split across reads
        self.status = b""
        self.chunked = False
        self.left = -1
        self.first: float | None = None
        self.events = 0
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.head is None:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = self.buf[:end].lower()
            self.status = self.head[9:12]
            data, self.buf = self.buf[end + 4 :], b""
            self.chunked = b"transfer-encoding: chunked" in self.head
            at = self.head.find(b"content-length:")
            self.left = int(self.head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else -1
        self.bytes += len(data)
        found = (self.tail[-4:] + data).count(b"data:")
        if found and self.first is None:
            self.first = now
        self.events += found
        self.tail = (self.tail + data[-64:])[-64:]
        if self.stall and self.events >= STALL_AFTER and self.transport is not None:
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.stall, self.resume)
            self.stall = 0.0
        if self.left >= 0:
            self.left -= len(data)
            finished = self.left <= 0
        else:
            finished = self.chunked and self.tail.endswith(b"\r\n0\r\n\r\n")
        if finished and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(now)

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    async def run(self, request: bytes) -> tuple[float, float, bool]:
        """(ttft, total, ok) in seconds for one request on this connection."""
        assert self.transport is not None
        self.reset()
        self.waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        self.transport.write(request)
        end = await self.waiter
        end = time.perf_counter() if end is None else end
        ok = self.status == b"200" and b"data: [DONE]" in self.tail and self.first is not None
        return (self.first or end) - started, end - started, ok

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def micros(seconds: float) -> int:
    return int(seconds * 1e6)


async def load(args: argparse.Namespace) -> dict[str, object]:
    """The closed loop: ``concurrency`` workers until the request budget or the deadline ends."""
    host, port, request = request_bytes(args.url, args.model, args.key, not args.no_usage)
    loop = asyncio.get_running_loop()
    ttfts: list[float] = []
    totals: list[float] = []
    errors = non2xx = 0
    budget = args.requests
    deadline = time.perf_counter() + args.duration

    async def worker() -> None:
        nonlocal errors, non2xx, budget
        conn: Conn | None = None
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            try:
                if conn is None or conn.closed:
                    _, conn = await loop.create_connection(Conn, host, port)
                ttft, total, ok = await asyncio.wait_for(conn.run(request), args.timeout)
            except (OSError, TimeoutError):
                ok = False
            if ok:
                ttfts.append(ttft)
                totals.append(total)
            else:
                errors += 1
                if conn is not None:
                    non2xx += bool(conn.status) and not conn.status.startswith(b"2")
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    return {
        "requests": len(totals),
        "errors": errors,
        "non2xx": non2xx,
        "duration_us": micros(wall),
        "rps": round(len(totals) / wall, 1),
        "ttft_p50_us": micros(percentile(ttfts, 50)),
        "ttft_p90_us": micros(percentile(ttfts, 90)),
        "ttft_p99_us": micros(percentile(ttfts, 99)),
        "p50_us": micros(percentile(totals, 50)),
        "p90_us": micros(percentile(totals, 90)),
        "p99_us": micros(percentile(totals, 99)),
    }


async def long_stream(args: argparse.Namespace) -> dict[str, object]:
    """One stream, read to the end: its events, bytes, TTFT and duration."""
    host, port, request = request_bytes(args.url, args.model, args.key, not args.no_usage)
    _, conn = await asyncio.get_running_loop().create_connection(lambda: Conn(args.stall), host, port)
    try:
        ttft, total, ok = await asyncio.wait_for(conn.run(request), args.timeout)
    except (OSError, TimeoutError):
        ttft, total, ok = 0.0, float(args.timeout), False
    finally:
        conn.close()
    return {
        "requests": 1 if ok else 0,
        "errors": 0 if ok else 1,
        "non2xx": int(bool(conn.status) and not conn.status.startswith(b"2")),
        "events": conn.events,
        "bytes": conn.bytes,
        "ttft_us": micros(ttft),
        "duration_us": micros(total),
        "events_per_s": round(conn.events / total, 1) if total else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:3000/v1/chat/completions")
    parser.add_argument("-k", "--key", default="")
    parser.add_argument("-m", "--model", default="gpt-4o-mini")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds (upper bound)")
    parser.add_argument("-n", "--requests", type=int, default=1_000_000, help="upper bound on requests")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--no-usage", action="store_true", help="omit stream_options.include_usage")
    parser.add_argument("--long", action="store_true", help="read one stream and count its events")
    parser.add_argument("--stall", type=float, default=0.0, help="--long: stop reading this long (s)")
    args = parser.parse_args()
    run = long_stream if args.long else load
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print("SSEJSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
