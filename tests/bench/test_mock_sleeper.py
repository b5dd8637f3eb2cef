"""The benchmark mock's delays: never early, and in deadline order even a fraction of a millisecond
apart (the event loop's timers, whole milliseconds under uvloop, would wake such sleepers together)."""

from __future__ import annotations

import asyncio
import time

from bench.mock_upstream import Sleeper


async def test_sleepers_wake_in_deadline_order_and_never_early() -> None:
    sleeper = Sleeper(asyncio.get_running_loop())
    woke: list[tuple[float, float]] = []

    async def nap(seconds: float) -> None:
        started = time.monotonic()
        await sleeper.sleep(seconds)
        woke.append((seconds, time.monotonic() - started))

    await asyncio.gather(*(nap(s) for s in (0.030, 0.0102, 0.020, 0.0104, 0.001)))
    assert [asked for asked, _ in woke] == [0.001, 0.0102, 0.0104, 0.020, 0.030]
    assert all(took >= asked for asked, took in woke)
