"""The stack's floor: a bare pass-through proxy on Tollway's own server and upstream client.

Served exactly as ``tollway serve`` serves (``tollway.server``: uvicorn, httptools, uvloop, one
SO_REUSEPORT socket per worker), forwarding with Tollway's HTTP/1.1 client and answering with its
writer (``DirectWriter``: the headers with the first chunk when it is at hand), but doing none of
the gateway's work: no key, no routing, no reservation, no usage, no log. What the benchmark
measures through it is what the stack itself adds, so that Tollway's figures can be read against it.

``python bench/passthrough.py --port P --upstream http://127.0.0.1:M --workers N``; ``GET /health``
answers 200, every other request is forwarded to the upstream with its path, and the answer is
streamed back chunk by chunk.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the workers import this module as bench.passthrough
    sys.path.insert(0, str(ROOT))

from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

from tollway.relay.direct_writer import DirectWriter  # noqa: E402
from tollway.relay.http1 import Http1Client  # noqa: E402

UPSTREAM_ENV = "PASSTHROUGH_UPSTREAM"
_OK = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}


def create() -> ASGIApp:
    """The app, for ``tollway.server.serve(app="bench.passthrough:create")``."""
    upstream = os.environ[UPSTREAM_ENV]
    client = Http1Client()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/health":
            await send(_OK)
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {"content-type": "application/json"}
        response = await client.request(scope["method"], upstream + scope["path"], headers, body or None)
        try:
            start = [(b"content-type", response.content_type.encode())]
            writer = DirectWriter.of(send)
            if writer is None:
                raise RuntimeError("the floor runs under tollway.server (uvicorn's httptools cycle)")
            await writer.start_stream(response.status, start, hold=response.at_hand)
            async for chunk in response.iter_chunks():
                await writer.chunk(chunk)
            await writer.end_stream()
        finally:
            response.release()

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin of the upstream, without /v1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ[UPSTREAM_ENV] = args.upstream

    from tollway.server import serve

    serve("127.0.0.1", args.port, args.workers, app="bench.passthrough:create")


if __name__ == "__main__":
    main()
