"""The heap trimmer hands freed memory back to the operating system (glibc)."""

from __future__ import annotations

import sys

import pytest

from tollway.ops.memory import heap_trimmer


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim is Linux-only")
def test_trim_returns_freed_heap_memory() -> None:
    trim = heap_trimmer()
    assert trim is not None
    trim()
    before = _rss_kb()
    # Many small blocks (below the mmap threshold: they live in the heap), then all but the last
    # freed: without a trim the heap keeps the pages, since the last block pins its top.
    blocks = [bytearray(4000) for _ in range(25_000)]
    keep = blocks[-1]
    del blocks
    grown = _rss_kb()
    trim()
    after = _rss_kb()
    assert grown - before > 50_000  # the blocks took ~100 MB
    assert after < grown - 50_000  # and the trim gave most of it back
    assert keep


def test_sqlite_statement_sizes_cover_every_batch_with_few_shapes() -> None:
    """SQLite's driver caches each prepared statement: batches of any size use about a dozen."""
    from tollway.usage.log_counts import statement_sizes

    shapes: set[int] = set()
    for rows in range(0, 6_000):
        sizes = statement_sizes(rows, 1_500)
        assert sum(sizes) == rows
        assert len(sizes) <= rows // 1_500 + 11
        shapes.update(sizes)
    assert len(shapes) <= 12
