"""Everything one process holds while it serves: settings, databases, caches, background jobs.

``create_app`` builds one :class:`Runtime`; the lifespan starts and stops it. State lives here,
never in module globals, so tests can run several apps side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import func, select

from tollway.db.engine import Database
from tollway.db.models import Setup, User
from tollway.db.models.user import ROLE_ROOT
from tollway.node_sync import NodeCounters
from tollway.ops.health import DatabaseHealth
from tollway.ops.memory import TRIM_SECONDS, heap_trimmer
from tollway.ops.metrics import Metrics
from tollway.ops.notify import DatabaseDirectory, Notifier
from tollway.ops.profiler import CpuMonitor, CpuProfiler
from tollway.ops.quota_warnings import QuotaWarnings
from tollway.options import REGISTRY, Options
from tollway.relay.service import RelayService
from tollway.settings import Settings
from tollway.usage.partition_jobs import partition_job
from tollway.usage.retention import retention_job

log = logging.getLogger("tollway.runtime")

SHUTDOWN_DRAIN_SECONDS = 8
METRICS_SAMPLE_SECONDS = 5


class Runtime:
    def __init__(self, settings: Settings, *, counters: NodeCounters | None = None) -> None:
        self.settings = settings
        self.db = Database(settings)
        self.counters = counters or NodeCounters.from_environment()
        self.options = Options(REGISTRY, self.db, self.counters)
        self.metrics = Metrics()
        self.relay = RelayService(settings, self.db, self.options, self.counters, self.metrics)
        self.notifier = Notifier(
            self.options,
            DatabaseDirectory(self.db),
            redis_url=settings.redis_conn_string,
            limit_count=settings.notify_limit_count,
            limit_minutes=settings.notification_limit_duration_minute,
        )
        self.quota_warnings = QuotaWarnings(self.notifier, self.options, self.relay.accounts)
        self.relay.engine.on_settled = self.quota_warnings.after_settlement
        self.relay.notifier = self.notifier
        self.health = DatabaseHealth(self.db, settings.redis_conn_string)
        self.profiler = CpuProfiler(Path(settings.pprof_dir))
        self.started_at = int(time.time())
        self.setup_done = False
        self._jobs: list[asyncio.Task[None]] = []
        self._metrics_seen: dict[object, int] = {}  # counters sampled from the writer and the rollup

    async def start(self, *, run_migrations: bool) -> None:
        await self.db.check_reachable()
        if run_migrations:
            from tollway.db.migrate import migrate  # alembic is big: only a migrating process loads it

            await migrate(self.db)
        await self.options.load()
        await self.refresh_setup_state()
        await self.relay.start()
        await self.notifier.start()
        self._jobs.append(asyncio.create_task(self.health.watch(), name="database health"))
        frequency = self.settings.sync_frequency
        self.every(frequency, self.options.load, "options re-sync")
        self.every(frequency, self.relay.channels.reload, "channel re-sync")
        self.every(10, self.relay.lease_maintenance, "quota lease heartbeat")
        self.every(60, self.relay.balances.reclaim_expired, "reclaim leases of dead workers")
        self.every(METRICS_SAMPLE_SECONDS, self._sample_metrics_job, "metrics sampler")
        self._jobs.append(asyncio.create_task(self.relay.rollup_job(), name="quota_data rollup"))
        trim = heap_trimmer()
        if trim is not None:
            self.every(TRIM_SECONDS, lambda: asyncio.to_thread(trim), "heap trim")
        if self.settings.enable_pprof:  # stopped with the other jobs; a capture in progress is dropped
            monitor = CpuMonitor.from_settings(self.profiler, self.settings)
            self._jobs.append(asyncio.create_task(monitor.run(), name="CPU profiler monitor"))
        if self.settings.is_master:
            self.every(3600, lambda: retention_job(self), "log retention")
            self.every(86_400, lambda: partition_job(self), "log partitions")

    async def stop(self) -> None:
        """Called after the server finished its in-flight requests: drains and flushes everything."""
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        self._jobs.clear()
        await self.quota_warnings.stop()
        await self.notifier.stop()
        await self.health.aclose()
        try:
            # Bounded so that the process exits within the 30 s service managers allow; a database
            # that refuses writes for that long loses the tail (leases are reclaimed by others).
            async with asyncio.timeout(SHUTDOWN_DRAIN_SECONDS):
                await self.relay.stop()
        except TimeoutError:
            log.error(
                "shutdown: the database did not take the last log rows within %d s", SHUTDOWN_DRAIN_SECONDS
            )
        finally:
            self.sample_metrics()
            await self.db.dispose()

    async def _sample_metrics_job(self) -> None:
        self.sample_metrics()

    def sample_metrics(self) -> None:
        """Metrics that are read rather than counted where they happen: the log writer's and the
        rollup's counters (by difference), the log queue and the database pools. Runs every few
        seconds, before each scrape, and once more at shutdown."""
        writer, rollup, metrics = self.relay.writer, self.relay.rollup, self.metrics
        metrics.log_queue_depth.set(writer.queue_depth)
        seen = self._metrics_seen
        for counter, now in (
            (metrics.log_rows_written, writer.rows_written),
            (metrics.log_batch_failures, writer.failures),
            (metrics.rollup_flushes, rollup.flushes),
            (metrics.rollup_rows, rollup.buckets_written),
        ):
            counter.inc(now - seen.get(counter, 0))
            seen[counter] = now
        for name, pool in self.db.pool_usage().items():
            for state, count in pool.items():
                metrics.db_connections(name, state).set(count)

    async def refresh_setup_state(self) -> bool:
        """True once a root user exists. Cached: only checked again while still false."""
        if not self.setup_done:
            async with self.db.session() as session:
                roots = await session.scalar(
                    select(func.count()).select_from(User).where(User.role == ROLE_ROOT)
                )
                marked = await session.scalar(select(func.count()).select_from(Setup))
            self.setup_done = bool(roots) or bool(marked)
        return self.setup_done

    def every(self, seconds: float, job: Callable[[], Awaitable[object]], name: str) -> None:
        """Run ``job`` every ``seconds`` until stop; a failing run is logged and retried next time."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background job %s failed", name)

        self._jobs.append(asyncio.create_task(loop(), name=name))
