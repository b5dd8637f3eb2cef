"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """A migrated, empty database of the current backend (files may override it with seeded data)."""
    database = Database(settings)
    await migrate(database)
    try:
        yield database
    finally:
        await database.dispose()
