"""Abilities rebuild and channel auto-disable / auto-enable on every database backend."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select

from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models import Ability, Channel
from tollway.db.models.channel import CHANNEL_AUTO_DISABLED, CHANNEL_ENABLED, CHANNEL_MANUALLY_DISABLED
from tollway.relay.abilities import rebuild_abilities, rebuild_all
from tollway.relay.health import disable_channel, enable_channel
from tollway.settings import Settings


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = Database(settings)
    await migrate(db)
    try:
        yield db
    finally:
        await db.dispose()


async def add_channel(db: Database, **values: Any) -> int:
    fields: dict[str, Any] = {
        "type": 1,
        "key": "sk-test",
        "name": "test",
        "models": "gpt-4o,o3",
        "group": "default",
        "status": CHANNEL_ENABLED,
        "priority": 0,
        "weight": 0,
    }
    fields.update(values)
    async with db.session() as session, session.begin():
        channel = Channel(**fields)
        session.add(channel)
        await session.flush()
        await rebuild_abilities(session, channel)
        return channel.id


async def abilities_of(db: Database, channel_id: int) -> list[tuple[str, str, bool, int, int, str | None]]:
    async with db.session() as session:
        rows = await session.execute(
            select(
                Ability.group, Ability.model, Ability.enabled, Ability.priority, Ability.weight, Ability.tag
            )
            .where(Ability.channel_id == channel_id)
            .order_by(Ability.group, Ability.model)
        )
        return [(g, m, bool(e), p, w, t) for g, m, e, p, w, t in rows.all()]


async def channel_raw(db: Database, channel_id: int) -> tuple[int, str | None]:
    async with db.session() as session:
        status, other_info = (
            await session.execute(select(Channel.status, Channel.other_info).where(Channel.id == channel_id))
        ).one()
    return status, other_info


async def channel_row(db: Database, channel_id: int) -> tuple[int, dict[str, Any]]:
    status, other_info = await channel_raw(db, channel_id)
    return status, json.loads(other_info) if other_info else {}


@pytest.mark.db
async def test_rebuild_abilities_writes_groups_times_models(database: Database) -> None:
    cid = await add_channel(
        database,
        models="gpt-4o, o3,,gpt-4o,claude-3",
        group="default,vip, ,vip",
        priority=7,
        weight=30,
        tag="team-a",
    )
    expected = [
        (group, model, True, 7, 30, "team-a")
        for group in ("default", "vip")
        for model in ("claude-3", "gpt-4o", "o3")
    ]
    assert await abilities_of(database, cid) == expected

    async with database.session() as session, session.begin():
        channel = await session.get(Channel, cid)
        assert channel is not None
        channel.models = "o3"
        channel.group = "svip"
        channel.status = CHANNEL_MANUALLY_DISABLED
        assert await rebuild_abilities(session, channel) == 1
    assert await abilities_of(database, cid) == [("svip", "o3", False, 7, 30, "team-a")]


@pytest.mark.db
async def test_rebuild_abilities_many_rows_and_empty_group(database: Database) -> None:
    models = ",".join(f"model-{i:03d}" for i in range(120))
    cid = await add_channel(database, models=models, group="a,b")
    assert len(await abilities_of(database, cid)) == 240
    empty = await add_channel(database, models="gpt-4o", group="")
    assert await abilities_of(database, empty) == [("default", "gpt-4o", True, 0, 0, None)]


@pytest.mark.db
async def test_rebuild_all_restores_the_table(database: Database) -> None:
    one = await add_channel(database, models="gpt-4o,o3", group="default")
    two = await add_channel(database, models="claude-3", group="default,vip", status=CHANNEL_AUTO_DISABLED)
    async with database.session() as session, session.begin():
        await session.execute(delete(Ability))
        assert await rebuild_all(session) == 4
    assert len(await abilities_of(database, one)) == 2
    assert [a[2] for a in await abilities_of(database, two)] == [False, False]


@pytest.mark.db
async def test_disable_then_enable(database: Database) -> None:
    cid = await add_channel(database, other_info=json.dumps({"kept": "yes"}))
    async with database.session() as session, session.begin():
        assert await disable_channel(session, cid, "401 invalid api key", 1_700_000_000) is True
    status, info = await channel_row(database, cid)
    assert status == CHANNEL_AUTO_DISABLED
    assert info == {"kept": "yes", "status_reason": "401 invalid api key", "status_time": 1_700_000_000}
    assert [a[2] for a in await abilities_of(database, cid)] == [False, False]

    async with database.session() as session, session.begin():
        assert await disable_channel(session, cid, "again", 1_700_000_100) is False
    assert (await channel_row(database, cid))[1]["status_reason"] == "401 invalid api key"

    async with database.session() as session, session.begin():
        assert await enable_channel(session, cid, 1_700_000_200) is True
    status, info = await channel_row(database, cid)
    assert status == CHANNEL_ENABLED
    assert info["kept"] == "yes" and info["status_time"] == 1_700_000_200
    assert [a[2] for a in await abilities_of(database, cid)] == [True, True]

    async with database.session() as session, session.begin():
        assert await enable_channel(session, cid, 1_700_000_300) is False


@pytest.mark.db
async def test_manual_disable_is_never_overwritten(database: Database) -> None:
    cid = await add_channel(database, status=CHANNEL_MANUALLY_DISABLED, other_info="not json")
    async with database.session() as session, session.begin():
        assert await disable_channel(session, cid, "5xx", 1) is False
        assert await enable_channel(session, cid, 2) is False
    assert await channel_raw(database, cid) == (CHANNEL_MANUALLY_DISABLED, "not json")
    assert [a[2] for a in await abilities_of(database, cid)] == [False, False]


@pytest.mark.db
async def test_disable_replaces_invalid_other_info_and_leaves_other_channels(database: Database) -> None:
    cid = await add_channel(database, other_info="[1, 2]")
    other = await add_channel(database)
    async with database.session() as session, session.begin():
        assert await disable_channel(session, cid, "quota", 5)
        assert not await disable_channel(session, 999_999, "missing", 5)
    assert (await channel_row(database, cid))[1] == {"status_reason": "quota", "status_time": 5}
    assert (await channel_row(database, other))[0] == CHANNEL_ENABLED
    assert [a[2] for a in await abilities_of(database, other)] == [True, True]


@pytest.mark.db
async def test_names_differing_only_in_case_do_not_fail(database: Database) -> None:
    """MySQL's case-insensitive collation sees one key where the others see two; nothing may fail."""
    cid = await add_channel(database, models="GPT-4o,gpt-4o", group="default")
    models = sorted(m for _, m, *_ in await abilities_of(database, cid))
    assert models in (["GPT-4o", "gpt-4o"], ["GPT-4o"])
