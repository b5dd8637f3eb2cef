"""Handing freed heap memory back to the operating system.

glibc's allocator keeps memory a process has freed for reuse, so a worker's resident size stays at
the high-water mark of its busiest moment (a burst of requests, a large body) long after it.
``malloc_trim(0)`` releases the free pages at the top of the heap and inside it. A worker calls it
every few seconds in a thread: it takes a few milliseconds and holds no lock Python needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable

TRIM_SECONDS = 10.0


def heap_trimmer() -> Callable[[], None] | None:
    """A function releasing free heap memory, or None where there is none (not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        malloc_trim = libc.malloc_trim  # glibc only: musl (Alpine) has none
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int

    def trim() -> None:
        malloc_trim(0)

    return trim
