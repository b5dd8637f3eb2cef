"""Runs the ASGI app under uvicorn (httptools, uvloop), one process per worker.

uvicorn was measured against granian (ASGI and RSGI interfaces) on the project's benchmark: as fast
for the relay, faster at one connection, and unlike granian's RSGI streams it applies backpressure
to a client that reads slowly (docs/adr/0005-relay-server-and-upstream-client.md).

With several workers each one listens on a socket of its own, all bound to the same port with
``SO_REUSEPORT``, so that the kernel spreads connections evenly over the workers. uvicorn's way, one
socket shared by every worker, lets whichever worker wakes first accept a whole burst of new
connections: measured with 16 keep-alive streams on two workers, one worker served all 16 and the
other none, and the time to first token doubled. A worker that dies takes its socket with it, so
the kernel stops giving it connections until uvicorn's supervisor has started its replacement.

Before any worker starts, the supervisor checks that the port is free with an ordinary bind: a
second Tollway (or anything else) already listening there is refused, as uvicorn refuses it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from typing import Any

log = logging.getLogger("tollway.server")

APP = "tollway.app:app_from_environment"
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker that cannot start: its supervisor gives up


def serve(host: str, port: int, workers: int, *, app: str = APP) -> None:
    """Serve ``app`` (an app factory's import path) until SIGTERM or SIGINT; returns when every
    worker has exited."""
    import uvicorn

    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 20,
        "server_header": False,
    }
    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(app, **options)
        return
    from uvicorn.supervisors.multiprocess import Multiprocess

    _check_port_free(host, port)
    with contextlib.suppress(KeyboardInterrupt):
        Multiprocess(uvicorn.Config(app, **options), sockets=WorkerListener(host, port)).run()


class WorkerListener(list[socket.socket]):
    """The ``sockets`` list uvicorn's supervisor hands to every worker it starts.

    Empty in the supervisor. Pickled into each new worker process, it arrives there as a list
    holding one socket that the worker bound itself, with ``SO_REUSEPORT``."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (bind_worker_socket, (self.host, self.port))


def bind_worker_socket(host: str, port: int) -> list[socket.socket]:
    """A worker's own socket on the shared port; a worker that cannot bind it exits as a startup
    failure, so that the supervisor stops instead of restarting it forever."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("worker could not listen on %s:%d: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    return [sock]


def _check_port_free(host: str, port: int) -> None:
    """Exit with uvicorn's message and code when something already listens on the port."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        log.error("%s", exc)
        sys.exit(STARTUP_FAILURE)
    finally:
        probe.close()
