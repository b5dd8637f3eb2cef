"""What the relay hands to the usage pipeline: one log entry per request, plus the charge it
explains. The log writer persists both in one batch (the charge's balance changes in the same
transaction as the log rows when they share a database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(slots=True)
class LogEntry:
    """One row of the ``logs`` table (field names as the model's attributes)."""

    user_id: int
    created_at: int
    type: int
    content: str = ""
    username: str = ""
    token_name: str = ""
    model_name: str = ""
    quota: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    use_time: int = 0
    is_stream: bool = False
    channel_id: int = 0
    token_id: int = 0
    group: str = ""
    other: str = ""
    ip: str = ""
    request_id: str = ""


@dataclass(slots=True)
class Charge:
    """The durable balance effect of one settled request.

    ``quota`` is the final cost. ``user_id``/``token_id``/``channel_id`` say whose counters move:
    user ``used_quota`` and ``request_count``, token ``used_quota`` (and ``remain_quota`` for
    limited tokens), channel ``used_quota``. How the spendable balances (``users.quota``,
    ``tokens.remain_quota``) change is the balance store's business (see ``billing.balances``).
    """

    user_id: int
    token_id: int
    channel_id: int
    quota: int
    token_limited: bool
    count_request: bool = True


class ChargeApplier(Protocol):
    """Applies the balance changes of a batch of charges inside the log writer's main-database
    transaction (the balance store provides it)."""

    async def apply(self, session: AsyncSession, charges: Sequence[Charge]) -> None: ...


@runtime_checkable
class SqliteChargeApplier(Protocol):
    """An applier that can also apply a batch synchronously on SQLite's own connection, in the
    driver's thread: the writer then commits a whole batch in one round trip to that thread."""

    def apply_sqlite(self, conn: sqlite3.Connection, charges: Sequence[Charge]) -> None: ...
