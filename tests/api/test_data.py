"""Usage data routes on every database: hourly ``quota_data`` reads (aggregated, per username, the
caller's own with the 30-day limit) and the dashboard (each granularity and grouping, top keys,
scopes and permissions, bad input)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tests.seed import create_channel
from tollway.db.models import Log, QuotaData
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR
from tollway.db.models.user import ROLE_COMMON

pytestmark = pytest.mark.db

DAY = 86400
WEEK = 7 * DAY


def data_of(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    return body["data"]


def refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is False, body
    assert fragment in body["message"], body["message"]


def series(data: dict[str, Any]) -> list[tuple[int, str, str, int, int, int]]:
    return [
        (s["bucket_start"], s["key"], s["name"], s["requests"], s["quota"], s["tokens"])
        for s in data["series"]
    ]


async def test_quota_data_routes(harness: AppHarness, as_admin: As, as_user: As) -> None:
    bob = await make_user(harness, "bob", ROLE_COMMON)
    now = int(time.time())
    hour = now - now % 3600 - 5 * 3600
    old = hour - 40 * DAY

    def row(user: As, model: str, at: int, count: int) -> QuotaData:
        return QuotaData(
            user_id=user.user_id, username=user.username, model_name=model, created_at=at,
            count=count, quota=count * 10, token_used=count * 100,
        )  # fmt: skip

    async with harness.runtime.db.session() as session, session.begin():
        rows = [
            row(as_user, "gpt-4o", hour, 2),
            row(as_user, "claude-3", hour, 4),
            row(as_user, "gpt-4o", hour + 3600, 1),
            row(bob, "gpt-4o", hour, 3),
            row(as_user, "gpt-4o", old, 9),
        ]
        session.add_all(rows)
        await session.flush()
        alice_ids = [r.id for r in rows if r.user_id == as_user.user_id]

    def summed(model: str, at: int, count: int) -> dict[str, Any]:
        return {
            "id": 0, "user_id": 0, "username": "", "model_name": model, "created_at": at,
            "token_used": count * 100, "count": count, "quota": count * 10,
        }  # fmt: skip

    ranged = data_of(await as_admin.get(f"/api/data/?start_timestamp={hour}&end_timestamp={hour + 3600}"))
    assert ranged == [
        summed("claude-3", hour, 4),
        summed("gpt-4o", hour, 5),
        summed("gpt-4o", hour + 3600, 1),
    ]
    assert data_of(await as_admin.get(f"/api/data/?start_timestamp={hour + 1}")) == [
        summed("gpt-4o", hour + 3600, 1)
    ]
    assert data_of(await as_admin.get(f"/api/data/?end_timestamp={hour - 1}")) == [summed("gpt-4o", old, 9)]
    everything = data_of(await as_admin.get("/api/data/"))
    assert sum(item["count"] for item in everything) == 19
    per_user = data_of(
        await as_admin.get(f"/api/data/?username=alice&start_timestamp={hour}&end_timestamp={hour}")
    )
    assert [(r["id"], r["user_id"], r["username"], r["model_name"], r["count"]) for r in per_user] == [
        (alice_ids[0], as_user.user_id, "alice", "gpt-4o", 2),
        (alice_ids[1], as_user.user_id, "alice", "claude-3", 4),
    ]
    assert len(data_of(await as_admin.get("/api/data/?username=alice"))) == 4

    own = data_of(await as_user.get("/api/data/self"))  # default: the last 30 days
    assert [r["id"] for r in own] == alice_ids[:3]
    assert own[0] == {
        "id": alice_ids[0], "user_id": as_user.user_id, "username": "alice", "model_name": "gpt-4o",
        "created_at": hour, "token_used": 200, "count": 2, "quota": 20,
    }  # fmt: skip
    later = data_of(await as_user.get(f"/api/data/self?start_timestamp={hour + 1}&end_timestamp={now}"))
    assert [r["id"] for r in later] == [alice_ids[2]]
    assert [r["count"] for r in data_of(await bob.get("/api/data/self"))] == [3]
    span = f"start_timestamp={old - 3600}&end_timestamp={hour}"
    refused(await as_user.get(f"/api/data/self?{span}"), "may not exceed 30 days")
    exactly_30 = data_of(
        await as_user.get(f"/api/data/self?start_timestamp={old}&end_timestamp={old + 30 * DAY}")
    )
    assert [r["count"] for r in exactly_30] == [9]
    for query, fragment in (
        ("start_timestamp=abc", "start_timestamp"),
        ("end_timestamp=-3", "end_timestamp"),
        (f"start_timestamp={hour}&end_timestamp={hour - 1}", "before"),
    ):
        refused(await as_user.get(f"/api/data/self?{query}"), fragment)
    refused(await as_admin.get("/api/data/?start_timestamp=yesterday"), "start_timestamp")
    refused(await as_admin.get("/api/data/?username=%00"), "NUL")
    assert (await as_user.get("/api/data/")).status_code == 403
    assert (await harness.client.get("/api/data/self")).status_code == 401


def last_monday(before: int) -> int:
    """Monday 00:00 UTC of the week of ``before``."""
    monday = before - (before + 3 * DAY) % WEEK
    assert datetime.fromtimestamp(monday, UTC).weekday() == 0 and monday % DAY == 0
    return monday


async def add_logs(harness: AppHarness, rows: list[dict[str, Any]]) -> None:
    async with harness.runtime.db.log_session() as session, session.begin():
        session.add_all([Log(**{"content": "", "other": "", "type": LOG_CONSUME, **row}) for row in rows])


async def test_dashboard(harness: AppHarness, as_admin: As, as_user: As) -> None:
    bob = await make_user(harness, "bob", ROLE_COMMON)
    db = harness.runtime.db
    c1 = await create_channel(db, "http://one.invalid", name="chan-1")
    c2 = await create_channel(db, "http://two.invalid", name="chan-2")
    now = int(time.time())
    m = last_monday(now - 20 * DAY)
    a, b = as_user, bob

    def log(
        user: As, at: int, model: str, channel: int, quota: int, prompt: int, completion: int
    ) -> dict[str, Any]:
        token = 501 if user is a else 502
        return dict(user_id=user.user_id, username=user.username, created_at=at, model_name=model,
                    channel_id=channel, token_id=token, token_name=f"k{token - 500}", quota=quota,
                    prompt_tokens=prompt, completion_tokens=completion)  # fmt: skip

    await add_logs(
        harness,
        [
            log(a, m + 3600 + 10, "gpt-4o", c1, 100, 10, 5),
            log(b, m + 3600 + 20, "claude-3", c2, 50, 1, 1),
            log(a, m + DAY + 5, "gpt-4o", c1, 10, 2, 2),
            log(b, m + WEEK + 100, "gpt-4o", c2, 1000, 100, 100),
            log(a, m - 100, "claude-3", c1, 7, 3, 4),
            {**log(a, m + 3600 + 30, "gpt-4o", c1, 500, 50, 50), "type": LOG_ERROR},
            log(b, m - 3 * DAY, "gpt-4o", c1, 99999, 1, 1),
            log(b, now - 10, "recent", c1, 1, 5, 6),
        ],
    )
    span = f"start_timestamp={m - DAY}&end_timestamp={m + 8 * DAY}"
    url = f"/api/data/dashboard?{span}"

    hourly = data_of(await as_admin.get(url))  # defaults: hour, model
    assert hourly["totals"] == {"requests": 5, "quota": 1167, "prompt_tokens": 116, "completion_tokens": 112}
    assert (hourly["rpm"], hourly["tpm"]) == (1, 11)
    assert series(hourly) == [
        (m - 3600, "claude-3", "claude-3", 1, 7, 7),
        (m + 3600, "gpt-4o", "gpt-4o", 1, 100, 15),
        (m + 3600, "claude-3", "claude-3", 1, 50, 2),
        (m + DAY, "gpt-4o", "gpt-4o", 1, 10, 4),
        (m + WEEK, "gpt-4o", "gpt-4o", 1, 1000, 200),
    ]
    assert series(data_of(await as_admin.get(f"{url}&granularity=day&group_by=model"))) == [
        (m - DAY, "claude-3", "claude-3", 1, 7, 7),
        (m, "gpt-4o", "gpt-4o", 1, 100, 15),
        (m, "claude-3", "claude-3", 1, 50, 2),
        (m + DAY, "gpt-4o", "gpt-4o", 1, 10, 4),
        (m + WEEK, "gpt-4o", "gpt-4o", 1, 1000, 200),
    ]
    assert series(data_of(await as_admin.get(f"{url}&granularity=week"))) == [
        (m - WEEK, "claude-3", "claude-3", 1, 7, 7),
        (m, "gpt-4o", "gpt-4o", 2, 110, 19),
        (m, "claude-3", "claude-3", 1, 50, 2),
        (m + WEEK, "gpt-4o", "gpt-4o", 1, 1000, 200),
    ]
    by_key = {
        "channel": ((str(c1), "chan-1"), (str(c2), "chan-2")),
        "token": (("501", "k1"), ("502", "k2")),
        "user": ((str(a.user_id), "alice"), (str(b.user_id), "bob")),
    }
    for group_by, ((key_a, name_a), (key_b, name_b)) in by_key.items():
        weekly = data_of(await as_admin.get(f"{url}&granularity=week&group_by={group_by}"))
        assert series(weekly) == [
            (m - WEEK, key_a, name_a, 1, 7, 7),
            (m, key_a, name_a, 2, 110, 19),
            (m, key_b, name_b, 1, 50, 2),
            (m + WEEK, key_b, name_b, 1, 1000, 200),
        ], group_by
        assert weekly["totals"]["quota"] == 1167
        hourly_by = data_of(await as_admin.get(f"{url}&granularity=hour&group_by={group_by}"))
        assert [s[:3] for s in series(hourly_by)][1:3] == [
            (m + 3600, key_a, name_a),
            (m + 3600, key_b, name_b),
        ]

    own = data_of(await as_user.get(f"/api/data/self/dashboard?{span}&granularity=week"))
    assert own["totals"] == {"requests": 3, "quota": 117, "prompt_tokens": 15, "completion_tokens": 11}
    assert series(own) == [(m - WEEK, "claude-3", "claude-3", 1, 7, 7), (m, "gpt-4o", "gpt-4o", 2, 110, 19)]
    assert (own["rpm"], own["tpm"]) == (0, 0)
    assert data_of(await bob.get("/api/data/self/dashboard"))["totals"]["requests"] == 1  # last 7 days
    mine = data_of(await as_admin.get(f"{url}&scope=self"))
    assert (mine["series"], mine["totals"]["requests"], mine["rpm"]) == ([], 0, 0)
    assert data_of(await as_admin.get(f"/api/data/self/dashboard?{span}&group_by=user"))["series"] == []
    recent = data_of(await as_admin.get("/api/data/dashboard"))
    assert series(recent) == [(now - 10 - (now - 10) % 3600, "recent", "recent", 1, 1, 11)]

    await add_logs(harness, [log(a, m + 40 * DAY + 10, f"m{i:02d}", c1, i + 1, 1, 0) for i in range(25)])
    folded = data_of(
        await as_admin.get(f"/api/data/dashboard?start_timestamp={m + 40 * DAY}&end_timestamp={m + 41 * DAY}")
    )
    quotas = {s["key"]: (s["requests"], s["quota"]) for s in folded["series"]}
    assert quotas == {**{f"m{i:02d}": (1, i + 1) for i in range(5, 25)}, "other": (5, 15)}
    assert folded["totals"]["quota"] == sum(range(1, 26))

    for client, path, fragment in (
        (as_user, f"/api/data/self/dashboard?{span}&group_by=channel", "administrators"),
        (as_user, "/api/data/self/dashboard?group_by=token", "administrators"),
        (as_admin, f"{url}&granularity=minute", "granularity"),
        (as_admin, f"{url}&group_by=region", "group_by"),
        (as_admin, f"{url}&scope=mine", "scope"),
        (as_admin, f"/api/data/dashboard?start_timestamp={m}&end_timestamp={m + 91 * DAY}", "90 days"),
        (as_admin, f"/api/data/dashboard?start_timestamp={m}&end_timestamp={m - 1}", "before"),
        (as_user, "/api/data/self/dashboard?start_timestamp=abc", "start_timestamp"),
        (as_user, "/api/data/self/dashboard?end_timestamp=1e999", "end_timestamp"),
    ):
        refused(await client.get(path), fragment)
    assert (await as_user.get("/api/data/dashboard")).status_code == 403
