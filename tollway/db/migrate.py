"""Apply the versioned migrations: the main schema, and the ``logs`` table in the log database."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from tollway.db.engine import Database

log = logging.getLogger("tollway.migrate")
_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(kind: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS / kind))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, kind: str) -> None:
    command.upgrade(alembic_config(kind, connection), "head")


async def migrate(db: Database) -> None:
    """Bring both schemas to the newest revision. Safe to run again: applied steps are skipped."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade, "main")
    async with db.log_engine.begin() as conn:
        await conn.run_sync(_upgrade, "logs")
    log.info("database schema is up to date (%s)", db.url.describe())
