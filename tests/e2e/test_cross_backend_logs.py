"""A log database of another kind than the main one (issue: main SQLite + logs PostgreSQL, main
PostgreSQL + logs MariaDB): every log is written to and read from the log database, none to main."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from tests.conftest import DatabaseFactory
from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.auth.sessions import SessionCodec
from tollway.db.models import Log
from tollway.settings import Settings


@pytest.fixture
async def factories(tmp_path: Path) -> AsyncIterator[list[DatabaseFactory]]:
    """Created before the live server, so they are dropped after it stopped."""
    made: list[DatabaseFactory] = []
    yield made
    for factory in made:
        await factory.drop_all()


@pytest.mark.parametrize(("main", "logs"), [("sqlite", "postgresql"), ("postgresql", "mysql")])
async def test_logs_live_in_the_other_database(
    main: str,
    logs: str,
    tmp_path: Path,
    factories: list[DatabaseFactory],
    make_settings: Callable[..., Settings],
    live_factory: Callable[..., Any],
    upstream: FakeUpstream,
) -> None:
    main_db, log_db = DatabaseFactory(main, tmp_path), DatabaseFactory(logs, tmp_path)
    factories.extend((main_db, log_db))
    settings = make_settings(sql_dsn=await main_db.create(), log_sql_dsn=await log_db.create())
    live: Live = await live_factory(settings)
    db = live.runtime.db
    assert db.separate_logs and db.dialect == main and db.log_url.dialect == logs
    user_id = await create_user(db, role=10)
    _, key = await create_token(db, user_id)
    await create_channel(db, upstream.base_url)
    live.refresh()
    for _ in range(3):
        response = await live.client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200
    rows = await live.logs()
    assert len(rows) == 3 and all(row.quota > 0 for row in rows)
    async with db.engine.connect() as conn:
        assert "logs" not in await conn.run_sync(lambda c: inspect(c).get_table_names())
    token = SessionCodec(settings.session_secret).encode(user_id)
    headers = {"Authorization": f"Bearer {token}", "New-Api-User": str(user_id)}
    listed = (await live.client.get("/api/log/?p=1&page_size=10", headers=headers)).json()["data"]
    assert listed["total"] == 3 and listed["items"][0]["channel_name"] == "upstream"
    stat = (await live.client.get("/api/log/stat", headers=headers)).json()["data"]
    assert stat["quota"] == sum(row.quota for row in rows)
    async with db.log_session() as session:
        assert len((await session.scalars(select(Log))).all()) == 3
