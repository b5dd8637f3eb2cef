"""The relay's parts for one process, started and stopped in order.

Start: channels loaded, leases registered (and a dead process's leases reclaimed), log writer and
HTTP client running. Stop (after the server stopped taking requests and finished the in-flight
ones): pending log submissions queued, the log queue drained and the rollup flushed, leases
returned, HTTP client closed. Nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tollway.billing.balances import LeaseBalanceStore
from tollway.db.engine import Database
from tollway.node_sync import NodeCounters
from tollway.ops.metrics import Metrics
from tollway.ops.notify import Notifier
from tollway.options import DATA_EXPORT_ENABLED, DATA_EXPORT_INTERVAL, LOG_CONSUME_ENABLED, Options
from tollway.providers.registry import ProviderRegistry
from tollway.relay.accounts import AccountCache
from tollway.relay.channel import ChannelSnapshot
from tollway.relay.channel_cache import ChannelCache
from tollway.relay.engine import RelayEngine
from tollway.relay.health import ChannelHealth, disable_channel
from tollway.relay.upstream import UpstreamClient
from tollway.settings import Settings
from tollway.usage.log_writer import LogWriter
from tollway.usage.rollup import QuotaRollup

log = logging.getLogger("tollway.relay.service")

AZURE_DEFAULT_API_VERSION = "2024-12-01-preview"


class RelayService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        options: Options,
        counters: NodeCounters,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics or Metrics()
        self.accounts = AccountCache(db, counters, ttl=settings.sync_frequency)
        self.channels = ChannelCache(db, counters)
        self.balances = LeaseBalanceStore(db)
        self.rollup = QuotaRollup(enabled=lambda: options.get(DATA_EXPORT_ENABLED))
        self.writer = LogWriter(
            db,
            self.balances,
            rollup=self.rollup,
            log_consume_enabled=lambda: options.get(LOG_CONSUME_ENABLED),
        )
        self.writer.on_batch = self.metrics.log_batch_seconds.observe
        self.upstream = UpstreamClient(
            relay_timeout=settings.relay_timeout, streaming_timeout=settings.streaming_timeout
        )
        self.health = ChannelHealth(options)
        self._options = options
        self._disabling: set[asyncio.Task[None]] = set()
        self.notifier: Notifier | None = None  # set by the runtime: channel notices to the root user
        self.engine = RelayEngine(
            options=options,
            accounts=self.accounts,
            channels=self.channels,
            balances=self.balances,
            writer=self.writer,
            providers=ProviderRegistry(AZURE_DEFAULT_API_VERSION),
            upstream=self.upstream,
            health=self.health,
            on_channel_failure=self._disable_later,
            metrics=self.metrics,
        )

    async def start(self) -> None:
        await self.channels.reload()
        await self.balances.start()
        await self.writer.start()
        await self.upstream.start()

    async def stop(self) -> None:
        await self.engine.drain()
        if self._disabling:
            await asyncio.gather(*self._disabling, return_exceptions=True)
        await self.writer.stop()
        await self.balances.stop()
        await self.upstream.stop()

    async def rollup_job(self) -> None:
        await self.rollup.run(self.db, lambda: float(self._options.get(DATA_EXPORT_INTERVAL)))

    async def lease_maintenance(self) -> None:
        await self.balances.heartbeat()
        await self.balances.return_idle()

    def _disable_later(self, channel: ChannelSnapshot, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._disable(channel, reason))
        self._disabling.add(task)
        task.add_done_callback(self._disabling.discard)

    async def _disable(self, channel: ChannelSnapshot, reason: str) -> None:
        try:
            async with self.db.session() as session, session.begin():
                changed = await disable_channel(session, channel.id, reason, int(time.time()))
        except Exception:
            log.exception("could not disable channel #%d", channel.id)
            return
        if changed:
            self.channels.changed()
            self.metrics.channel_status_changes(str(channel.id), "disabled").inc()
            log.warning("channel #%d (%s) was disabled automatically: %s", channel.id, channel.name, reason)
            if self.notifier is not None:
                await self.notifier.notify_channel_status(
                    channel.id, channel.name, enabled=False, reason=reason
                )
