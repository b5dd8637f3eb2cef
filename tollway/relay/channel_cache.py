"""The routing table of this process: every channel as a snapshot, indexed by (group, model).

Rebuilt from the database at start, every ``SYNC_FREQUENCY`` seconds, and at once on every worker
of this node when the management API or the health checker changes a channel.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from tollway.db.engine import Database
from tollway.db.models import Channel
from tollway.node_sync import NodeCounters, Topic, Watermark
from tollway.relay.channel import ChannelSnapshot
from tollway.relay.routing import AbilityIndex, ChannelSelector

log = logging.getLogger("tollway.relay.channels")


class ChannelCache:
    def __init__(self, db: Database, counters: NodeCounters) -> None:
        self._db = db
        self._counters = counters
        self._mark = Watermark(counters, Topic.CHANNELS)
        self.by_id: dict[int, ChannelSnapshot] = {}
        self.index = AbilityIndex(())
        self.selector = ChannelSelector(self.index)
        self._stale = True

    @property
    def stale(self) -> bool:
        """True when a reload is due; the caller awaits :meth:`reload` (kept out of the hot path)."""
        if self._mark.changed():
            self._stale = True
        return self._stale

    async def reload(self) -> None:
        async with self._db.session() as session:
            rows = (await session.scalars(select(Channel))).all()
        snapshots = [ChannelSnapshot.from_row(row) for row in rows]
        index = AbilityIndex(snapshots)
        self.by_id = {snapshot.id: snapshot for snapshot in snapshots}
        self.index = index
        self.selector = ChannelSelector(index)
        self._stale = False

    def changed(self) -> None:
        """Called after a channel was written: this worker reloads now, the others next request."""
        self._stale = True
        self._counters.bump(Topic.CHANNELS)
        self._mark.changed()
