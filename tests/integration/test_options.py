"""Runtime options: typed, stored as strings, cached, and shared by the workers of a node."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.db.models import Option
from tollway.node_sync import NodeCounters
from tollway.options import (
    CHATS,
    DATA_EXPORT_INTERVAL,
    QUOTA_PER_UNIT,
    REGISTER_ENABLED,
    REGISTRY,
    RETRY_TIMES,
    OptionError,
    Options,
)
from tollway.settings import Settings


@pytest.fixture
async def database(settings: Settings) -> Database:
    db = Database(settings)
    await migrate(db)
    return db


@pytest.mark.db
async def test_defaults_save_reload_and_export(database: Database, tmp_path: Path) -> None:
    counters = NodeCounters()
    options = Options(REGISTRY, database, counters)
    try:
        await options.load()
        assert options.get(RETRY_TIMES) == 2
        assert options.get(REGISTER_ENABLED) is True
        assert options.get(QUOTA_PER_UNIT) == 500000.0

        await options.save("RetryTimes", "4")
        await options.save("RegisterEnabled", "false")
        await options.save("Chats", '[{"ChatGPT Next Web": "https://example.com"}]')
        await options.save("SomeFutureOption", "kept verbatim")

        fresh = Options(REGISTRY, database, counters)
        await fresh.load()
        assert fresh.get(RETRY_TIMES) == 4
        assert fresh.get(REGISTER_ENABLED) is False
        assert fresh.get(CHATS) == [{"ChatGPT Next Web": "https://example.com"}]
        exported = fresh.export()
        assert exported["RetryTimes"] == "4"
        assert exported["RegisterEnabled"] == "false"
        assert exported["SomeFutureOption"] == "kept verbatim"
        assert exported["DataExportInterval"] == "5"

        async with database.session() as session:
            stored = dict((await session.execute(select(Option.key, Option.value))).all())
        assert stored["RegisterEnabled"] == "false"
    finally:
        await database.dispose()


@pytest.mark.db
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RetryTimes", "many"),
        ("RetryTimes", "-1"),
        ("Chats", "{not json"),
        ("Chats", '{"an":"object"}'),
        ("RegisterEnabled", "maybe"),
        ("QuotaPerUnit", "-5"),
    ],
)
async def test_invalid_values_are_refused_and_not_stored(database: Database, name: str, value: str) -> None:
    options = Options(REGISTRY, database, NodeCounters())
    try:
        await options.load()
        with pytest.raises(OptionError):
            await options.save(name, value)
        async with database.session() as session:
            assert await session.get(Option, name) is None
    finally:
        await database.dispose()


@pytest.mark.db
async def test_a_change_reaches_the_other_workers_of_the_node(database: Database, tmp_path: Path) -> None:
    path = NodeCounters.create_file(tmp_path)
    worker_a = Options(REGISTRY, database, NodeCounters(path))
    worker_b = Options(REGISTRY, database, NodeCounters(path))  # another process in production
    try:
        await worker_a.load()
        await worker_b.load()
        await worker_a.save(DATA_EXPORT_INTERVAL.name, "9")
        assert worker_b.get(DATA_EXPORT_INTERVAL) == 5  # not yet: B has not reached a sync point
        await worker_b.refresh_if_changed()
        assert worker_b.get(DATA_EXPORT_INTERVAL) == 9
    finally:
        await database.dispose()


def test_secret_options_are_not_exported() -> None:
    spec = REGISTRY.get("TurnstileSiteKey")
    assert spec is not None and spec.secret
