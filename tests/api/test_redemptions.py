"""Redemption routes through HTTP on every database: the admin routes, bad input, redeeming
single-use and gift codes, and parallel redemptions that must credit exactly as often as allowed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tollway.api import redeem as redeem_module
from tollway.app import create_app
from tollway.auth.sessions import SessionCodec
from tollway.db.models import Log, Redemption, RedemptionLog, User
from tollway.db.models.log import LOG_TOPUP
from tollway.db.models.user import ROLE_ADMIN
from tollway.settings import Settings

pytestmark = pytest.mark.db


async def create_codes(admin: As, **fields: Any) -> list[str]:
    body = {"name": "promo", "quota": 1000, "count": 1, **fields}
    answer = (await admin.post("/api/redemption/", json=body)).json()
    assert answer["success"], answer
    keys: list[str] = answer["data"]
    return keys


async def code_row(harness: AppHarness, key: str) -> Redemption:
    async with harness.runtime.db.session() as session:
        row = await session.scalar(select(Redemption).where(Redemption.key == key))
        assert row is not None
        return row


async def snapshot(harness: AppHarness) -> list[tuple[Any, ...]]:
    """Every code row as stored, their uses and every user's quota: what "nothing changed" compares."""
    async with harness.runtime.db.session() as session:
        codes = await session.execute(select(Redemption.__table__).order_by(Redemption.id))
        uses = await session.execute(select(RedemptionLog.redemption_id, RedemptionLog.user_id))
        quotas = await session.execute(select(User.id, User.quota).order_by(User.id))
        return [*map(tuple, codes.all()), *sorted(uses.all()), *quotas.all()]


async def many_users(harness: AppHarness, count: int) -> list[As]:
    """Users written in one transaction (no password hashing: they log in by session value)."""
    prefix = f"u{uuid.uuid4().hex[:8]}-"
    async with harness.runtime.db.session() as session, session.begin():
        users = [
            User(username=f"{prefix}{i}", password="!", display_name=f"{prefix}{i}") for i in range(count)
        ]
        session.add_all(users)
        await session.flush()
        ids = [u.id for u in users]
    codec = SessionCodec(harness.runtime.settings.session_secret)
    return [
        As(
            harness.client,
            uid,
            f"{prefix}{i}",
            {"Authorization": f"Bearer {codec.encode(uid)}", "New-Api-User": str(uid)},
        )
        for i, uid in enumerate(ids)
    ]


async def quota_of(harness: AppHarness, user_id: int) -> int:
    async with harness.runtime.db.session() as session:
        return int(await session.scalar(select(User.quota).where(User.id == user_id)) or 0)


async def topup_logs(harness: AppHarness) -> list[Log]:
    async with harness.runtime.db.log_session() as session:
        rows = await session.scalars(select(Log).where(Log.type == LOG_TOPUP).order_by(Log.id))
        return list(rows.all())


async def redeem(user: As, key: Any) -> dict[str, Any]:
    answer: dict[str, Any] = (await user.post("/api/user/topup", json={"key": key})).json()
    return answer


# ----- administration --------------------------------------------------------------------------


async def test_create_list_search_get_and_count(harness: AppHarness, as_admin: As, as_user: As) -> None:
    keys = await create_codes(as_admin, name="spring", quota=2500, count=3)
    assert len(keys) == 3 and all(len(k) == 32 and int(k, 16) >= 0 for k in keys)
    await create_codes(as_admin, name="summer", count=2)
    await create_codes(as_admin, name="50%_off")

    page = (await as_admin.get("/api/redemption/", params={"p": 1, "page_size": 4})).json()["data"]
    assert (page["total"], page["page"], page["page_size"], len(page["items"])) == (6, 1, 4, 4)
    ids = [item["id"] for item in page["items"]]
    assert ids == sorted(ids, reverse=True)
    second = (await as_admin.get("/api/redemption/", params={"p": 2, "page_size": 4})).json()["data"]
    assert len(second["items"]) == 2

    spring = (await as_admin.get("/api/redemption/search", params={"keyword": "spr"})).json()["data"]
    assert spring["total"] == 3 and {i["key"] for i in spring["items"]} == set(keys)
    item = spring["items"][0]
    assert item["name"] == "spring" and item["quota"] == 2500 and item["status"] == 1
    assert (item["user_id"], item["used_user_id"], item["redeemed_time"], item["is_gift"]) == (
        as_admin.user_id,
        0,
        0,
        False,
    )
    assert (item["max_uses"], item["used_count"], item["valid_from"], item["valid_until"]) == (-1, 0, 0, 0)
    assert item["DeletedAt"] is None and item["created_time"] >= int(time.time()) - 60
    by_id = (await as_admin.get("/api/redemption/search", params={"keyword": str(item["id"])})).json()["data"]
    assert [i["id"] for i in by_id["items"]] == [item["id"]]
    literal = (await as_admin.get("/api/redemption/search", params={"keyword": "50%_"})).json()["data"]
    assert [i["name"] for i in literal["items"]] == ["50%_off"]
    middle = (await as_admin.get("/api/redemption/search", params={"keyword": "pring"})).json()["data"]
    assert middle["total"] == 0  # a prefix search

    one = (await as_admin.get(f"/api/redemption/{item['id']}")).json()
    assert one["success"] and one["data"] == item
    assert (await as_admin.get("/api/redemption/999999")).status_code == 404
    count = (await as_admin.get("/api/redemption/count-by-name", params={"name": "summer"})).json()
    assert count == {"success": True, "message": "", "data": 2}

    veloera = As(
        as_admin.client,
        as_admin.user_id,
        "admin",
        {"Authorization": as_admin.headers["Authorization"], "Veloera-User": str(as_admin.user_id)},
    )
    vel = (await veloera.get("/api/redemption/", params={"p": 1, "page_size": 4})).json()["data"]
    assert vel["page"] == 1 and [i["id"] for i in vel["items"]] == ids  # paged object, 1-based

    for method, url in (
        ("get", "/api/redemption/"),
        ("get", "/api/redemption/search"),
        ("get", f"/api/redemption/{item['id']}"),
        ("post", "/api/redemption/"),
        ("put", "/api/redemption/"),
        ("delete", f"/api/redemption/{item['id']}"),
        ("put", "/api/redemption/batch-disable"),
        ("delete", "/api/redemption/delete-disabled"),
        ("delete", "/api/redemption/delete-by-name?name=spring"),
        ("get", "/api/redemption/count-by-name?name=spring"),
    ):
        kwargs = (
            {"json": {"name": "x", "quota": 1, "count": 1, "id": item["id"]}}
            if method in ("post", "put")
            else {}
        )
        response = await getattr(as_user, method)(url, **kwargs)
        assert response.status_code == 403 and response.json()["success"] is False, url
    assert (await harness.client.get("/api/redemption/")).status_code == 401


async def test_custom_gift_and_windowed_codes_and_updates(harness: AppHarness, as_admin: As) -> None:
    now = int(time.time())
    keys = await create_codes(
        as_admin,
        name="gift",
        key="WELCOME-2025",
        count=5,
        is_gift=True,
        max_uses=10,
        valid_from=now - 60,
        valid_until=now + 3600,
    )
    assert keys == ["WELCOME-2025"]
    row = await code_row(harness, "WELCOME-2025")
    assert (row.is_gift, row.max_uses, row.valid_from, row.valid_until) == (True, 10, now - 60, now + 3600)
    before = await snapshot(harness)
    again = (
        await as_admin.post("/api/redemption/", json={"name": "dup", "quota": 5, "key": "WELCOME-2025"})
    ).json()
    assert not again["success"] and "already exists" in again["message"]
    assert await snapshot(harness) == before

    [key] = await create_codes(as_admin)
    code = await code_row(harness, key)
    body = {
        "id": code.id,
        "name": "renamed",
        "quota": 7000,
        "valid_from": now,
        "valid_until": now + 60,
        "status": 2,
    }
    answer = (await as_admin.put("/api/redemption/", json=body)).json()
    assert answer["success"], answer
    data = answer["data"]
    assert (data["name"], data["quota"], data["valid_from"], data["valid_until"]) == (
        "renamed",
        7000,
        now,
        now + 60,
    )
    assert data["status"] == 1 and data["key"] == key  # status is changed only with status_only
    off = (await as_admin.put("/api/redemption/?status_only=1", json={"id": code.id, "status": 2})).json()
    assert off["success"] and off["data"]["status"] == 2 and off["data"]["name"] == "renamed"
    assert (await code_row(harness, key)).status == 2


async def test_bulk_routes_and_delete(harness: AppHarness, as_admin: As) -> None:
    a = await create_codes(as_admin, name="batch-a", count=3)
    b = await create_codes(as_admin, name="batch-b", count=2)
    rows = [await code_row(harness, k) for k in (*a, *b)]
    ids = [r.id for r in rows]

    disabled = (
        await as_admin.put("/api/redemption/batch-disable", json={"ids": [ids[0], ids[1], 999]})
    ).json()
    assert disabled["data"] == 2
    twice = (await as_admin.put("/api/redemption/batch-disable", json={"ids": [ids[0]]})).json()
    assert twice["data"] == 0  # already disabled
    deleted = (await as_admin.delete("/api/redemption/delete-disabled")).json()
    assert deleted["data"] == 2
    assert (await code_row(harness, a[0])).deleted_at is not None
    assert (await as_admin.get(f"/api/redemption/{ids[0]}")).status_code == 404

    by_name = (await as_admin.delete("/api/redemption/delete-by-name", params={"name": "batch-b"})).json()
    assert by_name["data"] == 2
    left = (await as_admin.get("/api/redemption/")).json()["data"]
    assert [i["id"] for i in left["items"]] == [ids[2]] and left["total"] == 1

    assert (await as_admin.delete(f"/api/redemption/{ids[2]}")).json() == {"success": True, "message": ""}
    assert (await as_admin.delete(f"/api/redemption/{ids[2]}")).status_code == 404
    count = (await as_admin.get("/api/redemption/count-by-name", params={"name": "batch-a"})).json()
    assert count["data"] == 0


async def test_bad_input_is_refused_and_changes_nothing(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    [key] = await create_codes(as_admin)
    code = await code_row(harness, key)
    before = await snapshot(harness)
    now = int(time.time())
    create = {"name": "ok", "quota": 10, "count": 1}
    edit = {"id": code.id, "name": "ok", "quota": 10}
    cases: list[tuple[str, str, Any, str]] = [
        ("post", "/api/redemption/", {**create, "name": ""}, "name"),
        ("post", "/api/redemption/", {**create, "name": "x" * 21}, "20"),
        ("post", "/api/redemption/", {**create, "name": 5}, "name"),
        ("post", "/api/redemption/", {**create, "quota": 0}, "quota"),
        ("post", "/api/redemption/", {**create, "quota": -5}, "quota"),
        ("post", "/api/redemption/", {**create, "quota": 10**16}, "quota"),
        ("post", "/api/redemption/", {**create, "quota": "lots"}, "quota"),
        ("post", "/api/redemption/", {**create, "count": 0}, "count"),
        ("post", "/api/redemption/", {**create, "count": 101}, "count"),
        ("post", "/api/redemption/", {"name": "ok", "quota": 10}, "count"),
        ("post", "/api/redemption/", {**create, "max_uses": 0}, "max_uses"),
        ("post", "/api/redemption/", {**create, "max_uses": -2}, "max_uses"),
        ("post", "/api/redemption/", {**create, "valid_from": now, "valid_until": now - 1}, "valid_until"),
        ("post", "/api/redemption/", {**create, "valid_until": -1}, "valid_until"),
        ("post", "/api/redemption/", {**create, "key": "has space"}, "custom key"),
        ("post", "/api/redemption/", {**create, "key": "k" * 65}, "custom key"),
        ("post", "/api/redemption/", {**create, "is_gift": "sometimes"}, "is_gift"),
        ("post", "/api/redemption/", [create], "invalid request"),
        ("put", "/api/redemption/", {**edit, "name": ""}, "name"),
        ("put", "/api/redemption/", {**edit, "quota": 0}, "quota"),
        ("put", "/api/redemption/", {**edit, "valid_from": 100, "valid_until": 50}, "valid_until"),
        ("put", "/api/redemption/", {**edit, "id": "abc"}, "id"),
        ("put", "/api/redemption/?status_only=1", {"id": code.id, "status": 3}, "status"),
        ("put", "/api/redemption/?status_only=1", {"id": code.id}, "status"),
        ("put", "/api/redemption/batch-disable", {"ids": []}, "ids"),
        ("put", "/api/redemption/batch-disable", {"ids": "all"}, "ids"),
        ("delete", "/api/redemption/delete-by-name", None, "name"),
        ("get", "/api/redemption/count-by-name", None, "name"),
    ]
    for method, url, body, hint in cases:
        response = await getattr(as_admin, method)(url, **({} if body is None else {"json": body}))
        answer = response.json()
        assert response.status_code == 200 and answer["success"] is False, (url, body, answer)
        assert hint in answer["message"], (body, answer["message"])
    for response in (
        await as_admin.put("/api/redemption/", json={**edit, "id": 4242}),
        await as_admin.put("/api/redemption/?status_only=1", json={"id": 4242, "status": 2}),
        await as_admin.delete("/api/redemption/4242"),
    ):
        assert response.status_code == 404 and response.json()["success"] is False
    for bad_key in ("", "   ", "x" * 65, "0" * 32, 12345, None):
        answer = await redeem(as_user, bad_key)
        assert answer["success"] is False and answer["message"], bad_key
    assert await snapshot(harness) == before
    assert await topup_logs(harness) == []


# ----- redeeming --------------------------------------------------------------------------------


async def test_redeem_single_use_code_and_refusals(harness: AppHarness, as_admin: As, as_user: As) -> None:
    [key] = await create_codes(as_admin, quota=4000)
    start = await quota_of(harness, as_user.user_id)
    answer = await redeem(as_user, f"  {key}\n")
    assert answer == {"success": True, "message": "", "data": {"quota": 4000, "is_gift": False}}
    assert await quota_of(harness, as_user.user_id) == start + 4000

    code = await code_row(harness, key)
    assert (code.status, code.used_user_id) == (3, as_user.user_id)
    assert abs(code.redeemed_time - int(time.time())) < 60
    [log] = await topup_logs(harness)
    assert (log.user_id, log.username, log.quota) == (as_user.user_id, as_user.username, 4000)
    assert log.content == f"redeemed code #{code.id} for 4000 quota"
    async with harness.runtime.db.session() as session:
        uses = (await session.execute(select(RedemptionLog.redemption_id, RedemptionLog.user_id))).all()
    assert [tuple(u) for u in uses] == [(code.id, as_user.user_id)]
    listed = (await as_admin.get(f"/api/redemption/{code.id}")).json()["data"]
    assert (listed["status"], listed["used_user_id"]) == (3, as_user.user_id)

    before = await snapshot(harness)
    again = await redeem(as_user, key)
    assert not again["success"] and "already been used" in again["message"]
    assert (await redeem(as_admin, key))["success"] is False
    assert await snapshot(harness) == before and len(await topup_logs(harness)) == 1

    now = int(time.time())
    [disabled] = await create_codes(as_admin, name="disabled")
    [deleted] = await create_codes(as_admin, name="deleted")
    [early] = await create_codes(as_admin, name="early", valid_from=now + 3600)
    [late] = await create_codes(as_admin, name="late", valid_until=now + 3600)
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(update(Redemption).where(Redemption.key == late).values(valid_until=now - 5))
    await as_admin.put(
        "/api/redemption/?status_only=1", json={"id": (await code_row(harness, disabled)).id, "status": 2}
    )
    await as_admin.delete(f"/api/redemption/{(await code_row(harness, deleted)).id}")
    before = await snapshot(harness)
    for refused, reason in (
        (disabled, "disabled"),
        (deleted, "invalid"),
        (early, "not valid yet"),
        (late, "expired"),
    ):
        answer = await redeem(as_user, refused)
        assert not answer["success"] and reason in answer["message"], (reason, answer)
    assert await snapshot(harness) == before and len(await topup_logs(harness)) == 1

    # An administrator re-enables the used code: someone else may redeem it, its first user may not.
    enabled = await as_admin.put("/api/redemption/?status_only=1", json={"id": code.id, "status": 1})
    assert enabled.json()["success"]
    mine_again = await redeem(as_user, key)
    assert not mine_again["success"] and "already redeemed" in mine_again["message"]
    assert await quota_of(harness, as_user.user_id) == start + 4000
    assert (await redeem(as_admin, key))["success"]


async def test_gift_code_once_per_user_up_to_max_uses(harness: AppHarness, as_admin: As) -> None:
    [key] = await create_codes(as_admin, is_gift=True, max_uses=2, quota=300)
    first, second, third = await many_users(harness, 3)
    assert (await redeem(first, key))["data"] == {"quota": 300, "is_gift": True}
    again = await redeem(first, key)
    assert not again["success"] and "already redeemed" in again["message"]
    assert (await redeem(second, key))["success"]
    code = await code_row(harness, key)
    assert (code.used_count, code.status) == (2, 3)
    late = await redeem(third, key)
    assert not late["success"] and await quota_of(harness, third.user_id) == 0
    assert [await quota_of(harness, u.user_id) for u in (first, second)] == [300, 300]
    assert len(await topup_logs(harness)) == 2

    [unlimited] = await create_codes(as_admin, name="open", is_gift=True, max_uses=-1, quota=1)
    for user in (first, second, third):
        assert (await redeem(user, unlimited))["success"]
    code = await code_row(harness, unlimited)
    assert (code.used_count, code.status) == (3, 1)


# ----- concurrency ------------------------------------------------------------------------------


async def credited(harness: AppHarness, users: list[As]) -> list[int]:
    return [await quota_of(harness, u.user_id) for u in users]


async def redemption_uses(harness: AppHarness) -> int:
    async with harness.runtime.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(RedemptionLog)) or 0)


async def test_parallel_redemptions_of_a_single_use_code_credit_once(
    harness: AppHarness, as_admin: As
) -> None:
    [key] = await create_codes(as_admin, quota=777)
    users = await many_users(harness, 20)
    answers = await asyncio.gather(*(redeem(u, key) for u in users))
    assert sum(a["success"] for a in answers) == 1, [a["message"] for a in answers]
    assert all("already been used" in a["message"] for a in answers if not a["success"])
    assert sum(await credited(harness, users)) == 777
    assert len(await topup_logs(harness)) == 1 and await redemption_uses(harness) == 1


async def test_parallel_gift_redemptions_stop_at_max_uses(harness: AppHarness, as_admin: As) -> None:
    [key] = await create_codes(as_admin, is_gift=True, max_uses=5, quota=100)
    users = await many_users(harness, 20)
    answers = await asyncio.gather(*(redeem(u, key) for u in users))
    assert sum(a["success"] for a in answers) == 5, [a["message"] for a in answers]
    assert sorted(await credited(harness, users)) == [0] * 15 + [100] * 5
    assert len(await topup_logs(harness)) == 5 and await redemption_uses(harness) == 5
    code = await code_row(harness, key)
    assert (code.used_count, code.status) == (5, 3)

    # One user, one gift code, several requests at once: one credit.
    [open_key] = await create_codes(as_admin, name="open", is_gift=True, max_uses=-1, quota=50)
    [me] = await many_users(harness, 1)
    answers = await asyncio.gather(*(redeem(me, open_key) for _ in range(8)))
    assert sum(a["success"] for a in answers) == 1, [a["message"] for a in answers]
    assert await quota_of(harness, me.user_id) == 50
    assert (await code_row(harness, open_key)).used_count == 1


async def test_topup_log_goes_to_a_separate_log_database(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With ``LOG_SQL_DSN`` the top-up log is written to the log database after the credit commits."""
    settings = make_settings(
        sql_dsn=f"sqlite:///{tmp_path / 'main.db'}", log_sql_dsn=f"sqlite:///{tmp_path / 'logs.db'}"
    )
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as client:
            harness = AppHarness(app, client)
            assert harness.runtime.db.separate_logs
            admin = await make_user(harness, "admin", ROLE_ADMIN)
            [user] = await many_users(harness, 1)
            [key] = await create_codes(admin, quota=900)
            assert (await redeem(user, key))["data"] == {"quota": 900, "is_gift": False}
            [log] = await topup_logs(harness)
            assert (log.user_id, log.quota, log.type) == (user.user_id, 900, LOG_TOPUP)
            assert await quota_of(harness, user.user_id) == 900


async def test_lock_contention_answers_please_retry(
    harness: AppHarness, as_admin: As, as_user: As, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the database give up on a lock (SQLite's busy timeout, a deadlock victim) on every
    attempt, the user is told to retry: never a 500, never a credit."""
    [key] = await create_codes(as_admin)
    before = await snapshot(harness)
    attempts = 0

    async def contended(*_args: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise OperationalError("UPDATE redemptions", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(redeem_module, "_redeem_once", contended)
    response = await as_user.post("/api/user/topup", json={"key": key})
    assert response.status_code == 200
    assert response.json() == {"success": False, "message": "the database is busy: please retry"}
    assert attempts == redeem_module.ATTEMPTS
    assert await snapshot(harness) == before
