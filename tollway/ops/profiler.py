"""CPU profiles of a running worker: on demand, and when process CPU stays high (``ENABLE_PPROF``).

new-api's monitor samples CPU each second and, past 80 %, writes a 10-second pprof file. Tollway
does the same in-process with pyinstrument, a statistical profiler that follows the event loop:
samples are taken on the loop thread (``async_mode="disabled"``: every task and callback the loop
runs shows up, interleaved, which is what a process-wide CPU profile needs). Work done in other
threads (``asyncio.to_thread``, aiosqlite's connection thread) is not sampled.

Why these choices:

* CPU percent is ``time.process_time()`` (all threads, user + system) over wall time, so 100 % is
  one core, the most an event loop can use. "Stays above" means ``CONSECUTIVE_SAMPLES`` samples in a
  row above the threshold: one slow request does not trigger a capture, a saturated loop does.
* One capture at a time per process (the sampler hooks the interpreter, which is process state):
  a second request answers :class:`ProfilerBusy` instead of stacking profiles on top of each other.
* Files are ``cpu-<UTC YYYYmmddHHMMSS>-<pid>.pyisession.gz`` (workers share the directory): the
  session JSON, gzipped because its repeated stacks are large and compress 20 to 60 times. Files
  are private to the owner (they show internals) and only the newest ``KEEP_FILES`` are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import orjson

from tollway.settings import Settings

if TYPE_CHECKING:
    from pyinstrument.session import Session

log = logging.getLogger("tollway.profiler")

SAMPLE_INTERVAL = 0.002  # seconds between stack samples: at most 500 a second
CONSECUTIVE_SAMPLES = 3
KEEP_FILES = 100
SUFFIX = ".pyisession.gz"
NAME_PATTERN = re.compile(r"cpu-\d{14}-\d+(?:-\d+)?\.pyisession(?:\.gz)?")

Format = Literal["html", "speedscope", "text"]
FORMATS: tuple[Format, ...] = get_args(Format)
EXTENSIONS: dict[Format, str] = {"html": ".html", "speedscope": ".speedscope.json", "text": ".txt"}

# The sampler is per process, so is the "one capture at a time" rule (several apps may share a loop).
_capture_lock = threading.Lock()


class ProfilerBusy(Exception):
    """A capture is already running in this process."""


class ProfileFileError(ValueError):
    """A name that is not a profile file, or a file that is not a readable profile."""


@dataclass(frozen=True)
class ProfileFile:
    name: str
    size: int
    modified: int  # Unix seconds


class CpuProfiler:
    """Captures CPU profiles of this process into ``directory``; see the module docstring."""

    def __init__(
        self, directory: Path, *, sample_interval: float = SAMPLE_INTERVAL, keep: int = KEEP_FILES
    ) -> None:
        self.directory = directory
        self.sample_interval = sample_interval
        self.keep = keep

    @property
    def busy(self) -> bool:
        return _capture_lock.locked()

    async def capture(self, seconds: float, *, reason: str = "on demand") -> Path:
        """Profile the event loop thread for ``seconds`` and write the file; answers its path.

        Raises :class:`ProfilerBusy` at once if a capture is running. Cancelled, it stops the
        sampler and writes nothing."""
        if seconds <= 0:
            raise ValueError("a capture lasts more than 0 seconds")
        if not _capture_lock.acquire(blocking=False):
            raise ProfilerBusy(f"a CPU profile is already being captured in this process (pid {os.getpid()})")
        try:
            started = datetime.now(UTC)
            from pyinstrument import Profiler  # imported on use: workers that never profile skip it

            profiler = Profiler(interval=self.sample_interval, async_mode="disabled")
            profiler.start(target_description=f"Tollway pid {os.getpid()}: {reason}, {seconds:g} s")
            try:
                await asyncio.sleep(seconds)
            finally:
                session = profiler.stop()
            return await asyncio.to_thread(self._save, session, started)
        finally:
            _capture_lock.release()

    def _save(self, session: Session, started: datetime) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = gzip.compress(orjson.dumps(session.to_json()), compresslevel=6)
        stem = f"cpu-{started:%Y%m%d%H%M%S}-{os.getpid()}"
        for attempt in range(1, 1000):
            path = self.directory / (stem + (f"-{attempt}" if attempt > 1 else "") + SUFFIX)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            self._prune()
            return path
        raise FileExistsError(f"no free file name for {stem} in {self.directory}")

    def _prune(self) -> None:
        """Keep the newest ``keep`` files: a monitor firing for hours must not fill the disk."""
        for old in list_profiles(self.directory)[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / old.name).unlink()


class CpuMeter:
    """Process CPU percent (100 = one core) between successive :meth:`sample` calls."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def sample(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        elapsed = wall - self._wall
        percent = 100.0 * (cpu - self._cpu) / elapsed if elapsed > 0 else 0.0
        self._cpu, self._wall = cpu, wall
        return percent


class CpuMonitor:
    """Samples process CPU every ``interval`` s; after ``consecutive`` samples above ``threshold``
    percent it captures a ``duration``-second profile, then rests ``cooldown`` s."""

    def __init__(
        self,
        profiler: CpuProfiler,
        *,
        threshold: float,
        duration: float,
        cooldown: float,
        interval: float,
        consecutive: int = CONSECUTIVE_SAMPLES,
    ) -> None:
        self.profiler = profiler
        self.threshold = threshold
        self.duration = duration
        self.cooldown = cooldown
        self.interval = interval
        self.consecutive = consecutive
        self.samples = 0
        self.last_percent = 0.0
        self.captures = 0
        self.last_capture: Path | None = None

    @classmethod
    def from_settings(cls, profiler: CpuProfiler, settings: Settings) -> CpuMonitor:
        return cls(
            profiler,
            threshold=settings.pprof_cpu_threshold,
            duration=settings.pprof_duration,
            cooldown=settings.pprof_cooldown,
            interval=settings.pprof_interval,
        )

    async def run(self) -> None:
        """Runs until cancelled (the runtime's stop)."""
        log.info(
            "CPU profiler armed: %g s profile into %s when process CPU > %g %% for %d samples %g s apart",
            self.duration,
            self.profiler.directory,
            self.threshold,
            self.consecutive,
            self.interval,
        )
        meter = CpuMeter()
        streak = 0
        while True:
            await asyncio.sleep(self.interval)
            self.last_percent = meter.sample()
            self.samples += 1
            streak = streak + 1 if self.last_percent > self.threshold else 0
            if streak < self.consecutive:
                continue
            streak = 0
            await self._capture()
            await asyncio.sleep(self.cooldown)
            meter = CpuMeter()  # the capture's own overhead and the rest do not count

    async def _capture(self) -> None:
        log.warning(
            "process CPU %.0f %% above %g %% for %d samples: capturing a %g s CPU profile",
            self.last_percent,
            self.threshold,
            self.consecutive,
            self.duration,
        )
        try:
            path = await self.profiler.capture(self.duration, reason=f"CPU above {self.threshold:g} %")
        except ProfilerBusy:
            log.info("CPU profile skipped: another capture is running in this process")
        except Exception:
            log.exception("CPU profile capture failed")
        else:
            self.captures += 1
            self.last_capture = path
            log.warning("CPU profile written to %s", path)


def list_profiles(directory: Path) -> list[ProfileFile]:
    """The profile files in ``directory``, newest first (none when it does not exist)."""
    found: list[tuple[int, ProfileFile]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not NAME_PATTERN.fullmatch(entry.name):
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:  # pruned by another worker meanwhile
            continue
        found.append((stat.st_mtime_ns, ProfileFile(entry.name, stat.st_size, int(stat.st_mtime))))
    found.sort(key=lambda pair: (pair[0], pair[1].name), reverse=True)
    return [item for _, item in found]


def profile_path(directory: Path, name: str) -> Path:
    """The file called ``name`` in ``directory``; only profile names are accepted (no paths)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ProfileFileError(f"{name!r} is not a profile file name (cpu-<time>-<pid>{SUFFIX})")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"no profile called {name}")
    return path


def load_session(path: Path) -> Session:
    """Read a capture (gzipped or plain pyinstrument session JSON)."""
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        from pyinstrument.session import Session

        session: Session = Session.from_json(orjson.loads(raw))
    except (OSError, EOFError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ProfileFileError(f"{path} is not a pyinstrument profile: {exc}") from None
    return session


def render(session: Session, fmt: Format) -> str:
    """``html``: interactive call tree and timeline; ``speedscope``: JSON for speedscope.app's
    flame graph; ``text``: the call tree."""
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer, SpeedscopeRenderer

    if fmt == "html":
        text: str = HTMLRenderer().render(session)
    elif fmt == "speedscope":
        text = SpeedscopeRenderer().render(session)
    else:
        text = ConsoleRenderer(unicode=True, color=False).render(session)
    return text


def render_file(path: Path, fmt: Format) -> str:
    return render(load_session(path), fmt)
