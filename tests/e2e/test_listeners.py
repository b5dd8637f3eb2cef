"""`tollway serve` with several workers: each worker listens on its own SO_REUSEPORT socket, so a
burst of new connections is spread over the workers instead of landing on whichever woke first;
a port something else already listens on is refused at start."""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port
from tests.e2e.test_restart import start_server, stop, wait_ready
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.server import STARTUP_FAILURE, WorkerListener, bind_worker_socket
from tollway.settings import Settings

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")

CONNECTIONS = 32


def test_a_worker_listener_arrives_in_the_worker_as_its_own_socket() -> None:
    port = free_port()
    first = pickle.loads(pickle.dumps(WorkerListener("127.0.0.1", port)))
    second = pickle.loads(pickle.dumps(WorkerListener("127.0.0.1", port)))
    try:
        assert len(first) == len(second) == 1
        assert first[0].getsockname() == second[0].getsockname() == ("127.0.0.1", port)
        assert first[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert first[0].fileno() != second[0].fileno()
    finally:
        for sock in first + second:
            sock.close()


def test_a_worker_that_cannot_bind_exits_as_a_startup_failure() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exit_info:
            bind_worker_socket("127.0.0.1", taken.getsockname()[1])
    assert exit_info.value.code == STARTUP_FAILURE


ESTABLISHED, LISTEN = "01", "0A"


def _inodes(port: int, state: str) -> set[str]:
    """Socket inodes of the server side of TCP sockets on ``port`` in ``state``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == state:
            inodes.add(fields[9])
    return inodes


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


async def test_a_burst_of_connections_is_spread_over_both_workers(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    db = Database(settings)
    await migrate(db)
    await db.dispose()
    port = free_port()
    process = start_server(settings, tmp_path, port)
    writers: list[asyncio.StreamWriter] = []
    try:
        await wait_ready(f"http://127.0.0.1:{port}", process)
        for _ in range(300):  # the other worker may still be starting
            if len(_inodes(port, LISTEN)) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(_inodes(port, LISTEN)) == 2  # a socket of its own per worker
        request = f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

        async def open_and_ask() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(request)
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")

        await asyncio.gather(*(open_and_ask() for _ in range(CONNECTIONS)))
        connections = _inodes(port, ESTABLISHED)
        per_worker = Counter({pid: len(_socket_inodes(pid) & connections) for pid in _children(process.pid)})
        served = sorted(n for n in per_worker.values() if n)
        assert sum(served) == CONNECTIONS
        assert len(served) == 2 and served[0] >= 4, per_worker  # P(< 4 of 32 | even hashing) ≈ 1e-6
    finally:
        for writer in writers:
            writer.close()
        if process.poll() is None:
            await stop(process)


def test_a_port_already_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", WORKERS="2")
        env.update(SQLITE_PATH=str(tmp_path / "t.db"), SQL_DSN="")
        done = subprocess.run(
            [sys.executable, "-m", "tollway", "serve"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            start_new_session=True,
        )
    assert done.returncode == STARTUP_FAILURE
    assert b"in use" in done.stderr
