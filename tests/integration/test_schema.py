"""After migration, the live schema on every backend has every table and index of seed 003,
matches the models, and migrating again changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from tests.conftest import DatabaseFactory
from tollway.db import models  # noqa: F401 - registers the tables
from tollway.db.base import LogBase, MainBase
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.settings import Settings

# Seed 003 (database design): its tables, and the columns of every index it declares (§2 and §3.1).
SEED_INDEXES: dict[str, list[tuple[str, ...]]] = {
    "users": [
        ("username",),
        ("email",),
        ("github_id",),
        ("oidc_id",),
        ("wechat_id",),
        ("telegram_id",),
        ("linux_do_id",),
        ("access_token",),
        ("aff_code",),
        ("inviter_id",),
        ("deleted_at",),
        ("username", "status"),
        ("email", "status"),
    ],
    "tokens": [
        ("user_id",),
        ("key_hash",),
        ("status",),
        ("name",),
        ("deleted_at",),
        ("user_id", "status"),
        ("key_hash", "status"),
    ],
    "channels": [
        ("type",),
        ("status",),
        ("name",),
        ("group_name",),
        ("priority",),
        ("type", "status"),
        ("group_name", "status"),
    ],
    "abilities": [
        ("channel_id",),
        ("enabled",),
        ("priority",),
        ("weight",),
        ("tag",),
        ("group_name", "model"),
        ("model", "enabled"),
    ],
    "logs": [
        ("user_id",),
        ("created_at",),
        ("type",),
        ("username",),
        ("model_name",),
        ("channel_id",),
        ("token_id",),
        ("group_name",),
        ("user_id", "created_at"),
        ("model_name", "created_at"),
        ("channel_id", "created_at"),
    ],
    "quota_data": [("user_id",), ("username",), ("model_name",), ("created_at",), ("model_name", "username")],
    "redemptions": [("user_id",), ("key_value",), ("status",), ("name",), ("is_gift",), ("deleted_at",)],
    "redemption_logs": [("redemption_id",), ("user_id",), ("used_time",)],
    "topups": [("user_id",), ("trade_no",), ("status",), ("payment_method",), ("created_time",)],
    "midjourney": [("user_id",), ("action",), ("mj_id",), ("status",), ("channel_id",), ("submit_time",)],
    "tasks": [
        ("task_id",),
        ("platform",),
        ("user_id",),
        ("channel_id",),
        ("action",),
        ("status",),
        ("submit_time",),
        ("start_time",),
        ("finish_time",),
    ],
    "options": [],
    "setup": [],
}
SEED_PRIMARY_KEYS = {"abilities": ("group_name", "model", "channel_id"), "options": ("key_name",)}


def _live_schema(conn: Connection) -> dict[str, Any]:
    inspector = inspect(conn)
    tables: dict[str, Any] = {}
    for table in inspector.get_table_names():
        indexed = {tuple(index["column_names"]) for index in inspector.get_indexes(table)}
        indexed |= {tuple(unique["column_names"]) for unique in inspector.get_unique_constraints(table)}
        primary = tuple(inspector.get_pk_constraint(table)["constrained_columns"])
        tables[table] = {"indexes": indexed, "pk": primary}
    return tables


def _diff(conn: Connection, metadata: Any) -> list[Any]:
    """Differences between the live schema and ``metadata``, for the tables ``metadata`` owns."""

    def owned(obj: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in metadata.tables

    context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": owned})
    return list(compare_metadata(context, metadata))


@pytest.mark.db
async def test_live_schema_has_every_seed_table_and_index(settings: Settings) -> None:
    db = Database(settings)
    try:
        await migrate(db)
        async with db.engine.connect() as conn:
            live = await conn.run_sync(_live_schema)
        for table, indexes in SEED_INDEXES.items():
            assert table in live, f"table {table} missing"
            for columns in indexes:
                covered = columns in live[table]["indexes"] or live[table]["pk"][: len(columns)] == columns
                assert covered, (
                    f"index on {table}{columns} missing; live indexes: {sorted(live[table]['indexes'])}"
                )
        for table, primary in SEED_PRIMARY_KEYS.items():
            assert live[table]["pk"] == primary
        if db.dialect == "postgresql":
            # logs are partitioned by month there, so the partition key joins the primary key
            assert live["logs"]["pk"] == ("id", "created_at")
        else:
            assert live["logs"]["pk"] == ("id",)
    finally:
        await db.dispose()


@pytest.mark.db
async def test_models_match_migrations_and_migrating_twice_is_harmless(settings: Settings) -> None:
    db = Database(settings)
    try:
        await migrate(db)
        await migrate(db)
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diff, MainBase.metadata) == []
            assert await conn.run_sync(_diff, LogBase.metadata) == []
    finally:
        await db.dispose()


@pytest.mark.db
async def test_postgres_logs_are_partitioned_by_month(settings: Settings) -> None:
    db = Database(settings)
    if db.dialect != "postgresql":
        await db.dispose()
        pytest.skip("partitions are a PostgreSQL feature")
    try:
        await migrate(db)
        async with db.engine.connect() as conn:
            rows = await conn.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'logs' ORDER BY 1"
            )
            names = [row[0] for row in rows]
        assert "logs_default" in names
        assert len([n for n in names if n.startswith("logs_p")]) == 4  # this month and three ahead
    finally:
        await db.dispose()


@pytest.mark.db
async def test_separate_log_database_holds_the_logs_table_only(
    databases: DatabaseFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(sql_dsn=await databases.create(), log_sql_dsn=await databases.create())
    db = Database(settings)
    try:
        await migrate(db)
        async with db.engine.connect() as conn:
            main_tables = set((await conn.run_sync(_live_schema)).keys())
        async with db.log_engine.connect() as conn:
            log_tables = set((await conn.run_sync(_live_schema)).keys())
        assert "logs" not in main_tables
        assert {"users", "tokens", "channels", "options"} <= main_tables
        assert "logs" in log_tables
        assert not {"users", "tokens", "channels"} & log_tables
    finally:
        await db.dispose()
