"""Log rows written at once, outside the relay's batch writer: top-ups, manage actions, system
events, logins. When the logs live in the main database and the caller passes its transaction,
the row commits together with the change it explains (a credit and its top-up log, say)."""

from __future__ import annotations

import time
from dataclasses import asdict

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.engine import Database
from tollway.db.models import Log
from tollway.ops.logging import request_id_var
from tollway.usage.records import LogEntry


def log_entry(
    log_type: int, user_id: int, username: str, content: str, *, quota: int = 0, other: str = ""
) -> LogEntry:
    """A log row about a user, stamped now and with the current request's id."""
    return LogEntry(
        user_id=user_id,
        created_at=int(time.time()),
        type=log_type,
        content=content,
        username=username,
        quota=quota,
        other=other,
        request_id=request_id_var.get(),
    )


async def record_log(db: Database, entry: LogEntry, *, session: AsyncSession | None = None) -> None:
    """Insert one log row: inside ``session``'s transaction when the logs share its database,
    otherwise in a transaction of the log database of its own."""
    values = asdict(entry)
    if session is not None and not db.separate_logs:
        await session.execute(insert(Log).values(**values))
        return
    async with db.log_session() as log_session, log_session.begin():
        await log_session.execute(insert(Log).values(**values))
