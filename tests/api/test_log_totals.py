"""Log totals through the routes on every database: ``total`` of ``/api/log/`` and
``/api/log/self`` and the figures of ``/api/log/stat`` equal a brute-force count of the rows, for
ranges cutting hours in two, before and after ``DELETE /api/log/`` removes part of an hour."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select

from tests.api.conftest import As
from tests.conftest import AppHarness
from tests.integration.test_log_counts import assert_summaries_exact, entry, write
from tollway.db.models import Log
from tollway.db.models.log import LOG_CONSUME

pytestmark = pytest.mark.db

H = 3600
NOW = int(time.time())
BASE = NOW - NOW % H - 30 * H


async def brute(harness: AppHarness, *conditions: Any) -> tuple[int, int]:
    async with harness.runtime.db.log_session() as session:
        row = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(Log.quota), 0)).where(*conditions)
            )
        ).one()
    return int(row[0]), int(row[1])


async def check(harness: AppHarness, admin: As, user: As) -> None:
    ranges = [
        (None, None),
        (BASE + 1500, BASE + 9 * H + 700),
        (BASE + 4 * H, BASE + 6 * H - 1),
        (BASE + 30, None),
    ]
    for start, end in ranges:
        within = [Log.created_at >= start] if start else []
        within += [Log.created_at <= end] if end else []
        params = {"start_timestamp": start or "", "end_timestamp": end or ""}
        for extra, conditions in (
            ({}, []),
            ({"model_name": "gpt-4o"}, [Log.model_name == "gpt-4o"]),
            ({"username": "user2", "type": 2}, [Log.username == "user2", Log.type == LOG_CONSUME]),
            ({"channel": 2, "group": "vip"}, [Log.channel_id == 2, Log.group == "vip"]),
        ):
            page = (await admin.get("/api/log/?" + urlencode({**params, **extra}))).json()["data"]
            assert page["total"] == (await brute(harness, *within, *conditions))[0], (params, extra)
        mine = (await user.get("/api/log/self?" + urlencode(params))).json()["data"]
        assert mine["total"] == (await brute(harness, *within, Log.user_id == user.user_id))[0]
        stat = (await admin.get("/api/log/stat?" + urlencode(params))).json()["data"]
        assert (stat["total_requests"], stat["quota"]) == await brute(
            harness, *within, Log.type == LOG_CONSUME
        )


async def test_totals_stay_exact_across_deletes(harness: AppHarness, as_admin: As, as_user: As) -> None:
    db = harness.runtime.db
    user_id = as_user.user_id
    entries = [entry(i, BASE + i * 53) for i in range(800)]  # ~12 hours
    entries += [entry(i, BASE + i * 400 + 7, user_id=user_id, username=as_user.username) for i in range(60)]
    await write(db, entries, batch_size=100)
    await assert_summaries_exact(db)
    await check(harness, as_admin, as_user)
    response = await as_admin.delete(f"/api/log/?target_timestamp={BASE + 3 * H + 1234}")
    deleted = response.json()["data"]
    assert deleted == sum(1 for e in entries if e.created_at < BASE + 3 * H + 1234)
    await assert_summaries_exact(db)
    await check(harness, as_admin, as_user)
