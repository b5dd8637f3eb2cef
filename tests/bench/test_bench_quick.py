"""The CI-sized benchmark, end to end: ``bench/run.py --quick --check`` as the Makefile runs it.

It starts the mocks and ``tollway serve`` (two workers, SQLite) itself and compares Tollway with the
mock measured in the same run, so the verdict is a ratio, not an absolute time. The rule itself is
tested on made-up numbers below: a healthy run passes, a five-fold slowdown fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.run import check, comparisons

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 85  # seconds for the whole quick run (25-35 s on a 2-core machine, busy or not)
POINT_FIELDS = ("rps", "p50", "p90", "p99", "cpu_us", "rss_tree_mb")


def run_quick(out: Path) -> subprocess.CompletedProcess[str]:
    """Run the quick benchmark; on timeout SIGTERM it (it stops what it started), then SIGKILL."""
    cmd = [sys.executable, "bench/run.py", "--quick", "--check", "--json", str(out)]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        pytest.fail(f"quick benchmark took more than {TIMEOUT} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_benchmark_runs_every_scenario_and_passes_its_check(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install wrk)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "quick.json"
    done = run_quick(out)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())

    for scenario in ("chat", "stream", "ttft"):
        for target in ("direct", "tollway"):
            points = [p for p in report["points"] if p["scenario"] == scenario and p["target"] == target]
            assert points, f"no {scenario} point for {target}"
            for point in points:
                assert all(is_number(point[name]) for name in POINT_FIELDS), point
                assert point["rps"] > 0 and point["requests"] > 0 and point["errors"] == 0, point
        compared = [c for c in report["compare"] if c["scenario"] == scenario]
        assert compared and all(is_number(c["rps_ratio"]) and c["rps_ratio"] > 0 for c in compared)
    assert all(is_number(c["added_ttft_p50_ms"]) for c in report["compare"] if c["scenario"] == "ttft")

    long = {r["target"]: r for r in report["longstream"]}
    assert set(long) == {"direct", "tollway"}
    for row in long.values():
        assert row["events"] >= row["chunks"] and row["errors"] == 0, row
        assert all(is_number(row[k]) for k in ("rss_start_mb", "rss_peak_mb", "rss_end_mb", "seconds"))

    assert report["check"]["passed"], report["check"]["failures"]
    assert report["check"]["conc"] == 64 and is_number(report["check"]["ratio"])
    assert "check passed" in done.stdout


def point(scenario: str, conc: int, target: str, rps: float, cpu_us: float, **extra: Any) -> dict[str, Any]:
    base = {"scenario": scenario, "conc": conc, "target": target, "rps": rps, "requests": int(rps)}
    return base | {"cpu_us": cpu_us, "errors": 0, "non2xx": 0, "p50": 1000, "p90": 2000, "p99": 3000} | extra


@pytest.mark.parametrize(
    ("direct", "tollway", "passes"),
    [
        ((30_000, 10), (1_100, 350), True),  # today's build on a busy 2-core machine
        ((57_000, 9), (1_000, 400), True),  # ... a bad single 1 s pair (ratio 0.0175)
        ((30_000, 10), (220, 1_750), False),  # the same build five times slower
        ((30_000, 10), (1_100, 1_750), False),  # five times the CPU, hidden by a lucky rps ratio
        ((30_000, 10), (220, 350), False),  # five times slower without using more CPU (waiting)
        ((110_000, 9), (7_300, 220), True),  # today's build on an idle machine
        ((8_000, 20), (400, 500), True),  # a starved machine: the cap keeps the bar where it was
        ((8_000, 20), (40, 500), False),
    ],
)
def test_check_rule_catches_a_five_fold_slowdown(
    direct: tuple[float, float], tollway: tuple[float, float], passes: bool
) -> None:
    points = [point("chat", 64, "direct", *direct), point("chat", 64, "tollway", *tollway)]
    assert check(points, comparisons(points), [])["passed"] is passes


def test_check_rule_fails_on_errors_non_2xx_and_a_growing_long_stream() -> None:
    healthy = [point("chat", 64, "direct", 30_000, 10), point("chat", 64, "tollway", 1_100, 350)]
    assert check(healthy, comparisons(healthy), [])["passed"]
    logged_error = ["[ERR] 2026/11/30 - 12:39:10 | SYSTEM | Exception in ASGI application"]
    failed = check(healthy, comparisons(healthy), [], logged_error)
    assert not failed["passed"] and "1 ERR lines" in failed["failures"][0]
    errors = [healthy[0], point("chat", 64, "tollway", 900, 850, errors=20)]
    assert not check(errors, comparisons(errors), [])["passed"]
    non_2xx = [healthy[0], point("chat", 64, "tollway", 900, 850, errors=1, non2xx=1)]
    assert not check(non_2xx, comparisons(non_2xx), [])["passed"]
    long = {"target": "tollway", "errors": 0, "events": 100_004, "chunks": 100_000, "rss_growth_mb": 3.0}
    assert check(healthy, comparisons(healthy), [long])["passed"]
    assert not check(healthy, comparisons(healthy), [long | {"rss_growth_mb": 90.0}])["passed"]
    assert not check(healthy, comparisons(healthy), [long | {"events": 5_000, "errors": 1}])["passed"]
