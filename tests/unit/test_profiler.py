"""The CPU profiler for real: pyinstrument samples this test's event loop while a burner spends
CPU on it; the monitor measures process CPU with ``time.process_time`` and captures (or not)."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tollway.cli_profile import profile as profile_command
from tollway.ops.profiler import (
    CpuMeter,
    CpuMonitor,
    CpuProfiler,
    ProfileFileError,
    ProfilerBusy,
    list_profiles,
    load_session,
    profile_path,
    render_file,
)

BUSY_NAME = "burn_cpu_for_profile_test"


def burn_cpu_for_profile_test(cpu_seconds: float) -> int:
    """Spend ``cpu_seconds`` of CPU time in Python code (a name to look for in the profiles)."""
    end = time.process_time() + cpu_seconds
    total = 0
    while time.process_time() < end:
        total += sum(i * i for i in range(300))
    return total


@asynccontextmanager
async def burning(busy: float = 0.02, rest: float = 0.01) -> AsyncIterator[None]:
    """Keep the event loop about ``busy / (busy + rest)`` busy (~66 % of a core) until the block ends."""
    stop = asyncio.Event()

    async def burner() -> None:
        while not stop.is_set():
            burn_cpu_for_profile_test(busy)
            await asyncio.sleep(rest)

    task = asyncio.create_task(burner())
    try:
        yield
    finally:
        stop.set()
        await task


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def captured(directory: Path, seconds: float = 0.4) -> Path:
    async with burning():
        return await CpuProfiler(directory).capture(seconds)


async def test_cpu_meter_reads_process_cpu_against_wall_time() -> None:
    """Percent x wall time is the CPU spent, however much of a core the machine gives us."""
    meter = CpuMeter()
    started = time.monotonic()
    await asyncio.sleep(0.2)
    idle = meter.sample() / 100 * (time.monotonic() - started)
    started = time.monotonic()
    burn_cpu_for_profile_test(0.2)
    busy = meter.sample() / 100 * (time.monotonic() - started)
    assert 0 <= idle < 0.05
    assert 0.19 < busy < 0.3


async def test_monitor_over_threshold_writes_a_profile_of_the_busy_code(tmp_path: Path) -> None:
    directory = tmp_path / "pprof"
    # A low threshold: on a shared machine the burner may get only a fraction of a core.
    monitor = CpuMonitor(CpuProfiler(directory), threshold=5, duration=0.5, cooldown=60, interval=0.1)
    async with burning():
        task = asyncio.create_task(monitor.run())
        try:
            await wait_for(lambda: monitor.captures == 1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert monitor.samples >= 3
    files = list_profiles(directory)
    assert [item.name for item in files] == [monitor.last_capture.name]  # type: ignore[union-attr]
    name = files[0].name
    assert name.startswith("cpu-") and name.endswith(f"-{os.getpid()}.pyisession.gz")
    assert time.strftime("%Y%m%d", time.gmtime()) in name
    assert (directory / name).stat().st_mode & 0o777 == 0o600
    session = load_session(directory / name)
    assert 0.4 < session.duration < 5 and session.sample_count > 10
    text = render_file(directory / name, "text")
    assert BUSY_NAME in text
    html = render_file(directory / name, "html")
    assert html.lstrip().lower().startswith("<!doctype html") and BUSY_NAME in html
    speedscope = orjson.loads(render_file(directory / name, "speedscope"))
    assert BUSY_NAME in {frame["name"] for frame in speedscope["shared"]["frames"]}


async def test_monitor_under_threshold_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "pprof"
    monitor = CpuMonitor(CpuProfiler(directory), threshold=95, duration=0.5, cooldown=0, interval=0.1)
    async with burning():
        task = asyncio.create_task(monitor.run())
        await wait_for(lambda: monitor.samples >= 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert 5 < monitor.last_percent < 95  # the burner did burn, just not enough
    assert monitor.captures == 0
    assert list_profiles(directory) == []
    assert not directory.exists()


async def test_monitor_needs_consecutive_samples(tmp_path: Path) -> None:
    """Bursts shorter than the required streak never trigger, however hot they are."""
    directory = tmp_path / "pprof"
    monitor = CpuMonitor(
        CpuProfiler(directory), threshold=5, duration=0.2, cooldown=0, interval=0.1, consecutive=1000
    )
    async with burning():
        task = asyncio.create_task(monitor.run())
        await wait_for(lambda: monitor.samples >= 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert monitor.last_percent > 5 and monitor.captures == 0 and list_profiles(directory) == []


async def test_one_capture_at_a_time(tmp_path: Path) -> None:
    first, second = CpuProfiler(tmp_path / "a"), CpuProfiler(tmp_path / "b")
    running = asyncio.create_task(first.capture(0.5))
    await wait_for(lambda: first.busy)
    assert second.busy  # per process, not per object
    with pytest.raises(ProfilerBusy, match="already being captured"):
        await second.capture(0.2)
    path = await running
    assert path.parent == tmp_path / "a" and not first.busy
    assert not (tmp_path / "b").exists()
    assert (await second.capture(0.1)).parent == tmp_path / "b"


async def test_cancelled_capture_stops_sampling_and_writes_nothing(tmp_path: Path) -> None:
    profiler = CpuProfiler(tmp_path)
    task = asyncio.create_task(profiler.capture(30))
    await wait_for(lambda: profiler.busy)
    assert sys.getprofile() is not None  # pyinstrument's sampler is hooked in
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sys.getprofile() is None and not profiler.busy
    assert list_profiles(tmp_path) == []


async def test_old_files_are_pruned_and_names_stay_unique(tmp_path: Path) -> None:
    profiler = CpuProfiler(tmp_path, keep=2)
    paths = [await profiler.capture(0.05) for _ in range(3)]
    assert len({path.name for path in paths}) == 3
    assert [item.name for item in list_profiles(tmp_path)] == [paths[2].name, paths[1].name]
    (tmp_path / "notes.txt").write_text("not a profile")
    assert len(list_profiles(tmp_path)) == 2


async def test_names_are_checked_and_bad_files_refused(tmp_path: Path) -> None:
    path = await CpuProfiler(tmp_path).capture(0.05)
    assert profile_path(tmp_path, path.name) == path
    for bad in ("../secret", "cpu-1-2.pyisession.gz", "/etc/passwd", f"{path.name}/x", "x" + path.name):
        with pytest.raises(ProfileFileError):
            profile_path(tmp_path, bad)
    with pytest.raises(FileNotFoundError):
        profile_path(tmp_path, "cpu-20200101000000-1.pyisession.gz")
    broken = tmp_path / "cpu-20200101000000-1.pyisession.gz"
    broken.write_bytes(gzip.compress(b"{not json"))
    with pytest.raises(ProfileFileError, match="not a pyinstrument profile"):
        load_session(broken)


async def test_cli_render_and_list(tmp_path: Path) -> None:
    path = await captured(tmp_path / "pprof")
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(profile_command, list(args), env={"PPROF_DIR": str(tmp_path / "pprof")})
        return result.exit_code, result.output

    code, output = await asyncio.to_thread(run, "render", str(path), "--format", "text")
    assert code == 0, output
    assert BUSY_NAME in output and "Samples:" in output

    code, output = await asyncio.to_thread(run, "render", str(path))
    html = path.with_name(path.name.removesuffix(".pyisession.gz") + ".html")
    assert code == 0 and f"wrote {html}" in output
    assert BUSY_NAME in html.read_text()

    target = tmp_path / "flame.json"
    code, output = await asyncio.to_thread(run, "render", str(path), "-f", "speedscope", "-o", str(target))
    assert code == 0, output
    assert orjson.loads(target.read_bytes())["$schema"].startswith("https://www.speedscope.app/")

    code, output = await asyncio.to_thread(run, "render", str(path), "-f", "flamegraph")
    assert code == 2 and "flamegraph" in output

    not_profile = tmp_path / "plain.txt"
    not_profile.write_text("hello")
    code, output = await asyncio.to_thread(run, "render", str(not_profile))
    assert code == 1 and "not a pyinstrument profile" in output

    code, output = await asyncio.to_thread(run, "list")
    assert code == 0 and path.name in output and "1 profile(s)" in output
    code, output = await asyncio.to_thread(run, "list", "--dir", str(tmp_path / "empty"))
    assert code == 0 and "no profiles in" in output
