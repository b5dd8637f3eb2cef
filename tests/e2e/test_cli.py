"""The ``tollway`` command as an operator runs it: help, migrate, serve, and bad configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQL_", "LOG_SQL", "PORT", "NODE_TYPE"))}
    env.update({"SQLITE_PATH": str(tmp_path / "data" / "tollway.db"), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway", *args],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = _run(tmp_path, "--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "migrate" in result.stdout


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"SQL_DSN": "this is not a dsn"}, ["SQL_DSN"]),
        ({"NODE_TYPE": "leader"}, ["NODE_TYPE", "master", "slave"]),
        ({"SESSION_SECRET": "random_string"}, ["SESSION_SECRET"]),
        (
            {"SQL_DSN": "postgres://admin:hunter2@127.0.0.1:1/tollway"},
            ["cannot reach the database", "127.0.0.1:1"],
        ),
        ({"SQL_DSN": "root:hunter2@tcp(127.0.0.1:2)/tollway"}, ["cannot reach the database", "127.0.0.1:2"]),
    ],
)
def test_bad_configuration_is_one_clear_line(
    tmp_path: Path, env: dict[str, str], fragments: list[str]
) -> None:
    for command in ("migrate", "serve"):
        result = _run(tmp_path, command, **env)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("tollway: ")
        for fragment in fragments:
            assert fragment in lines[0]
        assert "hunter2" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


def test_migrate_creates_the_sqlite_database(tmp_path: Path) -> None:
    result = _run(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "tollway.db").exists()
    assert _run(tmp_path, "migrate").returncode == 0  # idempotent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve"],
        env=_env(tmp_path, PORT=str(port), WORKERS="2", HOST="127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/status", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"server did not start:\n{out}\n{err}")
    yield process, base
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def test_serve_answers_sets_up_and_stops_on_sigterm(server: tuple[subprocess.Popen[str], str]) -> None:
    process, base = server
    status = httpx.get(f"{base}/api/status").json()
    assert status["success"] is True and status["data"]["setup"] is False
    body = {"username": "root", "password": "12345678", "confirmPassword": "12345678"}
    assert httpx.post(f"{base}/api/setup", json=body).json()["success"] is True
    second = httpx.post(f"{base}/api/setup", json=body)
    assert second.status_code == 400 and second.json()["success"] is False
    # Both workers see the setup (each asks the database until it is done).
    assert all(httpx.get(f"{base}/api/status").json()["data"]["setup"] for _ in range(6))

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert time.monotonic() - started < 30
    # No worker outlived the main process. (multiprocessing's resource tracker, which is not a
    # worker, notices its parent is gone a moment later.)
    left = subprocess.run(
        ["ps", "-o", "args=", "-g", str(process.pid)], capture_output=True, text=True
    ).stdout
    assert "spawn_main" not in left, left
    assert "[INFO]" in out and "| SYSTEM |" in out
    assert "Traceback" not in err
