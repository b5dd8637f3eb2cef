"""Run a function on SQLite's own connection, in the thread aiosqlite keeps for that connection.

Through SQLAlchemy's asyncio adapter every statement is several round trips between the event loop
and that thread (cursor, execute, fetch, close), each a wake-up of the loop and a pass through
SQLAlchemy: a 17-row log batch of a dozen statements cost the loop about 2.5 ms of CPU. A function
run here executes all of them in one round trip, inside the transaction the caller's session holds
on the same connection (the caller still commits or rolls back through SQLAlchemy).

aiosqlite offers no public call for this; ``Connection._execute(fn, *args)`` (which SQLAlchemy's
own adapter relies on as well) queues ``fn`` to the connection's thread and awaits its result.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

T = TypeVar("T")


async def run_on_sqlite_thread(conn: AsyncConnection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn(raw sqlite3 connection)`` in the connection's thread; ``conn`` must be SQLite (aiosqlite)."""
    fairy = await conn.get_raw_connection()
    driver: Any = fairy.driver_connection  # aiosqlite.Connection
    result: T = await driver._execute(fn, driver._conn)
    return result
