"""Log routes (``/api/log…``) on every database: each filter alone and combined, exact totals and
keyset paging, admin vs owner formatting, user isolation, statistics, a token's own logs, batched
deletion, bad input, the search rate limit, and a separate log database (``LOG_SQL_DSN``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, insert, inspect, select

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness, DatabaseFactory
from tests.seed import create_channel, create_token
from tollway.app import create_app
from tollway.db.models import Log
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR, LOG_MANAGE, LOG_TOPUP
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON
from tollway.settings import Settings

pytestmark = pytest.mark.db

NOW = int(time.time())
T0 = NOW - 10 * 86400
ADMIN_OTHER = json.dumps({"model_ratio": 1.5, "admin_info": {"use_channel": ["1", "2"]}})


async def add_logs(harness: AppHarness, *rows: dict[str, Any]) -> list[int]:
    """Insert log rows straight into the log database; returns their ids in order."""
    async with harness.runtime.db.log_session() as session, session.begin():
        logs = [Log(**{"content": "", "other": "", **row}) for row in rows]
        session.add_all(logs)
        await session.flush()
        return [log.id for log in logs]


async def count_logs(harness: AppHarness) -> int:
    async with harness.runtime.db.log_session() as session:
        return int(await session.scalar(select(func.count()).select_from(Log)) or 0)


def ids(response: httpx.Response) -> list[int]:
    body = response.json()
    assert body["success"] is True, body
    items = body["data"]["items"] if isinstance(body["data"], dict) else body["data"]
    return [item["id"] for item in items]


def refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is False, body
    assert fragment in body["message"], body["message"]


class World:
    """Six logs of alice, bob and the admin across two channels (ids ``l1`` … ``l6``)."""

    def __init__(self, harness: AppHarness, admin: As, alice: As, bob: As) -> None:
        self.harness, self.admin, self.alice, self.bob = harness, admin, alice, bob
        self.l: list[int] = []
        self.ca = self.cb = 0

    async def seed(self) -> World:
        db = self.harness.runtime.db
        self.ca = await create_channel(db, "http://a.invalid", name="chan-a")
        self.cb = await create_channel(db, "http://b.invalid", name="chan-b")
        a, b = self.alice, self.bob
        self.l = await add_logs(
            self.harness,
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 100, type=LOG_CONSUME,
                 token_name="alice-key", token_id=11, model_name="gpt-4o", channel_id=self.ca,
                 group="default", request_id="req-1", other=ADMIN_OTHER, quota=100,
                 prompt_tokens=10, completion_tokens=5, use_time=2, is_stream=True, ip="10.0.0.1",
                 content="model ratio 1.5"),
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 200, type=LOG_CONSUME,
                 token_name="alice-key", token_id=11, model_name="gpt-4o-mini", channel_id=self.cb,
                 group="vip", request_id="req-2", quota=200),
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 300, type=LOG_ERROR,
                 token_name="alice-key", token_id=11, model_name="gpt_4x", channel_id=self.ca,
                 group="default", request_id="req-3", other=ADMIN_OTHER),
            dict(user_id=b.user_id, username=b.username, created_at=T0 + 400, type=LOG_CONSUME,
                 token_name="bob-key", token_id=12, model_name="claude-3", channel_id=self.cb,
                 group="default", request_id="req-4", quota=400),
            dict(user_id=b.user_id, username=b.username, created_at=T0 + 500, type=LOG_TOPUP,
                 content="top-up with a code", quota=5000, request_id="req-5"),
            dict(user_id=a.user_id, username=a.username, created_at=T0 + 600, type=LOG_MANAGE,
                 content="2 admins changed the quota", request_id="req-6"),
        )  # fmt: skip
        return self


@pytest.fixture
async def world(harness: AppHarness, as_admin: As, as_user: As) -> World:
    bob = await make_user(harness, "bob", ROLE_COMMON)
    return await World(harness, as_admin, as_user, bob).seed()


async def check_admin_list_filters(world: World) -> None:
    l1, l2, l3, l4, l5, l6 = world.l
    cases: list[tuple[str, list[int]]] = [
        ("", [l6, l5, l4, l3, l2, l1]),
        ("type=0", [l6, l5, l4, l3, l2, l1]),
        ("type=2", [l4, l2, l1]),
        ("type=5", [l3]),
        (f"start_timestamp={T0 + 200}", [l6, l5, l4, l3, l2]),
        (f"end_timestamp={T0 + 200}", [l2, l1]),
        (f"start_timestamp={T0 + 200}&end_timestamp={T0 + 400}", [l4, l3, l2]),
        ("start_timestamp=NaN&end_timestamp=", [l6, l5, l4, l3, l2, l1]),
        (f"start_timestamp={T0 + 599}.7", [l6]),
        ("username=bob", [l5, l4]),
        ("token_name=alice-key", [l3, l2, l1]),
        ("model_name=gpt-4o", [l1]),
        ("model_name=gpt-4o%25", [l2, l1]),
        ("model_name=gpt_4%25", [l3]),
        ("model_name=%25mini", [l2]),
        (f"channel={world.ca}", [l3, l1]),
        ("group=vip", [l2]),
        ("request_id=req-4", [l4]),
        ("username=nobody", []),
        (f"type=2&username=alice&channel={world.cb}", [l2]),
        (f"type=2&group=default&start_timestamp={T0 + 150}&model_name=%25", [l4]),
        (f"token_name=alice-key&channel={world.ca}&end_timestamp={T0 + 100}", [l1]),
    ]
    for query, expected in cases:
        response = await world.admin.get(f"/api/log/?{query}")
        assert ids(response) == expected, query
        assert response.json()["data"]["total"] == len(expected), query


async def check_admin_and_owner_views(world: World) -> None:
    l1 = world.l[0]
    admin_item = (await world.admin.get("/api/log/?request_id=req-1")).json()["data"]["items"][0]
    assert admin_item == {
        "id": l1, "user_id": world.alice.user_id, "created_at": T0 + 100, "type": LOG_CONSUME,
        "content": "model ratio 1.5", "username": "alice", "token_name": "alice-key",
        "model_name": "gpt-4o", "quota": 100, "prompt_tokens": 10, "completion_tokens": 5,
        "use_time": 2, "is_stream": True, "channel": world.ca, "channel_name": "chan-a",
        "token_id": 11, "group": "default", "other": ADMIN_OTHER, "ip": "10.0.0.1",
        "request_id": "req-1",
    }  # fmt: skip
    own = (await world.alice.get("/api/log/self?request_id=req-1")).json()["data"]["items"][0]
    assert own["id"] == l1  # the real id, not id % 1024
    assert own["channel_name"] == ""
    assert own["channel"] == world.ca
    assert json.loads(own["other"]) == {"model_ratio": 1.5}
    assert {k: v for k, v in own.items() if k not in ("other", "channel_name")} == {
        k: v for k, v in admin_item.items() if k not in ("other", "channel_name")
    }


async def check_self_list_filters_and_isolation(world: World) -> None:
    l1, l2, l3, l4, _l5, l6 = world.l
    cases: list[tuple[str, list[int]]] = [
        ("", [l6, l3, l2, l1]),
        ("type=2", [l2, l1]),
        (f"start_timestamp={T0 + 200}&end_timestamp={T0 + 300}", [l3, l2]),
        ("token_name=alice-key", [l3, l2, l1]),
        ("model_name=gpt-4o%25", [l2, l1]),
        ("group=vip", [l2]),
        ("request_id=req-3", [l3]),
        ("request_id=req-4", []),  # bob's log: never visible to alice
        ("username=bob", [l6, l3, l2, l1]),  # ignored on /self
        (f"channel={world.cb}", [l6, l3, l2, l1]),  # ignored on /self
        ("type=2&model_name=gpt-4o-mini&group=vip", [l2]),
    ]
    for query, expected in cases:
        response = await world.alice.get(f"/api/log/self?{query}")
        assert ids(response) == expected, query
        assert response.json()["data"]["total"] == len(expected), query
    assert ids(await world.bob.get("/api/log/self")) == [world.l[4], l4]
    for path in ("/api/log/", "/api/log/search?keyword=2", "/api/log/stat"):
        response = await world.alice.get(path)
        assert response.status_code == 403, path
        assert response.json()["success"] is False
    assert (await world.harness.client.get("/api/log/self")).status_code == 401


async def test_lists_every_filter_views_and_isolation(world: World) -> None:
    await check_admin_list_filters(world)
    await check_admin_and_owner_views(world)
    await check_self_list_filters_and_isolation(world)


async def test_search_and_bad_input(world: World) -> None:
    await check_bad_input(world)
    await check_search_routes(world)


async def test_stat_and_token_logs(world: World) -> None:
    await check_stat_numbers(world)
    await check_token_logs(world)


async def test_paging_totals_and_keyset(harness: AppHarness, as_admin: As, as_user: As) -> None:
    rows = [
        dict(user_id=as_user.user_id, username="alice", created_at=T0 + i, type=LOG_CONSUME, model_name="m")
        for i in range(25)
    ]
    everything = list(reversed(await add_logs(harness, *rows)))
    await add_logs(harness, dict(user_id=as_user.user_id, created_at=T0, type=LOG_MANAGE))
    for client, base in ((as_admin, "/api/log/?type=2"), (as_user, "/api/log/self?type=2")):
        first = (await client.get(f"{base}&p=1&page_size=10")).json()["data"]
        assert (first["total"], first["page"], first["page_size"]) == (25, 1, 10)
        assert [item["id"] for item in first["items"]] == everything[:10]
        assert ids(await client.get(f"{base}&p=3&page_size=10")) == everything[20:]
        beyond = (await client.get(f"{base}&p=4&page_size=10")).json()["data"]
        assert (beyond["items"], beyond["total"]) == ([], 25)
        assert ids(await client.get(f"{base}&p=9007199254740992&page_size=10")) == []
        huge = (await client.get(f"{base}&p=99999999999999999999999")).json()
        assert huge["success"] is True and huge["data"]["items"] == [] and huge["data"]["page"] == 10_000_000
        default = (await client.get(base)).json()["data"]
        assert (len(default["items"]), default["page"], default["page_size"]) == (10, 1, 10)
        clamped = (await client.get(f"{base}&page_size=1000")).json()["data"]
        assert (len(clamped["items"]), clamped["page_size"], clamped["total"]) == (25, 100, 25)
        keyset = (await client.get(f"{base}&page_size=10&before_id={everything[9]}")).json()["data"]
        assert [item["id"] for item in keyset["items"]] == everything[10:20]
        assert keyset["total"] == 25  # the filters' total, whatever the page
        assert ids(await client.get(f"{base}&page_size=10&before_id={everything[-1]}")) == []
    assert (await as_admin.get("/api/log/")).json()["data"]["total"] == 26


async def check_search_routes(world: World) -> None:
    l1, l2, l3, l4, l5, l6 = world.l
    assert ids(await world.admin.get("/api/log/search?keyword=2")) == [l6, l4, l2, l1]  # type 2 or "2…"
    assert ids(await world.admin.get("/api/log/search?keyword=top-up")) == [l5]
    assert ids(await world.admin.get("/api/log/search?keyword=model_")) == []  # "_" is no wildcard
    assert ids(await world.admin.get("/api/log/search?keyword=nothing")) == []
    admin_rows = (await world.admin.get("/api/log/search?keyword=5")).json()["data"]
    assert [row["id"] for row in admin_rows] == [l3]
    assert admin_rows[0]["channel_name"] == "chan-a"
    assert "admin_info" in admin_rows[0]["other"]
    own = (await world.alice.get("/api/log/self/search?keyword=5")).json()["data"]
    assert [row["id"] for row in own] == [l3]
    assert (own[0]["channel_name"], "admin_info" in own[0]["other"]) == ("", False)
    assert ids(await world.alice.get("/api/log/self/search?keyword=2")) == [l2, l1]
    assert ids(await world.bob.get("/api/log/self/search?keyword=2")) == [l4]
    for keyword in ("abc", "", "99", "2.5e99"):
        refused(await world.alice.get(f"/api/log/self/search?keyword={keyword}"), "keyword")
    many = [dict(user_id=1, created_at=T0, type=LOG_MANAGE, content="bulk") for _ in range(120)]
    await add_logs(world.harness, *many)
    assert len(ids(await world.admin.get("/api/log/search?keyword=bulk"))) == 100


async def check_stat_numbers(world: World) -> None:
    alice, bob = world.alice, world.bob
    now = int(time.time())  # not the module's NOW: earlier tests take time
    await add_logs(
        world.harness,
        dict(user_id=alice.user_id, username="alice", created_at=now - 30, type=LOG_CONSUME,
             model_name="gpt-4o", quota=7, prompt_tokens=10, completion_tokens=20, token_name="alice-key"),
        dict(user_id=alice.user_id, username="alice", created_at=now - 90, type=LOG_CONSUME,
             model_name="gpt-4o", quota=11, prompt_tokens=100, completion_tokens=100),
        dict(user_id=bob.user_id, username="bob", created_at=now - 5, type=LOG_CONSUME,
             model_name="claude-3", quota=13, prompt_tokens=1000, completion_tokens=1),
        dict(user_id=alice.user_id, username="alice", created_at=now - 1, type=LOG_ERROR,
             model_name="gpt-4o", quota=0, prompt_tokens=5000),
    )  # fmt: skip
    midnight = now - now % 86400
    recent = [(now - 30, 7, alice.user_id), (now - 90, 11, alice.user_id), (now - 5, 13, bob.user_id)]

    def today(user_id: int | None = None) -> tuple[int, int]:
        hits = [q for t, q, u in recent if t >= midnight and (user_id is None or u == user_id)]
        return len(hits), sum(hits)

    stat = (await world.admin.get("/api/log/stat")).json()["data"]
    assert stat == {
        "quota": 100 + 200 + 400 + 7 + 11 + 13, "rpm": 2, "tpm": 30 + 1001,
        "total_requests": 6, "total_quota": 731,
        "today_requests": today()[0], "today_quota": today()[1],
    }  # fmt: skip
    ranged = (
        await world.admin.get(f"/api/log/stat?start_timestamp={T0}&end_timestamp={T0 + 200}&type=5")
    ).json()
    assert ranged["data"]["quota"] == 300 and ranged["data"]["total_requests"] == 2
    assert (ranged["data"]["rpm"], ranged["data"]["tpm"]) == (2, 1031)  # the last minute ignores the range
    by_model = (await world.admin.get("/api/log/stat?model_name=gpt-4o")).json()["data"]
    assert (by_model["quota"], by_model["rpm"], by_model["tpm"]) == (118, 1, 30)
    by_user = (await world.admin.get(f"/api/log/stat?username=bob&channel={world.cb}")).json()["data"]
    assert (by_user["quota"], by_user["rpm"]) == (400, 0)
    combined = (await world.admin.get("/api/log/stat?token_name=alice-key&group=vip")).json()["data"]
    assert (combined["quota"], combined["total_requests"], combined["rpm"]) == (200, 1, 0)
    own = (await alice.get("/api/log/self/stat?username=bob")).json()["data"]
    assert (own["quota"], own["rpm"], own["tpm"], own["total_requests"]) == (318, 1, 30, 4)
    assert (own["today_requests"], own["today_quota"]) == today(alice.user_id)
    assert (await bob.get("/api/log/self/stat")).json()["data"]["quota"] == 413


async def check_token_logs(world: World) -> None:
    runtime = world.harness.runtime
    token_id, key = await create_token(runtime.db, world.alice.user_id, name="reader")
    other_id, _ = await create_token(runtime.db, world.alice.user_id, name="other")
    _off_id, off_key = await create_token(runtime.db, world.alice.user_id, name="off", status=2)
    runtime.relay.accounts.tokens_changed()
    mine = await add_logs(
        world.harness,
        *[dict(user_id=world.alice.user_id, created_at=T0 + i, type=LOG_CONSUME, token_id=token_id,
               channel_id=world.ca, other=ADMIN_OTHER) for i in range(3)],
        dict(user_id=world.alice.user_id, created_at=T0, type=LOG_CONSUME, token_id=other_id),
        dict(user_id=world.bob.user_id, created_at=T0, type=LOG_CONSUME, token_id=token_id),
    )  # fmt: skip
    client = world.harness.client
    response = await client.get("/api/log/token", headers={"Authorization": f"Bearer {key}"})
    rows = response.json()["data"]
    assert [row["id"] for row in rows] == mine[2::-1]
    assert all(row["channel_name"] == "" and "admin_info" not in row["other"] for row in rows)
    paged = (
        await client.get("/api/log/token?p=2&page_size=2", headers={"Authorization": f"Bearer {key}"})
    ).json()
    assert (paged["data"]["total"], [row["id"] for row in paged["data"]["items"]]) == (3, [mine[0]])
    for headers in (
        {},
        {"Authorization": "Bearer sk-not-a-real-key"},
        {"Authorization": f"Bearer {off_key}"},
    ):
        response = await client.get("/api/log/token", headers=headers)
        assert response.status_code == 401
        assert response.json()["success"] is False


async def test_delete_old_logs_in_batches(harness: AppHarness, as_admin: As, as_user: As) -> None:
    old = [dict(user_id=1, created_at=T0 - i, type=LOG_CONSUME, content="", other="") for i in range(2500)]
    async with harness.runtime.db.log_session() as session, session.begin():
        await session.execute(insert(Log), old)
    fresh = await add_logs(
        harness, *[dict(user_id=1, created_at=NOW - i, type=LOG_CONSUME) for i in range(10)]
    )
    for query, fragment in (("", "required"), ("?target_timestamp=abc", "unix timestamp"),
                            ("?target_timestamp=-5", "unix timestamp")):  # fmt: skip
        refused(await as_admin.delete(f"/api/log/{query}"), fragment)
    assert (await as_user.delete(f"/api/log/?target_timestamp={NOW}")).status_code == 403
    assert await count_logs(harness) == 2510
    statements: list[str] = []

    def spy(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and "FROM logs" in statement:
            statements.append(statement)

    engine = harness.runtime.db.log_engine.sync_engine
    event.listen(engine, "before_cursor_execute", spy)
    try:
        response = await as_admin.delete(f"/api/log/?target_timestamp={NOW - 86400}")
    finally:
        event.remove(engine, "before_cursor_execute", spy)
    assert response.json() == {"success": True, "message": "", "data": 2500}
    assert len(statements) == 3  # 1000 + 1000 + 500
    async with harness.runtime.db.log_session() as session:
        assert sorted((await session.scalars(select(Log.id))).all()) == sorted(fresh)
    assert (await as_admin.delete(f"/api/log/?target_timestamp={NOW - 86400}")).json()["data"] == 0


async def check_bad_input(world: World) -> None:
    for path, fragment in (
        ("/api/log/?start_timestamp=abc", "start_timestamp"),
        ("/api/log/?end_timestamp=-1", "end_timestamp"),
        ("/api/log/?end_timestamp=1e400", "end_timestamp"),
        ("/api/log/?type=42", "log type"),
        ("/api/log/?type=two", "log type"),
        ("/api/log/?channel=99999999999999", "channel"),
        ("/api/log/?before_id=0", "before_id"),
        ("/api/log/?username=" + "x" * 300, "too long"),
        ("/api/log/?model_name=%00", "NUL"),
        ("/api/log/self?start_timestamp=yesterday", "start_timestamp"),
        ("/api/log/stat?end_timestamp=soon", "end_timestamp"),
        ("/api/log/self/stat?start_timestamp=99999999999999999999", "start_timestamp"),
        ("/api/log/search?keyword=%00", "NUL"),
    ):
        client = world.alice if "/self" in path else world.admin
        refused(await client.get(path), fragment)
    assert (await world.admin.get("/api/log/stat?type=42")).json()["success"] is True  # type is ignored


async def test_logs_read_from_a_separate_log_database(
    databases: DatabaseFactory, make_settings: Callable[..., Settings]
) -> None:
    now = int(time.time())
    settings = make_settings(
        sql_dsn=await databases.create(),
        log_sql_dsn=await databases.create(),
        search_rate_limit_enable=True,
        search_rate_limit=2,
    )
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as client:
            harness = AppHarness(app, client)
            runtime = harness.runtime
            assert runtime.db.separate_logs
            async with runtime.db.engine.connect() as conn:
                assert not await conn.run_sync(lambda sync: inspect(sync).has_table("logs"))
            admin = await make_user(harness, "admin", ROLE_ADMIN)
            channel = await create_channel(runtime.db, "http://a.invalid", name="in-main-db")
            first, second = await add_logs(
                harness,
                dict(user_id=admin.user_id, username="admin", created_at=now - 10, type=LOG_CONSUME,
                     channel_id=channel, model_name="gpt-4o", quota=9, prompt_tokens=3, completion_tokens=4),
                dict(user_id=admin.user_id, username="admin", created_at=T0, type=LOG_CONSUME, quota=1),
            )  # fmt: skip
            page = (await admin.get("/api/log/")).json()["data"]
            assert ([item["id"] for item in page["items"]], page["total"]) == ([second, first], 2)
            assert page["items"][1]["channel_name"] == "in-main-db"
            assert ids(await admin.get("/api/log/self?type=2")) == [second, first]
            assert ids(await admin.get("/api/log/search?keyword=2")) == [second, first]
            assert ids(await admin.get("/api/log/self/search?keyword=2")) == [second, first]
            limited = await admin.get("/api/log/search?keyword=2")  # SEARCH_RATE_LIMIT: 2 here
            assert (limited.status_code, limited.json()["success"]) == (429, False)
            assert limited.headers["Retry-After"]
            stat = (await admin.get("/api/log/stat")).json()["data"]
            assert (stat["quota"], stat["rpm"], stat["tpm"]) == (10, 1, 7)
            board = (
                await admin.get(f"/api/data/dashboard?group_by=channel&start_timestamp={now - 3600}")
            ).json()
            assert board["data"]["series"][0]["name"] == "in-main-db"
            deleted = (await admin.delete(f"/api/log/?target_timestamp={now - 3600}")).json()
            assert deleted["data"] == 1
            assert await count_logs(harness) == 1
