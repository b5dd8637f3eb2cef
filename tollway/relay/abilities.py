"""The ``abilities`` table: one row per (group, model, channel), rebuilt whenever a channel changes.

Routing itself reads channel snapshots (:class:`tollway.relay.routing.AbilityIndex`); the table is
kept for new-api compatibility (admin tools, ``/api/channel/fix``, and readers of the schema).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.models.channel import CHANNEL_ENABLED, Ability, Channel
from tollway.relay.channel import split_list

CHUNK_SIZE = 50  # new-api inserts abilities 50 at a time


def ability_rows(
    channel_id: int,
    groups: str | None,
    models: str | None,
    *,
    status: int,
    priority: int | None,
    weight: int | None,
    tag: str | None,
) -> list[dict[str, Any]]:
    """Rows for every (group × model), deduplicated, blanks skipped.

    An empty group list means ``default``, as :meth:`ChannelSnapshot.from_row` reads it, so the
    table and the in-memory index agree.
    """
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for group in split_list(groups) or ("default",):
        for model in split_list(models):
            if (group, model) in seen:
                continue
            seen.add((group, model))
            rows.append(
                {
                    "group": group,
                    "model": model,
                    "channel_id": channel_id,
                    "enabled": status == CHANNEL_ENABLED,
                    "priority": int(priority or 0),
                    "weight": int(weight or 0),
                    "tag": tag,
                }
            )
    return rows


async def _insert(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
    """Insert in chunks, skipping duplicates the database sees but Python does not.

    MySQL's default collation is case-insensitive, so ``GPT-4`` and ``gpt-4`` of one channel collide
    there; like new-api (``ON CONFLICT DO NOTHING``) the second is skipped instead of failing.
    """
    dialect = session.get_bind().dialect.name
    inserted = 0
    for start in range(0, len(rows), CHUNK_SIZE):
        chunk = list(rows[start : start + CHUNK_SIZE])
        if dialect == "postgresql":
            stmt: Any = pg_insert(Ability).values(chunk).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite_insert(Ability).values(chunk).on_conflict_do_nothing()
        elif dialect in ("mysql", "mariadb"):
            stmt = insert(Ability).values(chunk).prefix_with("IGNORE")
        else:
            stmt = insert(Ability).values(chunk)
        result = await session.execute(stmt)
        count = getattr(result, "rowcount", -1)
        inserted += count if count is not None and count >= 0 else len(chunk)
    return inserted


async def rebuild_abilities(session: AsyncSession, channel: Channel) -> int:
    """Replace the channel's abilities (after create or update); returns the rows inserted.

    Runs in the caller's transaction: the channel row and its abilities change together.
    """
    await session.execute(
        delete(Ability).where(Ability.channel_id == channel.id).execution_options(synchronize_session=False)
    )
    rows = ability_rows(
        channel.id,
        channel.group,
        channel.models,
        status=channel.status if channel.status is not None else CHANNEL_ENABLED,
        priority=channel.priority,
        weight=channel.weight,
        tag=channel.tag,
    )
    return await _insert(session, rows)


async def rebuild_all(session: AsyncSession) -> int:
    """Rebuild the whole table from the channels (``/api/channel/fix``); returns the rows inserted."""
    await session.execute(delete(Ability).execution_options(synchronize_session=False))
    result = await session.execute(
        select(
            Channel.id,
            Channel.group,
            Channel.models,
            Channel.status,
            Channel.priority,
            Channel.weight,
            Channel.tag,
        ).order_by(Channel.id)
    )
    rows: list[dict[str, Any]] = []
    for cid, groups, models, status, priority, weight, tag in result.all():
        rows.extend(
            ability_rows(cid, groups, models, status=status, priority=priority, weight=weight, tag=tag)
        )
    return await _insert(session, rows)
