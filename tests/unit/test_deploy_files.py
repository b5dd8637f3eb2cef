"""The container and deployment files, checked by reading them (no Docker engine or systemd here).

Dockerfile: stages, non-root user, volume, port, health check (run for real against a local
server), entrypoint. Compose: services, images, health checks, start order, env file. systemd unit:
the keys of a graceful, hardened service. The compose file is read with a small parser for the
YAML subset it uses, cross-checked with PyYAML when that is installed.
"""

from __future__ import annotations

import configparser
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tollway.db.dsn import parse_dsn
from tollway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "tollway.env.example"
UNIT = ROOT / "deploy" / "tollway.service"
SHUTDOWN_BUDGET_SECONDS = 30  # 20 s for requests in flight + draining logs and leases


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The build stages: (the FROM arguments, that stage's instructions)."""
    found: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            found.append((args, []))
        else:
            assert found, f"{keyword} before the first FROM"
            found[-1][1].append((keyword, args))
    return found


@pytest.fixture(scope="module")
def docker_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    return stages(dockerfile_instructions(DOCKERFILE.read_text()))


def _values(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_dockerfile_is_multi_stage_on_python_311_slim(
    docker_stages: list[tuple[str, list[tuple[str, str]]]],
) -> None:
    assert len(docker_stages) == 2
    (builder_from, builder), (runtime_from, runtime) = docker_stages
    assert re.fullmatch(r"python:3\.11-slim\S* AS builder", builder_from, re.IGNORECASE)
    assert re.fullmatch(r"python:3\.11-slim\S* AS runtime", runtime_from, re.IGNORECASE)
    build = " ".join(_values(builder, "RUN"))
    assert "pip wheel" in build and "python -m venv /opt/tollway/.venv" in build
    assert "/opt/tollway/.venv/bin/pip install /dist/tollway-" in build
    assert any(
        a.startswith("--from=builder /opt/tollway/.venv /opt/tollway/.venv") for a in _values(runtime, "COPY")
    )
    # Nothing from the build context is copied into the runtime stage: only the venv.
    assert all("--from=builder" in a for a in _values(runtime, "COPY"))
    assert "build-essential" not in " ".join(_values(runtime, "RUN"))


def test_dockerfile_runtime_settings(docker_stages: list[tuple[str, list[tuple[str, str]]]]) -> None:
    runtime = docker_stages[-1][1]
    users = _values(runtime, "USER")
    assert users == ["tollway"]
    setup = " ".join(_values(runtime, "RUN"))
    assert "--uid 1000" in setup and "--gid 1000" in setup and "chown tollway:tollway /data" in setup
    env = " ".join(_values(runtime, "ENV"))
    assert "SQLITE_PATH=/data/tollway.db" in env
    assert "PATH=/opt/tollway/.venv/bin:$PATH" in env
    volumes = [v for args in _values(runtime, "VOLUME") for v in _json_or_words(args)]
    assert volumes == ["/data"]
    assert _values(runtime, "EXPOSE") == ["3000"]
    assert _values(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert [json.loads(a) for a in _values(runtime, "ENTRYPOINT")] == [["tollway"]]
    assert [json.loads(a) for a in _values(runtime, "CMD")] == [["serve"]]
    # USER comes after the steps that need root.
    keywords = [kw for kw, _ in runtime]
    assert keywords.index("USER") > max(i for i, kw in enumerate(keywords) if kw == "RUN")


def _json_or_words(args: str) -> list[str]:
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return args.split()


def healthcheck_command(docker_stages: list[tuple[str, list[tuple[str, str]]]]) -> list[str]:
    (args,) = _values(docker_stages[-1][1], "HEALTHCHECK")
    options, _, command = args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/api/status" else 404
        self.send_response(code if type(self).status == 200 else type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"success":true}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(5)
    server.server_close()


def _run_healthcheck(argv: list[str], port: int) -> int:
    assert argv[0] == "python"  # the venv's python is first on PATH in the image
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


def test_dockerfile_healthcheck_works_without_curl(
    docker_stages: list[tuple[str, list[tuple[str, str]]]], status_server: http.server.HTTPServer
) -> None:
    argv = healthcheck_command(docker_stages)
    assert "curl" not in " ".join(argv) and "urllib" in " ".join(argv) and "/api/status" in " ".join(argv)
    port = int(status_server.server_address[1])
    assert _run_healthcheck(argv, port) == 0
    _Status.status = 503
    try:
        assert _run_healthcheck(argv, port) == 1
    finally:
        _Status.status = 200
    status_server.shutdown()
    status_server.server_close()  # nothing listens any more
    # Docker treats 1 as unhealthy; exit code 2 is reserved, so failures must not produce it.
    assert _run_healthcheck(argv, port) == 1


def test_dockerignore_keeps_the_build_inputs_and_drops_local_state() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "tollway"):
        assert needed not in patterns and f"/{needed}" not in patterns
    for dropped in (".git", ".venv", "data", ".env", "**/*.db", "**/.tollway-secrets.json", "tests"):
        assert dropped in patterns


# ----------------------------------------------------------------------------- docker compose


def parse_yaml_subset(text: str) -> Any:
    """Block mappings and sequences, plain/quoted scalars and JSON-style flow sequences.

    Enough for deploy/docker-compose.yml; anything else fails loudly rather than guessing.
    """
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = _strip_comment(raw).rstrip()
        if stripped.strip():
            assert "\t" not in raw[: len(raw) - len(raw.lstrip())], "tabs in indentation"
            lines.append((len(stripped) - len(stripped.lstrip(" ")), stripped.strip()))
    value, end = _block(lines, 0, lines[0][0] if lines else 0)
    assert end == len(lines), f"unparsed YAML from line {end}: {lines[end][1]!r}"
    return value


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and (quote == "'" or line[i - 1] != "\\"):
                quote = None
        elif ch in "\"'" and (i == 0 or line[i - 1] in " :[,-"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- ") or lines[i][1] == "-":
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            item = lines[i][1][1:].strip()
            assert item and not re.match(r"^[\w.-]+:(\s|$)", item), "only scalar list items are supported"
            items.append(_scalar(item))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        match = re.fullmatch(r"([\w.-]+|\"[^\"]*\"):(?:\s+(.*))?", lines[i][1])
        assert match, f"not a mapping entry: {lines[i][1]!r}"
        key = match.group(1).strip('"')
        assert key not in mapping, f"duplicate key {key}"
        rest = match.group(2)
        i += 1
        if rest:
            mapping[key] = _scalar(rest)
        elif i < len(lines) and lines[i][0] > indent:
            mapping[key], i = _block(lines, i, lines[i][0])
        elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            mapping[key], i = _block(lines, i, indent)  # a sequence at the key's indentation
        else:
            mapping[key] = None
    assert i == len(lines) or lines[i][0] < indent, f"bad indentation at {lines[i][1]!r}"
    return mapping, i


def _scalar(text: str) -> Any:
    if text.startswith("["):
        value = json.loads(text)  # the flow sequences used are JSON arrays of strings
        return [str(v) for v in value]
    if text.startswith('"'):
        value = json.loads(text)
        return str(value)
    if text.startswith("'"):
        assert text.endswith("'")
        return text[1:-1].replace("''", "'")
    assert not text.startswith(("{", "&", "*", "!", "|", ">")), f"unsupported YAML: {text!r}"
    return text


def _normalise(value: Any) -> Any:
    """PyYAML's typed scalars as the strings the subset parser keeps."""
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    return None if value is None else str(value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    parsed = parse_yaml_subset(COMPOSE.read_text())
    assert isinstance(parsed, dict)
    return parsed


def test_yaml_subset_parser_agrees_with_pyyaml(compose: dict[str, Any]) -> None:
    yaml = pytest.importorskip("yaml")
    assert _normalise(yaml.safe_load(COMPOSE.read_text())) == compose


def test_compose_services_images_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"tollway", "postgres", "redis"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7"
    for name in ("postgres", "redis"):
        health = services[name]["healthcheck"]
        assert health["test"][0] in ("CMD", "CMD-SHELL")
        assert {"interval", "timeout", "retries"} <= set(health)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    # $$ keeps compose from interpolating: the variables are the container's own.
    assert "$${POSTGRES_USER}" in services["postgres"]["healthcheck"]["test"][1]


def test_compose_tollway_service(compose: dict[str, Any]) -> None:
    tollway = compose["services"]["tollway"]
    assert tollway["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert (
        COMPOSE.parent / tollway["build"]["context"] / tollway["build"]["dockerfile"]
    ).resolve() == DOCKERFILE
    assert tollway["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert tollway["env_file"] == ["tollway.env"]
    assert compose["services"]["postgres"]["env_file"] == ["tollway.env"]
    assert "tollway-data:/data" in tollway["volumes"]
    assert tollway["ports"] == ["3000:3000"]
    grace = tollway["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > SHUTDOWN_BUDGET_SECONDS
    assert tollway.get("stop_signal", "SIGTERM") == "SIGTERM"
    named = {v.split(":", 1)[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    assert named <= set(compose["volumes"])
    # Only the gateway is published.
    assert "ports" not in compose["services"]["postgres"] and "ports" not in compose["services"]["redis"]


def env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"bad line {line!r}"
        assert not value.startswith(("'", '"')) and "$" not in value, (
            f"quotes/$ are read differently: {line!r}"
        )
        values[key] = value
    return values


def test_env_example_feeds_compose_and_tollway() -> None:
    env = env_file(ENV_EXAMPLE)
    for name in ("SQL_DSN", "REDIS_CONN_STRING", "SESSION_SECRET", "CRYPTO_SECRET"):
        assert name in env
    known = {name.upper() for name in Settings.model_fields}
    for name in env:
        assert name in known or name.startswith("POSTGRES_"), f"{name} is not a Tollway setting"
    url = parse_dsn(env["SQL_DSN"], sqlite_path="unused")
    assert url.dialect == "postgresql"
    assert url.url.host == "postgres" and url.url.port == 5432  # the compose service
    assert url.url.username == env["POSTGRES_USER"]
    assert url.url.password == env["POSTGRES_PASSWORD"]
    assert url.url.database == env["POSTGRES_DB"]
    assert env["REDIS_CONN_STRING"].startswith("redis://redis:6379")
    # Commented-out optional settings are real settings too.
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"# ([A-Z_]+)=\S*", line)
        if match:
            assert match.group(1) in known


# ----------------------------------------------------------------------------- systemd


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_service(unit: configparser.ConfigParser) -> None:
    service = unit["Service"]
    expected = {
        "Type": "exec",
        "User": "tollway",
        "EnvironmentFile": "/etc/tollway/tollway.env",
        "ExecStart": "/opt/tollway/.venv/bin/tollway serve",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/tollway",
        "PrivateTmp": "yes",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert int(service["TimeoutStopSec"]) > SHUTDOWN_BUDGET_SECONDS
    assert service["Environment"] == "SQLITE_PATH=/var/lib/tollway/tollway.db"  # inside ReadWritePaths
    assert service["WorkingDirectory"] == "/var/lib/tollway"
    assert service["RestartPreventExitStatus"] == "2"  # configuration errors do not loop
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    # The real ExecStart does not exist here; everything else is checked as written.
    text = re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/true", UNIT.read_text())
    copy = tmp_path / "tollway.service"
    copy.write_text(text)
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    problems = [line for line in output.splitlines() if str(copy) in line or "Unknown" in line]
    assert not problems, output
