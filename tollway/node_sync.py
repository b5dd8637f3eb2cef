"""Change counters shared by the workers of one node.

``tollway serve`` runs several worker processes. A change made through ``/api`` on one of them
must apply to the next request on every worker (CONTRACT §1), without a database read per
request. The worker that writes bumps a counter in a small memory-mapped file; every worker
compares the counter with the value it last saw (a few hundred nanoseconds) and reloads the
affected cache when it moved. Other nodes see changes through the periodic re-sync.

Without a shared file (one process: tests, ``python -m tollway`` with one worker) the counters are
plain process memory.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from enum import IntEnum
from pathlib import Path

NODE_SYNC_ENV = "TOLLWAY_NODE_SYNC_FILE"
_SLOT = struct.Struct("<Q")
_SLOTS = 16


class Topic(IntEnum):
    """What changed. Each topic is one 8-byte counter."""

    OPTIONS = 0
    CHANNELS = 1
    TOKENS = 2
    USERS = 3


class NodeCounters:
    """Monotonic per-topic counters, shared through ``path`` when given."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._fd: int | None = None
        if path:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < _SLOT.size * _SLOTS:
                os.ftruncate(self._fd, _SLOT.size * _SLOTS)
            self._map: mmap.mmap | bytearray = mmap.mmap(self._fd, _SLOT.size * _SLOTS)
        else:
            self._map = bytearray(_SLOT.size * _SLOTS)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> NodeCounters:
        path = (environ if environ is not None else os.environ).get(NODE_SYNC_ENV)
        return cls(path or None)

    @staticmethod
    def create_file(directory: Path) -> str:
        """Make a fresh counters file for a node; the caller exports its path to the workers."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f".tollway-node-{os.getpid()}.sync"
        with open(path, "wb") as handle:
            handle.write(bytes(_SLOT.size * _SLOTS))
        return str(path)

    def read(self, topic: Topic) -> int:
        return int(_SLOT.unpack_from(self._map, topic * _SLOT.size)[0])

    def bump(self, topic: Topic) -> int:
        """Advance ``topic``'s counter (atomically across processes) and return the new value."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            value = self.read(topic) + 1
            _SLOT.pack_into(self._map, topic * _SLOT.size, value)
            return value
        finally:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Watermark:
    """What one cache last saw of a topic: ``changed()`` is true once after every bump."""

    def __init__(self, counters: NodeCounters, topic: Topic) -> None:
        self._counters = counters
        self._topic = topic
        self._seen = counters.read(topic)

    def changed(self) -> bool:
        current = self._counters.read(self._topic)
        if current != self._seen:
            self._seen = current
            return True
        return False
