"""The relay's HTTP/1.1 client (tollway.relay.http1), against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import hashlib
import os
import socket
import ssl
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tollway.providers.base import UpstreamRequest
from tollway.relay import http1
from tollway.relay.http1 import Http1Client, ReadTimeout, UpstreamConnectionError
from tollway.relay.http1_body import HIGH_WATER, Response
from tollway.relay.upstream import UpstreamClient, UpstreamTimeout

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Request = tuple[str, dict[str, str], bytes]


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """(request line, lower-cased headers, body) of the next request; None at end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *rest = head.decode().split("\r\n")
    headers = dict(h.split(": ", 1) for h in rest if h)
    lowered = {k.lower(): v for k, v in headers.items()}
    body = await reader.readexactly(int(lowered.get("content-length", "0")))
    return line, lowered, body


def ok(body: bytes = b"hello", *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    return ("\r\n".join([*head, *extra]) + "\r\n\r\n").encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP RST."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawServer:
    """``asyncio.start_server`` running ``handler(server, reader, writer)`` per connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[Request] = []
        self.closed_by_client = 0  # connections on which the server read EOF
        self.stop = asyncio.Event()
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def next_request(self, reader: asyncio.StreamReader) -> Request | None:
        request = await read_request(reader)
        if request is None:
            self.closed_by_client += 1
        else:
            self.requests.append(request)
        return request

    async def wait_eof(self, reader: asyncio.StreamReader) -> None:
        """Wait until the client closes (or the server stops)."""
        eof = asyncio.ensure_future(reader.read())
        stop = asyncio.ensure_future(self.stop.wait())
        done, pending = await asyncio.wait({eof, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if eof in done:  # EOF or reset
            eof.exception()
            self.closed_by_client += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        await self._server.wait_closed()
        await asyncio.sleep(0)


def serve_forever(respond: Callable[[Request], bytes]) -> Handler:
    """A keep-alive handler answering every request of the connection with ``respond(request)``."""

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await server.next_request(reader)) is not None:
            writer.write(respond(request))
            await writer.drain()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(read_timeout=5)
    yield http
    await http.close()


async def get(client: Http1Client, url: str, method: str = "GET", body: bytes | None = None) -> Response:
    return await client.request(method, url, {"Accept": "*/*"}, body)


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ----- bodies -----------------------------------------------------------------------------------


async def test_content_length_body_and_request_head(client: Http1Client) -> None:
    async with RawServer(serve_forever(lambda r: ok(b"hello world", "X-Trace: A"))) as server:
        response = await client.request(
            "POST", server.url("/v1/x?q=1 2"), {"Content-Type": "application/json"}, b'{"a":1}'
        )
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert ("x-trace", "A") in response.headers
        assert ("content-length", "11") in response.headers
        assert await response.read() == b"hello world"
        response.release()
    line, headers, body = server.requests[0]
    assert line == "POST /v1/x?q=1%202 HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-length"] == "7"
    assert body == b'{"a":1}'
    assert "user-agent" not in headers and "accept-encoding" not in headers


async def test_chunked_body_then_reuse(client: Http1Client) -> None:
    def respond(request: Request) -> bytes:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
        return head + chunked(b"data: 1\n\n", b"data: 2\n\n", b"x" * 5000) + b"0\r\n\r\n"

    async with RawServer(serve_forever(respond)) as server:
        for _ in range(2):
            response = await get(client, server.url())
            assert response.content_type == "text/event-stream"
            assert await response.read() == b"data: 1\n\ndata: 2\n\n" + b"x" * 5000
            response.release()
        assert server.connections == 1


async def test_trailers_are_not_response_headers(client: Http1Client) -> None:
    def respond(request: Request) -> bytes:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + chunked(b"body") + b"0\r\nX-Checksum: 42\r\n\r\n"

    async with RawServer(serve_forever(respond)) as server:
        response = await get(client, server.url())
        assert await response.read() == b"body"
        assert [name for name, _ in response.headers] == ["transfer-encoding"]
        response.release()
        assert client.idle_count() == 1


async def test_close_delimited_body(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"the end")
        await writer.drain()
        writer.close()

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        assert await response.read() == b"until the end"
        response.release()
        assert client.idle_count() == 0


async def test_no_body_for_204_and_head(client: Http1Client) -> None:
    def respond(request: Request) -> bytes:
        if request[0].startswith("HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: application/json\r\n\r\n"
        if request[0].startswith("DELETE"):
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        return ok(b"after")

    async with RawServer(serve_forever(respond)) as server:
        response = await client.request("DELETE", server.url(), {})
        assert response.status == 204
        assert await response.read() == b""
        response.release()
        response = await get(client, server.url())  # the same connection, parser in step
        assert await response.read() == b"after"
        response.release()
        assert server.connections == 1

        response = await asyncio.wait_for(client.request("HEAD", server.url(), {}), 2)
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await asyncio.wait_for(response.read(), 2) == b""
        response.release()


async def test_informational_responses_are_skipped(client: Http1Client) -> None:
    respond = lambda r: b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final")  # noqa: E731
    async with RawServer(serve_forever(respond)) as server:
        response = await get(client, server.url())
        assert response.status == 200
        assert await response.read() == b"final"
        assert ("link", "</a>") not in response.headers
        response.release()
        assert client.idle_count() == 1


async def test_gzip_and_deflate_bodies_are_decoded(client: Http1Client) -> None:
    data = b'{"answer": "' + b"compressible " * 2000 + b'"}'
    encoded = {
        "/gzip": gzip.compress(data),
        "/deflate": zlib.compress(data),
        "/raw": zlib.compress(data)[2:-4],
    }

    def respond(request: Request) -> bytes:
        path = request[0].split()[1]
        encoding = "gzip" if path == "/gzip" else "deflate"
        return ok(encoded[path], f"Content-Encoding: {encoding}")

    async with RawServer(serve_forever(respond)) as server:
        for path in encoded:
            response = await get(client, server.url(path))
            assert await response.read() == data, path
            assert ("content-encoding", "gzip" if path == "/gzip" else "deflate") in response.headers
            response.release()

    async def stream(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        packed = gzip.compress(data)
        pieces = [packed[i : i + 100] for i in range(0, len(packed), 100)]
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        writer.write(head + chunked(*pieces) + b"0\r\n\r\n")
        await writer.drain()
        await server.wait_eof(reader)

    async with RawServer(stream) as server:
        response = await get(client, server.url())
        assert b"".join([c async for c in response.iter_chunks()]) == data
        response.release()


async def test_large_bodies_intact() -> None:
    blob = os.urandom(10 * 1024 * 1024)

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=blob)

    async def pieces(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(blob), 100_000):
            await resp.write(blob[i : i + 100_000])
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=hashlib.sha256(await request.read()).hexdigest().encode())

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_get("/whole", whole)
    app.router.add_get("/pieces", pieces)
    app.router.add_post("/echo", echo)
    async with aiohttp_server(app) as base:
        http = Http1Client(read_timeout=5)
        try:
            for path in ("/whole", "/pieces"):
                response = await get(http, base + path)
                body = await response.read()
                response.release()
                assert hashlib.sha256(body).digest() == hashlib.sha256(blob).digest(), path
            response = await get(http, base + "/echo", "POST", blob)
            assert await response.read() == hashlib.sha256(blob).hexdigest().encode()
            response.release()
            assert http.idle_count() == 1
        finally:
            await http.close()


def self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_https_keep_alive_and_verification(tmp_path: Path) -> None:
    cert_pem, key_pem = self_signed()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"secure " + request.host.encode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=server_ctx).start()
    http = Http1Client(read_timeout=5)
    try:
        with pytest.raises(UpstreamConnectionError):  # self-signed: refused by the default context
            await get(http, f"https://localhost:{port}/")
        http._ssl = ssl.create_default_context(cadata=cert_pem.decode())
        for _ in range(3):
            response = await get(http, f"https://localhost:{port}/")
            assert await response.read() == f"secure localhost:{port}".encode()
            response.release()
        assert http.idle_count() == 1
    finally:
        await http.close()
        await runner.cleanup()


# ----- streaming and flow control ---------------------------------------------------------------


async def test_stream_chunks_arrive_incrementally(client: Http1Client) -> None:
    go_on = asyncio.Event()

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"data: first\n\n"))
        await writer.drain()
        await go_on.wait()
        writer.write(chunked(b"data: second\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await server.wait_eof(reader)

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        chunks = response.iter_chunks()
        assert await asyncio.wait_for(chunks.__anext__(), 2) == b"data: first\n\n"
        go_on.set()
        assert [c async for c in chunks] == [b"data: second\n\n"]
        response.release()
        assert client.idle_count() == 1


async def test_slow_consumer_pauses_reading() -> None:
    rounds = 200  # 20 MB of 1000-byte chunks

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = chunked(b"e" * 1000) * 100
        for _ in range(rounds):
            writer.write(piece)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await server.wait_eof(reader)

    http = Http1Client(read_timeout=5)
    try:
        async with RawServer(handler) as server:
            response = await get(http, server.url())
            await asyncio.sleep(0.3)  # not reading: the upstream fills the buffers, then waits
            assert response._buffered < HIGH_WATER + 512 * 1024
            received = 0
            async for data in response.iter_chunks():
                received += len(data)
                assert len(data) < HIGH_WATER + 512 * 1024
            response.release()
            assert received == rounds * 100_000
            assert http.idle_count() == 1
    finally:
        await http.close()


async def test_read_limited_stops_at_the_limit(client: Http1Client) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(ok(big))
        await writer.drain()
        await server.wait_eof(reader)

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        assert await response.read_limited(1000) == big[:1000]
        assert await response.read_limited(10) == big[1000:1010]
        response.release()  # not read to the end: closed, not pooled
        assert client.idle_count() == 0
        await eventually(lambda: server.closed_by_client == 1)

    async with RawServer(serve_forever(lambda r: ok(b"short"))) as server:
        response = await get(client, server.url())
        assert await response.read_limited(1 << 20) == b"short"
        response.release()
        assert client.idle_count() == 1


# ----- keep-alive and the pool ------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(client: Http1Client) -> None:
    async with RawServer(serve_forever(lambda r: ok(r[2] or b"empty"))) as server:
        for i in range(10):
            response = await get(client, server.url(), "POST", b"n%d" % i)
            assert await response.read() == b"n%d" % i
            response.release()
        assert server.connections == 1
        assert client.idle_count() == 1


async def test_connection_close_header_is_honoured(client: Http1Client) -> None:
    async with RawServer(serve_forever(lambda r: ok(b"bye", "Connection: close"))) as server:
        response = await get(client, server.url())
        assert await response.read() == b"bye"
        response.release()
        assert client.idle_count() == 0


async def test_idle_connection_closed_by_server_is_dropped(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(ok(b"once"))  # keep-alive, yet closed right after
        await writer.drain()
        writer.close()

    async with RawServer(handler) as server:
        for _ in range(3):
            response = await get(client, server.url())
            assert await response.read() == b"once"
            response.release()
            await eventually(lambda: client.idle_count() == 0)  # the peer's close removed it
        assert server.connections == 3


async def test_keep_alive_race_is_retried_once_on_a_new_connection(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = server.connections
        await server.next_request(reader)
        writer.write(ok(b"answer %d" % index))
        await writer.drain()
        if index == 1:
            await server.next_request(reader)  # the reused connection: closed without an answer
            return
        await server.wait_eof(reader)

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        assert await response.read() == b"answer 1"
        response.release()
        response = await get(client, server.url(), "POST", b"payload")
        assert await response.read() == b"answer 2"
        response.release()
        assert server.connections == 2
        assert [r[2] for r in server.requests] == [b"", b"payload", b"payload"]


async def test_fresh_connection_failure_is_not_retried(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)

    async with RawServer(handler) as server:
        with pytest.raises(UpstreamConnectionError):
            await get(client, server.url(), "POST", b"once")
        assert server.connections == 1


async def test_idle_connections_expire(client: Http1Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "IDLE_TTL", 0.1)

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.next_request(reader) is not None:
            writer.write(ok())
            await writer.drain()

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        await response.read()
        response.release()
        assert client.idle_count() == 1
        await eventually(lambda: client.idle_count() == 0 and server.closed_by_client == 1)


async def test_close_closes_pooled_connections() -> None:
    async with RawServer(serve_forever(lambda r: ok())) as server:
        http = Http1Client()
        for _ in range(3):
            responses = await asyncio.gather(*(get(http, server.url()) for _ in range(3)))
            for response in responses:
                await response.read()
                response.release()
        assert http.idle_count() == 3
        await http.close()
        assert http.idle_count() == 0
        await eventually(lambda: server.closed_by_client == 3)
        with pytest.raises(UpstreamConnectionError):
            await get(http, server.url())


async def test_many_concurrent_requests() -> None:
    async def echo(request: web.Request) -> web.Response:
        await asyncio.sleep(0.001)
        return web.json_response({"n": int(request.query["n"]), "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with aiohttp_server(app) as base:
        http = Http1Client(read_timeout=5)
        try:

            async def one(n: int) -> None:
                response = await http.request(
                    "POST", f"{base}/echo?n={n}", {"Content-Type": "text/plain"}, b"body-%d" % n
                )
                assert response.status == 200
                assert response.content_type == "application/json"
                assert await response.read() == b'{"n": %d, "body": "body-%d"}' % (n, n)
                response.release()

            await asyncio.gather(*(one(n) for n in range(200)))
            pooled = http.idle_count()
            assert 0 < pooled <= 200
            await asyncio.gather(*(one(n) for n in range(pooled)))
            assert http.idle_count() == pooled  # served by the pool, no new connection
        finally:
            await http.close()


# ----- failures, timeouts, cancellation -------------------------------------------------------------


async def test_reset_after_headers_raises(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)

    async with RawServer(handler) as server:
        response = await get(client, server.url())
        assert response.status == 200
        with pytest.raises(UpstreamConnectionError):
            await response.read()
        response.release()
        assert client.idle_count() == 0


async def test_refused_and_invalid_answers_raise(client: Http1Client) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(UpstreamConnectionError) as refused:
        await get(client, f"http://127.0.0.1:{port}/")
    assert isinstance(refused.value, OSError)

    async def garbage(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await server.wait_eof(reader)

    async with RawServer(garbage) as server:
        with pytest.raises(UpstreamConnectionError, match="invalid HTTP response"):
            await get(client, server.url())

    with pytest.raises(UpstreamConnectionError):
        await get(client, "ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="newline"):
        await client.request("GET", f"http://127.0.0.1:{port}/", {"X-Bad": "a\r\nInjected: 1"})


async def test_headers_timeout_raises_upstream_timeout() -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        await server.wait_eof(reader)

    upstream = UpstreamClient(relay_timeout=0.2, streaming_timeout=5)
    await upstream.start()
    try:
        async with RawServer(handler) as server:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeout):
                await upstream.send(UpstreamRequest("POST", server.url(), {}, b"{}"))
            assert 0.15 < time.monotonic() - started < 2
            await eventually(lambda: server.closed_by_client == 1)  # the connection was closed
    finally:
        await upstream.stop()


async def test_idle_read_timeout_mid_stream() -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n"))
        for _ in range(3):  # bytes keep the stream alive...
            await asyncio.sleep(0.1)
            writer.write(chunked(b"data: x\n\n"))
        await server.wait_eof(reader)  # ...then silence

    http = Http1Client(read_timeout=0.25)
    try:
        async with RawServer(handler) as server:
            response = await get(http, server.url())
            received: list[bytes] = []
            started = time.monotonic()
            with pytest.raises(TimeoutError) as timeout:
                async for data in response.iter_chunks():
                    received.append(data)
            assert isinstance(timeout.value, ReadTimeout)
            assert b"".join(received) == b"data: 1\n\n" + b"data: x\n\n" * 3
            assert 0.5 < time.monotonic() - started < 2
            response.release()
            await eventually(lambda: server.closed_by_client == 1)
    finally:
        await http.close()


async def test_cancellation_closes_the_connection(client: Http1Client) -> None:
    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await server.next_request(reader) is None:
            return
        if server.connections == 2:  # the second connection answers its headers only
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await server.wait_eof(reader)

    async with RawServer(handler) as server:
        waiting_headers = asyncio.create_task(get(client, server.url()))
        await eventually(lambda: len(server.requests) == 1)
        waiting_headers.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting_headers
        await eventually(lambda: server.closed_by_client == 1)

        response = await get(client, server.url())
        reading = asyncio.create_task(response.read())
        await asyncio.sleep(0.05)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        response.release()
        await eventually(lambda: server.closed_by_client == 2)
        assert client.idle_count() == 0


# ----- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    """``async with aiohttp_server(app) as base_url``: an aiohttp.web app on 127.0.0.1."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock, backlog=512).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
