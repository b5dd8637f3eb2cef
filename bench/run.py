"""Tollway's benchmark: one command, the mock measured directly in the same run.

    .venv/bin/python -m bench.run                      # full run (about 3 minutes)
    .venv/bin/python -m bench.run --quick --check      # CI-sized run, fails on a gross regression

It creates a temporary data directory, seeds a user, a token and three channels into a fresh
SQLite database, starts three mock upstreams and ``tollway serve`` (as the README starts it:
``WORKERS`` = cores, ``SQLITE_PATH``, ``SESSION_SECRET``, ``CRYPTO_SECRET``) in process groups of
their own, runs every scenario point against the mock directly and then through Tollway, prints a
table, writes JSON (``--json``), and stops everything it started. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(ROOT))

FAST_MODEL = "gpt-4o-mini"  # -> fast mock
SLOW_MODEL = "gpt-4o"  # -> slow mock: TTFT 50 ms, 10 ms per chunk
LONG_MODEL = "gpt-3.5-turbo"  # -> long mock: LONG_CHUNKS chunks per stream
CHUNKS = 10  # content chunks per stream (+ role, finish and usage chunks)
SLOW_TTFT_MS, SLOW_CHUNK_MS = 50, 10

# The targets (2 cores, 2 workers, mock on the same machine).
TARGET_CHAT_RPS = 3_000  # non-stream, c=64
TARGET_STREAM_RPS = 2_000  # stream, c=64
TARGET_ADDED_P99_MS = 40.0  # non-stream, c=64
TARGET_ADDED_P50_C1_MS = 0.6  # non-stream, c=1
TARGET_ADDED_TTFT_MS = 1.0  # p50
TARGET_CPU_US = 500  # per non-stream request
TARGET_WORKER_RSS_MB = 200
TARGET_LONG_GROWTH_MB = 16  # "memory flat during a 100k-chunk stream"

# --check: a gross regression, read as ratios against the mock measured in the same run (chat, c=64).
#   target ratio = min(TARGET_CHAT_RPS / direct rps, RATIO_CAP); fail when Tollway rps / direct rps
#   is below half of it. With RATIO_CAP at 0.03 the minimum is 0.015, against 0.06-0.08 measured on
#   a quiet machine: it fails at a 4-5x slowdown, not on a busy machine's swings. Raise the cap as
#   Tollway gets faster (README).
#   CPU ratio: Tollway CPU us per request / the mock's, the steadiest figure (20-45 today).
CHECK_CONC = 64
RATIO_CAP = 0.03
MAX_CPU_RATIO = 100.0
MAX_ERROR_RATE = 0.01
MAX_LONG_GROWTH_MB = 16  # a relay without backpressure buffers the stream (>= 24 MB) while the reader stalls

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
try:
    LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
except OSError:
    LIBC = None
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- process trees


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (``/proc/<pid>/stat``), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (VmRSS, VmHWM), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler:
    """CPU time and RSS of a process tree while a measurement runs (a background thread)."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.cpu_start: dict[int, float] = {}
        self.pids: set[int] = set()
        self.peak_tree_kb = 0
        self.peak_process_kb = 0
        self.series: list[tuple[float, int]] = []  # (seconds since start, tree RSS kB)
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0

    def sample(self) -> int:
        """Record one RSS sample; returns the tree's RSS in kB."""
        pids = process_tree(self.root)
        for pid in pids:
            if pid not in self.pids:
                self.pids.add(pid)
                self.cpu_start.setdefault(pid, 0.0)
        sizes = [status_kb(pid, "VmRSS") for pid in pids]
        total = sum(sizes)
        self.peak_tree_kb = max(self.peak_tree_kb, total)
        self.peak_process_kb = max(self.peak_process_kb, *sizes, 0)
        self.series.append((round(time.monotonic() - self._t0, 3), total))
        return total

    def __enter__(self) -> TreeSampler:
        self._t0 = time.monotonic()
        self.pids = set(process_tree(self.root))
        self.cpu_start = {pid: cpu_seconds(pid) for pid in self.pids}
        self.sample()
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.cpu = sum(max(0.0, cpu_seconds(pid) - self.cpu_start.get(pid, 0.0)) for pid in self.pids)

    @property
    def start_kb(self) -> int:
        return self.series[0][1]

    @property
    def end_kb(self) -> int:
        return self.series[-1][1]


def peak_worker_kb(root: int) -> int:
    """The largest peak RSS (VmHWM) of any process in the tree since it started."""
    return max((status_kb(pid, "VmHWM") for pid in process_tree(root)), default=0)


# ---------------------------------------------------------------- processes


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the driver dies, so nothing outlives a killed run."""
    if LIBC is not None:
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    base_url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Services:
    """Starts processes in their own process groups and always stops them (and their children)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Service] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], port: int, ready_path: str) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # no threads are running while services start
            )
        service = Service(name, process, log, f"http://{LOOPBACK}:{port}")
        self.started.append(service)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{service.log_tail()}")
            try:
                with urllib.request.urlopen(service.base_url + ready_path, timeout=2) as response:
                    if response.status == 200:
                        return service
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {ready_path} within 60 s:\n{service.log_tail()}")

    def stop_all(self) -> None:
        """SIGTERM each process group, wait, then SIGKILL what is left."""
        for service in reversed(self.started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for service in reversed(self.started):
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGKILL)  # stragglers of the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=5)
        self.started.clear()


def clean_env() -> dict[str, str]:
    """The environment without Tollway's own settings (they are set explicitly)."""
    from tollway.settings import Settings

    names = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in os.environ.items() if k.upper() not in names}


def tollway_command() -> list[str]:
    """``tollway serve`` from the running interpreter's environment (the README's command)."""
    script = Path(sys.executable).parent / "tollway"
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("tollway")
    return [found, "serve"] if found else [sys.executable, "-m", "tollway", "serve"]


async def seed_database(
    sqlite_path: Path, secrets_: dict[str, str], upstreams: dict[str, str]
) -> tuple[str, dict[str, int]]:
    """Migrate a fresh SQLite database, add a user, a token and one channel per model."""
    from tests.seed import create_channel, create_token, create_user
    from tollway.db.engine import Database
    from tollway.db.migrate import migrate
    from tollway.settings import load_settings

    settings = load_settings(
        sql_dsn="",
        log_sql_dsn="",
        sqlite_path=str(sqlite_path),
        session_secret=secrets_["SESSION_SECRET"],
        crypto_secret=secrets_["CRYPTO_SECRET"],
    )
    db = Database(settings)
    try:
        await migrate(db)
        user_id = await create_user(db, "bench", quota=10**15)
        _, key = await create_token(db, user_id, name="bench", crypto_secret=settings.crypto_secret)
        channels = {
            model: await create_channel(db, base_url + "/v1", name=f"mock {model}", models=model)
            for model, base_url in upstreams.items()
        }
    finally:
        await db.dispose()
    return key, channels


# ---------------------------------------------------------------- load tools


def run_wrk(url: str, key: str, model: str, stream: bool, conc: int, duration: float) -> dict[str, Any]:
    """One closed-loop wrk run; latency in µs."""
    env = dict(os.environ, BENCH_MODEL=model, BENCH_STREAM="1" if stream else "0", BENCH_KEY=key)
    seconds = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "10s", "-s", str(BENCH / "lua/chat.lua")]
    done = subprocess.run(
        [*cmd, url + "/v1/chat/completions"], env=env, capture_output=True, text=True, timeout=seconds + 30
    )
    match = re.search(r"^WRKJSON (.*)$", done.stdout, re.M)
    if not match:
        raise RuntimeError(f"wrk gave no result: {done.stdout[-400:]} {done.stderr[-400:]}")
    raw = json.loads(match.group(1))
    socket_errors = sum(raw[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "errors": socket_errors + raw["err_status"],
        "non2xx": raw["err_status"],
        "p50": raw["p50_us"],
        "p90": raw["p90_us"],
        "p99": raw["p99_us"],
    }


def run_sse(url: str, key: str, model: str, conc: int, duration: float, *extra: str) -> dict[str, Any]:
    """sse_load.py: closed-loop streams (TTFT and total) or, with ``--long``, one long stream."""
    cmd = [sys.executable, str(BENCH / "sse_load.py"), url + "/v1/chat/completions", "-m", model]
    cmd += ["-c", str(conc), "-d", str(duration), "--timeout", "120", *extra]
    if key:
        cmd += ["-k", key]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 150)
    match = re.search(r"^SSEJSON (.*)$", done.stdout, re.M)
    if not match:
        raise RuntimeError(f"sse_load gave no result: {done.stdout[-400:]} {done.stderr[-400:]}")
    raw: dict[str, Any] = json.loads(match.group(1))
    if "--long" in extra:
        return raw
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "rps": raw["rps"],
        "errors": raw["errors"],
        "non2xx": raw["non2xx"],
        "p50": raw["p50_us"],
        "p90": raw["p90_us"],
        "p99": raw["p99_us"],
        "ttft50": raw["ttft_p50_us"],
        "ttft90": raw["ttft_p90_us"],
        "ttft99": raw["ttft_p99_us"],
    }


# ---------------------------------------------------------------- the run


@dataclass
class Plan:
    scenarios: list[str]
    conc: list[int]
    stream_conc: list[int]
    ttft_conc: list[int]
    duration: float
    warmup: float
    long_chunks: int
    long_stall: float
    workers: int
    check_pairs: int
    ttft_pairs: int = 1


@dataclass
class Bench:
    """The running services and everything measured so far."""

    plan: Plan
    key: str
    direct: dict[str, Service]  # model -> its mock
    tollway: Service
    floor: Service | None = None  # bench/passthrough.py in front of the slow mock (ttft only)
    startup_seconds: float = 0.0
    points: list[dict[str, Any]] = field(default_factory=list)
    long: list[dict[str, Any]] = field(default_factory=list)

    def target(self, name: str, model: str) -> tuple[str, str, int]:
        """(base URL, key, pid to sample) of a target for a model."""
        if name == "direct":
            mock = self.direct[model]
            return mock.base_url, "", mock.pid
        if name == "floor":
            assert self.floor is not None and model == SLOW_MODEL
            return self.floor.base_url, "", self.floor.pid
        return self.tollway.base_url, self.key, self.tollway.pid

    def sample(self, scenario: str, conc: int, name: str) -> dict[str, Any]:
        """One load run against one target, with its server's CPU time and peak RSS."""
        model = SLOW_MODEL if scenario == "ttft" else FAST_MODEL
        url, key, pid = self.target(name, model)
        load: Callable[[], dict[str, Any]]
        if scenario == "ttft":
            load = lambda: run_sse(url, key, model, conc, self.plan.duration)  # noqa: E731
        else:
            load = lambda: run_wrk(url, key, model, scenario == "stream", conc, self.plan.duration)  # noqa: E731
        with TreeSampler(pid) as sampler:
            result = load()
            if name == "tollway":
                time.sleep(0.3)  # the log writer's next flush belongs to these requests
        return result | {
            "cpu_s": sampler.cpu,
            "rss_tree_mb": sampler.peak_tree_kb / 1024,
            "rss_process_mb": sampler.peak_process_kb / 1024,
        }

    def measure(self, scenario: str, conc: int) -> None:
        """Direct, then Tollway; the check's point as several alternating pairs, merged, so that
        a burst of outside load hits both sides alike."""
        pairs = self.plan.check_pairs if (scenario, conc) == ("chat", CHECK_CONC) else 1
        if scenario == "ttft":
            pairs = self.plan.ttft_pairs
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "tollway": []}
        if scenario == "ttft" and self.floor is not None:
            runs["floor"] = []
        for _ in range(pairs):
            for name, found in runs.items():
                found.append(self.sample(scenario, conc, name))
        for name, found in runs.items():
            result = merge(found) | {"scenario": scenario, "conc": conc, "target": name}
            self.points.append(result)
            progress(format_point(result))

    def measure_long(self, name: str) -> None:
        url, key, pid = self.target(name, LONG_MODEL)
        time.sleep(0.3)
        with TreeSampler(pid, interval=0.05) as sampler:
            result = run_sse(url, key, LONG_MODEL, 1, 0, "--long", "--stall", str(self.plan.long_stall))
            time.sleep(0.3)
        result.update(
            scenario="longstream",
            target=name,
            chunks=self.plan.long_chunks,
            seconds=result["duration_us"] / 1e6,
            rss_start_mb=sampler.start_kb / 1024,
            rss_peak_mb=sampler.peak_tree_kb / 1024,
            rss_end_mb=sampler.end_kb / 1024,
            rss_growth_mb=(sampler.peak_tree_kb - sampler.start_kb) / 1024,
            rss_series=[(t, round(kb / 1024, 1)) for t, kb in sampler.series],
            cpu_us_per_chunk=sampler.cpu * 1e6 / max(1, result["events"]),
        )
        self.long.append(result)
        progress(
            f"  longstream  {name:8} events={result['events']} in {result['seconds']:.2f} s "
            f"rss {result['rss_start_mb']:.0f}/{result['rss_peak_mb']:.0f}/{result['rss_end_mb']:.0f} MB"
        )

    def warm_up(self) -> None:
        """Untimed load on Tollway first: connection pools, leases, caches (the mocks need none)."""
        if self.plan.warmup <= 0:
            return
        progress(f"warm-up ({self.plan.warmup:.0f} s per kind)")
        url, key, _ = self.target("tollway", FAST_MODEL)
        run_wrk(url, key, FAST_MODEL, False, 64, self.plan.warmup)
        run_wrk(url, key, FAST_MODEL, True, 64, self.plan.warmup)
        run_sse(url, key, SLOW_MODEL, 4, 0.5)
        if self.floor is not None:
            run_sse(self.floor.base_url, "", SLOW_MODEL, 4, 0.5)

    def run(self) -> None:
        self.warm_up()
        for scenario in self.plan.scenarios:
            if scenario == "longstream":
                for name in ("direct", "tollway"):
                    self.measure_long(name)
                continue
            concs = {"chat": self.plan.conc, "stream": self.plan.stream_conc, "ttft": self.plan.ttft_conc}
            for conc in concs[scenario]:
                self.measure(scenario, conc)


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one point as one: rps and CPU over the total, percentiles their median."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    merged = {
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": requests / seconds if seconds else 0.0,
        "errors": sum(r["errors"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "cpu_us": sum(r["cpu_s"] for r in runs) * 1e6 / max(1, requests),
        "rss_tree_mb": max(r["rss_tree_mb"] for r in runs),
        "rss_process_mb": max(r["rss_process_mb"] for r in runs),
        "runs": len(runs),
    }
    for key in ("p50", "p90", "p99", "ttft50", "ttft90", "ttft99"):
        if key in runs[0]:
            merged[key] = statistics.median(r[key] for r in runs)
    return merged


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_point(r: dict[str, Any]) -> str:
    line = (
        f"  {r['scenario']:10} c={r['conc']:<4} {r['target']:8} rps={r['rps']:9.1f} "
        f"p50={r['p50'] / 1000:8.2f}ms p99={r['p99'] / 1000:8.2f}ms err={r['errors']}"
    )
    if "ttft50" in r:
        line += f" ttft50={r['ttft50'] / 1000:.2f}ms"
    return line + f" cpu={r['cpu_us']:.0f}us/req rss={r['rss_tree_mb']:.0f}MB"


# ---------------------------------------------------------------- analysis


def comparisons(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tollway against direct for every (scenario, conc): ratio and added latency in ms."""
    out = []
    by_key = {(p["scenario"], p["conc"], p["target"]): p for p in points}
    for (scenario, conc, target), t in by_key.items():
        d = by_key.get((scenario, conc, "direct"))
        if target == "direct" or d is None:
            continue
        row: dict[str, Any] = {
            "scenario": scenario,
            "conc": conc,
            "target": target,
            "rps_ratio": t["rps"] / d["rps"] if d["rps"] else 0.0,
            "added_p50_ms": (t["p50"] - d["p50"]) / 1000,
            "added_p90_ms": (t["p90"] - d["p90"]) / 1000,
            "added_p99_ms": (t["p99"] - d["p99"]) / 1000,
        }
        if "ttft50" in t:
            row["added_ttft_p50_ms"] = (t["ttft50"] - d["ttft50"]) / 1000
            row["added_ttft_p99_ms"] = (t["ttft99"] - d["ttft99"]) / 1000
        out.append(row)
    return out


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def nearest_conc(rows: list[dict[str, Any]], scenario: str, wanted: int) -> int | None:
    concs = sorted({r["conc"] for r in rows if r["scenario"] == scenario})
    return min(concs, key=lambda c: (abs(c - wanted), -c)) if concs else None


def target_report(
    points: list[dict[str, Any]], compare: list[dict[str, Any]], long: list[dict[str, Any]], worker_mb: float
) -> list[dict[str, Any]]:
    """The issue's targets, where this run measured them (informational, not the --check rule)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, higher_is_better: bool) -> None:
        met = value >= target if higher_is_better else value <= target
        out.append({"target": name, "value": round(value, 3), "goal": target, "met": met})

    chat64 = find(points, scenario="chat", conc=64, target="tollway")
    chat64_cmp = find(compare, scenario="chat", conc=64)
    if chat64 and chat64_cmp:
        add("chat c=64 rps", chat64["rps"], TARGET_CHAT_RPS, True)
        add("chat c=64 added p99 ms", chat64_cmp["added_p99_ms"], TARGET_ADDED_P99_MS, False)
        add("chat c=64 CPU us/request", chat64["cpu_us"], TARGET_CPU_US, False)
    chat1 = find(compare, scenario="chat", conc=1)
    if chat1:
        add("chat c=1 added p50 ms", chat1["added_p50_ms"], TARGET_ADDED_P50_C1_MS, False)
    stream64 = find(points, scenario="stream", conc=64, target="tollway")
    if stream64:
        add("stream c=64 rps", stream64["rps"], TARGET_STREAM_RPS, True)
    for row in compare:
        if row["scenario"] == "ttft":
            label = "" if row["target"] == "tollway" else f" ({row['target']})"
            add(
                f"ttft c={row['conc']} added p50 ms{label}",
                row["added_ttft_p50_ms"],
                TARGET_ADDED_TTFT_MS,
                False,
            )
    if worker_mb:
        add("peak RSS per process MB", worker_mb, TARGET_WORKER_RSS_MB, False)
    tollway_long = find(long, target="tollway")
    if tollway_long:
        add("longstream RSS growth MB", tollway_long["rss_growth_mb"], TARGET_LONG_GROWTH_MB, False)
    return out


def check(
    points: list[dict[str, Any]],
    compare: list[dict[str, Any]],
    long: list[dict[str, Any]],
    error_lines: list[str] | None = None,
) -> dict[str, Any]:
    """The --check rule: throughput and CPU ratios, errors, non-2xx, a long stream that stays flat,
    and no ERR line in Tollway's log (a clean run writes none)."""
    failures: list[str] = []
    if error_lines:
        failures.append(f"{len(error_lines)} ERR lines in tollway's log, the first: {error_lines[0]}")
    result: dict[str, Any] = {
        "rule": (
            f"chat c=64: tollway/direct rps >= 0.5 * min({TARGET_CHAT_RPS} / direct rps, {RATIO_CAP}) and "
            f"tollway/direct CPU us per request <= {MAX_CPU_RATIO:g}; errors <= {MAX_ERROR_RATE:.0%} "
            f"per point; no non-2xx; long stream complete, RSS growth <= {MAX_LONG_GROWTH_MB} MB"
        )
    }
    conc = nearest_conc(points, "chat", CHECK_CONC)
    if conc is not None:
        direct = find(points, scenario="chat", conc=conc, target="direct")
        tollway = find(points, scenario="chat", conc=conc, target="tollway")
        row = find(compare, scenario="chat", conc=conc)
        if direct and tollway and row and direct["rps"] > 0:
            target_ratio = min(TARGET_CHAT_RPS / direct["rps"], RATIO_CAP)
            minimum = 0.5 * target_ratio
            result.update(conc=conc, ratio=round(row["rps_ratio"], 4), target_ratio=round(target_ratio, 4))
            result["minimum"] = round(minimum, 4)
            if row["rps_ratio"] < minimum:
                failures.append(f"chat c={conc}: rps ratio {row['rps_ratio']:.4f} < minimum {minimum:.4f}")
            if direct.get("cpu_us", 0) > 0 and "cpu_us" in tollway:
                cpu_ratio = tollway["cpu_us"] / direct["cpu_us"]
                result["cpu_ratio"] = round(cpu_ratio, 1)
                if cpu_ratio > MAX_CPU_RATIO:
                    failures.append(f"chat c={conc}: CPU ratio {cpu_ratio:.0f} > {MAX_CPU_RATIO:g}")
    else:
        failures.append("no chat scenario measured: nothing to compare")
    for p in points:
        tried = p["requests"] + p["errors"]
        label = f"{p['scenario']} c={p['conc']} {p['target']}"
        if p["non2xx"]:
            failures.append(f"{label}: {p['non2xx']} non-2xx responses")
        if p["requests"] == 0 or p["errors"] > MAX_ERROR_RATE * tried:
            failures.append(f"{label}: {p['errors']} errors out of {tried}")
    for r in long:
        if r["errors"] or r["events"] < r["chunks"]:
            failures.append(f"longstream {r['target']}: incomplete ({r['events']} events)")
        if r["target"] == "tollway" and r["rss_growth_mb"] > MAX_LONG_GROWTH_MB:
            failures.append(f"longstream: RSS grew {r['rss_growth_mb']:.0f} MB > {MAX_LONG_GROWTH_MB} MB")
    result.update(passed=not failures, failures=failures)
    return result


# ---------------------------------------------------------------- output


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [
            str(x).ljust(w) if i < 3 else str(x).rjust(w)
            for i, (x, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    def ms(us: float | None) -> str:
        return "-" if us is None else f"{us / 1000:.2f}"

    def num(row: dict[str, Any] | None, key: str, fmt: str = ".2f") -> str:
        value = row.get(key) if row else None
        return "-" if value is None else format(value, fmt)

    compare = report["compare"]
    headers = ["scenario", "conc", "target", "rps", "p50ms", "p90ms", "p99ms", "ttft50ms", "ttft99ms"]
    headers += ["err", "x_rps", "+p50ms", "+p90ms", "+p99ms", "+ttft50ms", "cpu_us", "rssMB", "procMB"]
    rows = []
    for p in report["points"]:
        c = find(compare, scenario=p["scenario"], conc=p["conc"], target=p["target"])
        rows.append(
            [
                p["scenario"],
                str(p["conc"]),
                p["target"],
                f"{p['rps']:.0f}",
                ms(p["p50"]),
                ms(p["p90"]),
                ms(p["p99"]),
                ms(p.get("ttft50")),
                ms(p.get("ttft99")),
                str(p["errors"]),
                num(c, "rps_ratio", ".3f"),
                num(c, "added_p50_ms"),
                num(c, "added_p90_ms"),
                num(c, "added_p99_ms"),
                num(c, "added_ttft_p50_ms"),
                f"{p['cpu_us']:.0f}",
                f"{p['rss_tree_mb']:.0f}",
                f"{p['rss_process_mb']:.0f}",
            ]
        )
    parts = [table(headers, rows)] if rows else []
    if report["longstream"]:
        headers = ["longstream", "chunks", "target", "events", "seconds", "events/s", "cpu_us/ev"]
        headers += ["rss start", "peak", "end MB", "growth MB"]
        rows = [
            [
                "longstream",
                str(r["chunks"]),
                r["target"],
                str(r["events"]),
                f"{r['seconds']:.2f}",
                f"{r['events_per_s']:.0f}",
                f"{r['cpu_us_per_chunk']:.1f}",
                f"{r['rss_start_mb']:.0f}",
                f"{r['rss_peak_mb']:.0f}",
                f"{r['rss_end_mb']:.0f}",
                f"{r['rss_growth_mb']:.1f}",
            ]
            for r in report["longstream"]
        ]
        parts.append(table(headers, rows))
    if report["targets"]:
        rows = [
            [t["target"], "", "", f"{t['value']:g}", f"{t['goal']:g}", "yes" if t["met"] else "NO"]
            for t in report["targets"]
        ]
        parts.append(table(["target", "", "", "value", "goal", "met"], rows))
    meta = report["meta"]
    parts.append(
        f"tollway: {meta['workers']} worker(s) on {meta['cores']} core(s); peak RSS per process "
        f"{meta['peak_process_rss_mb']:.0f} MB; wall time {meta['wall_seconds']:.1f} s "
        f"(start-up {meta['startup_seconds']:.1f} s); 1-min load average at start {meta['loadavg_1m_at_start']:.1f}; "
        f"ERR lines in its log: {meta['tollway_error_lines']}"
    )
    chk = report["check"]
    if report["meta"]["args"]["check"]:
        verdict = "passed" if chk["passed"] else "FAILED: " + "; ".join(chk["failures"])
        detail = ""
        if "ratio" in chk:
            detail = f" (c={chk['conc']}: rps ratio {chk['ratio']}, minimum {chk['minimum']}"
            detail += f"; CPU ratio {chk.get('cpu_ratio', '-')}, limit {MAX_CPU_RATIO:g})"
        parts.append(f"check {verdict}{detail}")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--scenarios", default="chat,stream,ttft,longstream", help="comma-separated")
    parser.add_argument("--conc", default="1,16,64,256", help="connections for chat and stream")
    parser.add_argument("--stream-conc", help="connections for stream; None: the --conc list")
    parser.add_argument("--ttft-conc", default="1,16,64", help="concurrent streams for ttft")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (wrk: whole seconds)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of untimed load per kind")
    parser.add_argument("--long-chunks", type=int, default=100_000, help="chunks of the long stream")
    parser.add_argument(
        "--long-stall", type=float, default=1.0, help="seconds the long stream's reader stops reading"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="WORKERS for tollway")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI-sized: chat c=1,64 (c=64 as 3 pairs), stream c=64, ttft c=16, 1 s per run",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 on a gross regression")
    parser.add_argument(
        "--check-pairs", type=int, default=1, help="alternating direct/Tollway runs of the chat c=64 point"
    )
    parser.add_argument(
        "--ttft-pairs",
        type=int,
        default=3,
        help="alternating direct/Tollway/floor runs of each ttft point (its percentiles: their median)",
    )
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.conc, args.stream_conc, args.ttft_conc = "1,64", "64", "16"
        args.duration = args.warmup = 1.0
        args.check_pairs = 3
        args.ttft_pairs = 1
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"chat", "stream", "ttft", "longstream"}
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return Plan(
        scenarios=scenarios,
        conc=[int(c) for c in args.conc.split(",")],
        stream_conc=[int(c) for c in (args.stream_conc or args.conc).split(",")],
        ttft_conc=[int(c) for c in args.ttft_conc.split(",")],
        duration=args.duration,
        warmup=args.warmup,
        long_chunks=args.long_chunks,
        long_stall=args.long_stall,
        check_pairs=args.check_pairs,
        ttft_pairs=args.ttft_pairs,
        workers=args.workers,
    )


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tollway-bench-"))
    try:
        yield path
    finally:
        if keep:
            progress(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def start_stack(services: Services, plan: Plan) -> Bench:
    """Mocks, seeded database, then ``tollway serve``."""
    started = time.monotonic()
    env = clean_env()
    mock = [sys.executable, str(BENCH / "mock_upstream.py"), "--host", LOOPBACK, "--port"]
    knobs = {
        FAST_MODEL: {"MOCK_CHUNKS": str(CHUNKS)},
        SLOW_MODEL: {
            "MOCK_CHUNKS": str(CHUNKS),
            "MOCK_TTFT_MS": str(SLOW_TTFT_MS),
            "MOCK_CHUNK_MS": str(SLOW_CHUNK_MS),
        },
        LONG_MODEL: {"MOCK_CHUNKS": str(plan.long_chunks)},
    }
    direct = {}
    for model, extra in knobs.items():
        port = free_port()
        direct[model] = services.start(f"mock-{model}", [*mock, str(port)], env | extra, port, "/health")
    secrets_ = {"SESSION_SECRET": secrets.token_urlsafe(24), "CRYPTO_SECRET": secrets.token_urlsafe(24)}
    sqlite_path = services.workdir / "data" / "tollway.db"
    upstreams = {model: service.base_url for model, service in direct.items()}
    key, _ = asyncio.run(seed_database(sqlite_path, secrets_, upstreams))
    port = free_port()
    tollway_env = env | secrets_
    tollway_env.update(PORT=str(port), HOST=LOOPBACK, WORKERS=str(plan.workers), SQLITE_PATH=str(sqlite_path))
    tollway = services.start("tollway", tollway_command(), tollway_env, port, "/api/status")
    floor = None
    if "ttft" in plan.scenarios:
        port = free_port()
        passthrough = [sys.executable, str(BENCH / "passthrough.py"), "--port", str(port)]
        passthrough += ["--upstream", direct[SLOW_MODEL].base_url, "--workers", str(plan.workers)]
        floor = services.start("floor", passthrough, env, port, "/health")
    time.sleep(1.0)  # every worker past its lifespan start, not just the first to answer
    return Bench(plan, key, direct, tollway, floor, startup_seconds=round(time.monotonic() - started, 1))


def bench_error_lines(workdir: Path) -> list[str]:
    """The ERR lines Tollway logged during the run (log lines start with their level)."""
    with contextlib.suppress(OSError):
        text = (workdir / "tollway.log").read_text(errors="replace")
        return [line for line in text.splitlines() if line.startswith("[ERR]")]
    return []


def stop_on_sigterm() -> None:
    """SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so the finally blocks stop the services."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    plan = make_plan(args)
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found (apt-get install wrk)")
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    with workdir(args.keep) as path:
        services = Services(path)
        try:
            bench = start_stack(services, plan)
            bench.run()
            worker_kb = peak_worker_kb(bench.tollway.pid)
        except KeyboardInterrupt as exc:
            progress(f"interrupted ({exc or 'Ctrl-C'}): stopping the services")
            return 130
        except Exception as exc:
            for service in services.started:
                if service.process.poll() is not None:
                    progress(f"{service.name} exited early:\n{service.log_tail()}")
            progress(f"benchmark failed: {exc}")
            return 2
        finally:
            services.stop_all()
            error_lines = bench_error_lines(services.workdir)
    compare = comparisons(bench.points)
    report: dict[str, Any] = {
        "meta": {
            "cores": os.cpu_count(),
            "workers": plan.workers,
            "python": platform.python_version(),
            "machine": platform.platform(),
            "loadavg_1m_at_start": load_at_start,
            "wall_seconds": round(time.monotonic() - started, 1),
            "startup_seconds": bench.startup_seconds,
            "peak_process_rss_mb": worker_kb / 1024,
            "tollway_error_lines": len(error_lines),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "mocks": {"chunks": CHUNKS, "slow_ttft_ms": SLOW_TTFT_MS, "slow_chunk_ms": SLOW_CHUNK_MS},
        },
        "points": bench.points,
        "compare": compare,
        "longstream": bench.long,
        "targets": target_report(bench.points, compare, bench.long, worker_kb / 1024),
        "check": check(bench.points, compare, bench.long, error_lines),
    }
    print(render(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if args.check and not report["check"]["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
