"""Admin user routes through HTTP on every database: lists and search, view, create, edit (with the
one-manage-log rule and exact balances under leases), manage actions, hard delete, groups; the
role rules; and bad input on every write route, which must change nothing."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tollway.db.models import Log, QuotaLease, Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.db.models.log import LOG_MANAGE
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON, ROLE_ROOT, USER_DISABLED, USER_ENABLED
from tollway.relay.accounts import UserRecord

pytestmark = pytest.mark.db

LEASED = 1_000  # quota a worker holds in custody for a user in these tests


# ----- helpers ------------------------------------------------------------------------------------


async def add_lease(harness: AppHarness, user_id: int, amount: int = LEASED) -> None:
    """Quota moved from the balance column into a worker's lease, as the balance store does."""
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(update(User).where(User.id == user_id).values(quota=User.quota - amount))
        session.add(
            QuotaLease(
                holder="test-holder",
                account_kind=ACCOUNT_USER,
                account_id=user_id,
                amount=amount,
                updated_at=int(time.time()),
            )
        )


async def user_rows(harness: AppHarness) -> list[tuple[Any, ...]]:
    """Every user column that a write route could touch, to prove a refusal changed nothing."""
    async with harness.runtime.db.session() as session:
        rows = await session.execute(
            select(
                User.id,
                User.username,
                User.display_name,
                User.password,
                User.role,
                User.status,
                User.quota,
                User.group,
                User.deleted_at,
            ).order_by(User.id)
        )
        return [tuple(row) for row in rows.all()]


async def manage_logs(harness: AppHarness) -> list[Log]:
    async with harness.runtime.db.log_session() as session:
        return list((await session.scalars(select(Log).where(Log.type == LOG_MANAGE).order_by(Log.id))).all())


async def relay_user(harness: AppHarness, user_id: int) -> UserRecord | None:
    """The user as the relay's account cache sees it right now."""
    return await harness.runtime.relay.accounts.user(user_id)


async def column(harness: AppHarness, user_id: int, name: str) -> Any:
    async with harness.runtime.db.session() as session:
        return await session.scalar(select(getattr(User, name)).where(User.id == user_id))


def refused(response: Any, status: int = 200) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["message"]
    return str(body["message"])


async def login(harness: AppHarness, username: str, password: str) -> int:
    """Log in through the public route; the session cookie it sets is dropped again so the shared
    client keeps acting only through each caller's bearer headers."""
    response = await harness.client.post("/api/user/login", json={"username": username, "password": password})
    harness.client.cookies.clear()
    return int(data(response)["id"])


def data(response: Any) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    return body.get("data")


# ----- lists, search, view ------------------------------------------------------------------------


async def test_list_pages_newest_first_with_deleted_rows_and_exact_quota(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    others = [await make_user(harness, f"user{i}", ROLE_COMMON, quota=100 * i) for i in range(1, 4)]
    await add_lease(harness, as_user.user_id)
    assert data(await as_admin.post("/api/user/manage", json={"id": others[0].user_id, "action": "delete"}))

    page = data(await as_admin.get("/api/user/", params={"p": 1, "page_size": 2}))
    assert page["total"] == 5 and page["page"] == 1 and page["page_size"] == 2
    assert [u["id"] for u in page["items"]] == [others[2].user_id, others[1].user_id]
    everyone = data(await as_admin.get("/api/user/", params={"p": 1, "page_size": 500}))
    assert everyone["page_size"] == 100 and everyone["total"] == 5
    by_id = {u["id"]: u for u in everyone["items"]}
    assert [u["id"] for u in everyone["items"]] == sorted(by_id, reverse=True)
    assert by_id[others[0].user_id]["DeletedAt"] is not None
    assert by_id[others[1].user_id]["DeletedAt"] is None
    assert by_id[as_user.user_id]["quota"] == 500_000  # column + leased
    for user in everyone["items"]:
        assert user["password"] == ""
        assert {"username", "role", "status", "group", "aff_code", "used_quota", "setting"} <= set(user)
    async with harness.runtime.db.session() as session:
        hashes = (await session.scalars(select(User.password))).all()
    raw = (await as_admin.get("/api/user/", params={"page_size": 100})).text
    assert not any(h in raw for h in hashes)

    last = data(await as_admin.get("/api/user/", params={"p": 3, "page_size": 2}))
    assert [u["id"] for u in last["items"]] == [min(by_id)] and last["total"] == 5

    veloera = {
        "Authorization": as_admin.headers["Authorization"],
        "Veloera-User": str(as_admin.user_id),
    }
    paged = data(await harness.client.get("/api/user/", params={"p": 1, "page_size": 10}, headers=veloera))
    assert paged["total"] == 5 and len(paged["items"]) == 5


async def test_search_matches_id_substrings_and_group(harness: AppHarness, as_admin: As) -> None:
    carol = await make_user(harness, "Carol_99", ROLE_COMMON, group="vip")
    await make_user(harness, "dave", ROLE_COMMON)
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(
            update(User).where(User.username == "dave").values(email="dave@example.com", display_name="Big D")
        )

    async def names(**params: Any) -> list[str]:
        page = data(await as_admin.get("/api/user/search", params=params))
        assert page["total"] == len(page["items"])
        return sorted(u["username"] for u in page["items"])

    assert await names(keyword="carol") == ["Carol_99"]  # case-insensitive everywhere
    assert await names(keyword="example.com") == ["dave"]
    assert await names(keyword="big d") == ["dave"]
    assert await names(keyword=str(carol.user_id)) == ["Carol_99"]
    assert await names(keyword="l_9") == ["Carol_99"]
    assert await names(keyword="%") == []  # wildcards are literal
    assert await names(group="vip") == ["Carol_99"]
    assert await names(group="vip", keyword="dave") == []
    assert await names() == ["Carol_99", "admin", "dave"]
    paged = data(await as_admin.get("/api/user/search", params={"p": 2, "page_size": 2}))
    assert paged["total"] == 3 and len(paged["items"]) == 1 and paged["page"] == 2
    assert data(await as_admin.get("/api/user/search", params={"keyword": "9" * 30}))["total"] == 0


async def test_view_one_user_obeys_roles_and_groups_list(
    harness: AppHarness, as_root: As, as_admin: As, as_user: As
) -> None:
    other_admin = await make_user(harness, "admin2", ROLE_ADMIN)
    await add_lease(harness, as_user.user_id)

    user = data(await as_admin.get(f"/api/user/{as_user.user_id}"))
    assert (user["id"], user["username"], user["role"], user["quota"]) == (
        as_user.user_id,
        "alice",
        ROLE_COMMON,
        500_000,
    )
    assert user["password"] == "" and user["DeletedAt"] is None
    for target in (other_admin.user_id, as_root.user_id, as_admin.user_id):
        assert "role" in refused(await as_admin.get(f"/api/user/{target}"), 403)
    assert data(await as_root.get(f"/api/user/{other_admin.user_id}"))["role"] == ROLE_ADMIN
    assert data(await as_root.get(f"/api/user/{as_root.user_id}"))["role"] == ROLE_ROOT
    refused(await as_admin.get("/api/user/999999"), 404)
    refused(await as_admin.get("/api/user/99999999999999999999"), 404)

    assert data(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "delete"}))
    assert data(await as_admin.get(f"/api/user/{as_user.user_id}"))["DeletedAt"]

    assert data(await as_admin.get("/api/group/")) == ["default", "vip", "svip"]
    await harness.runtime.options.save("GroupRatio", '{"default": 1, "enterprise": 0.8}')
    assert data(await as_admin.get("/api/group/")) == ["default", "enterprise"]


# ----- create -------------------------------------------------------------------------------------


async def test_create_refuses_bad_input_then_creates_common_users(
    harness: AppHarness, as_root: As, as_admin: As
) -> None:
    gone = await make_user(harness, "ghost", ROLE_COMMON)
    assert data(await as_admin.post("/api/user/manage", json={"id": gone.user_id, "action": "delete"}))
    good = {"username": "valid", "password": "long-enough"}
    cases: list[tuple[Any, int, str]] = [
        ({"password": "long-enough"}, 200, "username"),
        ({"username": "valid"}, 200, "password"),
        ({"username": 12345, "password": "long-enough"}, 200, "username"),
        ({"username": "valid", "password": 12345678}, 200, "password"),
        ({**good, "display_name": ["x"]}, 200, "display_name"),
        ({**good, "username": "u" * 21}, 200, "username"),
        ({**good, "username": "two words"}, 200, "username"),
        ({**good, "username": "   "}, 200, "username"),
        ({**good, "username": "x" * 5000}, 200, "username"),
        ({**good, "password": "short"}, 200, "password"),
        ({**good, "password": "p" * 21}, 200, "password"),
        ({**good, "display_name": "d" * 21}, 200, "display name"),
        ({**good, "username": "admin"}, 200, "already exists"),
        ({**good, "username": "ghost"}, 200, "deleted"),
        ({**good, "role": ROLE_ADMIN}, 403, "role"),
        ({**good, "role": "1"}, 200, "role"),
        ([good], 200, "invalid request"),
        ("not json", 200, "invalid request"),
    ]
    before = await user_rows(harness)
    for body, status, fragment in cases:
        if isinstance(body, str):
            response = await as_admin.post("/api/user/", content=body)
        else:
            response = await as_admin.post("/api/user/", json=body)
        message = refused(response, status)
        assert fragment in message, (body, message)
    assert await user_rows(harness) == before

    created = data(
        await as_admin.post("/api/user/", json={"username": "  newbie ", "password": "s3cret-pass"})
    )
    assert (created["username"], created["display_name"], created["role"]) == (
        "newbie",
        "newbie",
        ROLE_COMMON,
    )
    second = data(
        await as_root.post(
            "/api/user/",
            json={"username": "helper", "password": "s3cret-pass", "display_name": "Helper", "role": 10},
        )
    )
    assert second["role"] == ROLE_COMMON  # a role in the body is never applied
    async with harness.runtime.db.session() as session:
        rows = (await session.scalars(select(User).where(User.username.in_(["newbie", "helper"])))).all()
    assert {(u.role, u.status, u.group) for u in rows} == {(ROLE_COMMON, USER_ENABLED, "default")}
    assert all(u.password.startswith("$argon2") and "s3cret" not in u.password for u in rows)
    codes = [u.aff_code for u in rows]
    assert all(c and len(c) == 4 and c.isalnum() for c in codes) and len(set(codes)) == 2

    assert await login(harness, "newbie", "s3cret-pass") == created["id"]


# ----- edit ---------------------------------------------------------------------------------------


def edit_body(user: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What new-api's console sends: the user as shown, with the edits."""
    return {**user, **changes}


async def test_quota_edit_is_exact_under_leases_and_writes_one_manage_log(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    await add_lease(harness, as_user.user_id)
    assert (record := await relay_user(harness, as_user.user_id)) and record.quota == 500_000
    shown = data(await as_admin.get(f"/api/user/{as_user.user_id}"))
    assert shown["quota"] == 500_000

    edited = data(await as_admin.put("/api/user/", json=edit_body(shown, quota=800_000)))
    assert edited["quota"] == 800_000
    assert await column(harness, as_user.user_id, "quota") == 800_000 - LEASED
    assert (record := await relay_user(harness, as_user.user_id)) and record.quota == 800_000
    logs = await manage_logs(harness)
    assert len(logs) == 1
    log = logs[0]
    assert (log.user_id, log.username) == (as_user.user_id, "alice")
    assert "admin" in log.content and "500000" in log.content and "800000" in log.content
    assert log.request_id

    same = data(await as_admin.put("/api/user/", json=edit_body(edited, display_name="Alice A.")))
    assert same["display_name"] == "Alice A." and same["quota"] == 800_000
    assert len(await manage_logs(harness)) == 1  # quota unchanged: no log

    data(await as_admin.put("/api/user/", json=edit_body(same, quota=0, group="vip", username="alice2")))
    assert await column(harness, as_user.user_id, "quota") == -LEASED
    assert await column(harness, as_user.user_id, "group") == "vip"
    logs = await manage_logs(harness)
    assert len(logs) == 2 and (logs[1].user_id, logs[1].username) == (as_user.user_id, "alice2")

    # Concurrent edits serialise on the row lock: each log's old quota is the previous one's new.
    current = data(await as_admin.get(f"/api/user/{as_user.user_id}"))
    targets = (1_111, 2_222, 3_333)
    answers = await asyncio.gather(
        *(as_admin.put("/api/user/", json=edit_body(current, quota=q)) for q in targets)
    )
    assert all(data(answer) for answer in answers)
    changes = [
        tuple(int(n) for n in re.findall(r"from (\d+) to (\d+)", log.content)[0])
        for log in (await manage_logs(harness))[2:]
    ]
    assert len(changes) == 3 and changes[0][0] == current["quota"] == 0
    assert all(changes[i][0] == changes[i - 1][1] for i in (1, 2))
    assert sorted(new for _old, new in changes) == list(targets)
    final = data(await as_admin.get(f"/api/user/{as_user.user_id}"))["quota"]
    assert final == changes[-1][1] == await column(harness, as_user.user_id, "quota") + LEASED


async def test_edit_password_and_role_rules(
    harness: AppHarness, as_root: As, as_admin: As, as_user: As
) -> None:
    other_admin = await make_user(harness, "admin2", ROLE_ADMIN)
    user = data(await as_admin.get(f"/api/user/{as_user.user_id}"))
    old_hash = await column(harness, as_user.user_id, "password")
    data(await as_admin.put("/api/user/", json=edit_body(user, password="")))
    assert await column(harness, as_user.user_id, "password") == old_hash
    data(await as_admin.put("/api/user/", json=edit_body(user, password="brand-new-pass")))
    assert await login(harness, "alice", "brand-new-pass") == as_user.user_id

    before = await user_rows(harness)
    admin_view = data(await as_root.get(f"/api/user/{other_admin.user_id}"))
    root_view = data(await as_root.get(f"/api/user/{as_root.user_id}"))
    refusals: list[tuple[As, dict[str, Any], int, str]] = [
        (as_admin, edit_body(admin_view, quota=1), 403, "role"),
        (as_admin, edit_body(root_view, quota=1), 403, "role"),
        (as_admin, edit_body(user, role=ROLE_ADMIN), 403, "root"),
        (as_root, edit_body(root_view, role=ROLE_ADMIN), 200, "root"),
        (as_root, edit_body(user, role=ROLE_ROOT), 200, "role"),
        (as_root, edit_body(user, role=5), 200, "role"),
    ]
    for caller, body, status, fragment in refusals:
        assert fragment in refused(await caller.put("/api/user/", json=body), status)
    assert await user_rows(harness) == before
    assert await manage_logs(harness) == []

    data(await as_admin.put("/api/user/", json=edit_body(user, role=ROLE_COMMON, display_name="same role")))
    assert data(await as_root.put("/api/user/", json=edit_body(user, role=ROLE_ADMIN)))["role"] == ROLE_ADMIN
    assert data(await as_root.put("/api/user/", json=edit_body(root_view, quota=7)))["quota"] == 7


async def test_edit_refuses_bad_input_and_changes_nothing(
    harness: AppHarness, as_admin: As, as_user: As
) -> None:
    await make_user(harness, "bob", ROLE_COMMON)
    gone = await make_user(harness, "ghost", ROLE_COMMON)
    assert data(await as_admin.post("/api/user/manage", json={"id": gone.user_id, "action": "delete"}))
    user = data(await as_admin.get(f"/api/user/{as_user.user_id}"))
    good = edit_body(user, quota=123)
    without = {k: v for k, v in good.items() if k != "quota"}
    cases: list[tuple[Any, int, str]] = [
        ({k: v for k, v in good.items() if k != "id"}, 200, "id"),
        (without, 200, "quota"),
        ({**good, "id": "abc"}, 200, "id"),
        ({**good, "id": 999_999}, 404, "not found"),
        ({**good, "id": 2**40}, 404, "not found"),
        ({**good, "id": gone.user_id}, 404, "deleted"),
        ({**good, "quota": "123"}, 200, "quota"),
        ({**good, "quota": 12.5}, 200, "quota"),
        ({**good, "quota": -1}, 200, "quota"),
        ({**good, "quota": 2**60}, 200, "quota"),
        ({**good, "quota": True}, 200, "quota"),
        ({**good, "username": "u" * 21}, 200, "username"),
        ({**good, "username": ""}, 200, "username"),
        ({**good, "username": "bob"}, 200, "already exists"),
        ({**good, "username": "ghost"}, 200, "deleted"),
        ({**good, "group": ""}, 200, "group"),
        ({**good, "group": "g" * 65}, 200, "group"),
        ({**good, "group": None}, 200, "group"),
        ({**good, "display_name": "d" * 21}, 200, "display name"),
        ({**good, "password": "short"}, 200, "password"),
        ({**good, "password": "p" * 300}, 200, "password"),
        ({**good, "role": "10"}, 200, "role"),
        ([good], 200, "invalid request"),
        ("{broken", 200, "invalid request"),
    ]
    before = await user_rows(harness)
    for body, status, fragment in cases:
        if isinstance(body, str):
            response = await as_admin.put("/api/user/", content=body)
        else:
            response = await as_admin.put("/api/user/", json=body)
        message = refused(response, status)
        assert fragment in message, (body, message)
    assert await user_rows(harness) == before
    assert await manage_logs(harness) == []


# ----- manage and delete --------------------------------------------------------------------------


async def test_manage_actions_take_effect_at_once(
    harness: AppHarness, as_root: As, as_admin: As, as_user: As
) -> None:
    assert (record := await relay_user(harness, as_user.user_id)) and record.status == USER_ENABLED
    assert data(await as_user.get("/api/user/self"))["id"] == as_user.user_id

    answer = data(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "disable"}))
    assert answer == {"role": ROLE_COMMON, "status": USER_DISABLED}
    refused(await as_user.get("/api/user/self"), 403)
    assert (record := await relay_user(harness, as_user.user_id)) and record.status == USER_DISABLED

    answer = data(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "enable"}))
    assert answer == {"role": ROLE_COMMON, "status": USER_ENABLED}
    assert data(await as_user.get("/api/user/self"))["status"] == USER_ENABLED

    refused(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "promote"}), 403)
    answer = data(await as_root.post("/api/user/manage", json={"id": as_user.user_id, "action": "promote"}))
    assert answer == {"role": ROLE_ADMIN, "status": USER_ENABLED}
    assert "already" in refused(
        await as_root.post("/api/user/manage", json={"id": as_user.user_id, "action": "promote"})
    )
    refused(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "demote"}), 403)
    answer = data(await as_root.post("/api/user/manage", json={"id": as_user.user_id, "action": "demote"}))
    assert answer == {"role": ROLE_COMMON, "status": USER_ENABLED}
    assert "already" in refused(
        await as_root.post("/api/user/manage", json={"id": as_user.user_id, "action": "demote"})
    )

    async with harness.runtime.db.session() as session, session.begin():
        session.add(Token(user_id=as_user.user_id, key_hash="a" * 64, name="t"))
    answer = data(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "delete"}))
    assert answer == {"role": ROLE_COMMON, "status": USER_ENABLED}
    assert await column(harness, as_user.user_id, "deleted_at") is not None
    refused(await as_user.get("/api/user/self"), 401)
    assert await relay_user(harness, as_user.user_id) is None
    refused(await as_admin.post("/api/user/manage", json={"id": as_user.user_id, "action": "enable"}), 404)


async def test_manage_and_delete_refusals_change_nothing_then_hard_delete(
    harness: AppHarness, as_root: As, as_admin: As, as_user: As
) -> None:
    other_admin = await make_user(harness, "admin2", ROLE_ADMIN)
    ghost = await make_user(harness, "ghost", ROLE_COMMON)
    async with harness.runtime.db.session() as session, session.begin():
        token = Token(user_id=as_user.user_id, key_hash="b" * 64, name="t", remain_quota=10)
        session.add(token)
        await session.flush()
        session.add(QuotaLease(holder="h", account_kind=ACCOUNT_TOKEN, account_id=token.id, amount=5))
    await add_lease(harness, as_user.user_id)
    cases: list[tuple[As, Any, int, str]] = [
        (as_admin, {"id": other_admin.user_id, "action": "disable"}, 403, "role"),
        (as_admin, {"id": as_admin.user_id, "action": "disable"}, 403, "role"),
        (as_admin, {"id": as_root.user_id, "action": "delete"}, 403, "role"),
        (as_root, {"id": as_root.user_id, "action": "disable"}, 200, "root"),
        (as_root, {"id": as_root.user_id, "action": "delete"}, 200, "root"),
        (as_root, {"id": as_root.user_id, "action": "demote"}, 200, "root"),
        (as_admin, {"id": 999_999, "action": "disable"}, 404, "not found"),
        (as_admin, {"id": 2**62, "action": "disable"}, 404, "not found"),
        (as_admin, {"id": as_user.user_id, "action": "explode"}, 200, "action"),
        (as_admin, {"id": as_user.user_id, "action": 1}, 200, "action"),
        (as_admin, {"id": str(as_user.user_id), "action": "disable"}, 200, "id"),
        (as_admin, {"action": "disable"}, 200, "id"),
        (as_admin, {"id": as_user.user_id}, 200, "action"),
        (as_admin, {"id": as_user.user_id, "action": "d" * 5000}, 200, "action"),
        (as_admin, [as_user.user_id], 200, "invalid request"),
    ]
    before = await user_rows(harness)
    for caller, body, status, fragment in cases:
        message = refused(await caller.post("/api/user/manage", json=body), status)
        assert fragment in message, (body, message)
    for caller, target, status in (
        (as_admin, other_admin.user_id, 403),
        (as_admin, as_root.user_id, 403),
        (as_root, as_root.user_id, 200),
        (as_admin, 999_999, 404),
    ):
        refused(await caller.delete(f"/api/user/{target}"), status)
    refused(await as_admin.delete("/api/user/abc"), 404)
    assert await user_rows(harness) == before

    response = await as_admin.delete(f"/api/user/{as_user.user_id}")
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": ""}
    async with harness.runtime.db.session() as session:
        assert await session.scalar(select(User).where(User.id == as_user.user_id)) is None
        assert await session.scalar(select(func.count()).select_from(Token)) == 0
        assert await session.scalar(select(func.count()).select_from(QuotaLease)) == 0  # no orphans
    refused(await as_user.get("/api/user/self"), 401)
    refused(await as_admin.delete(f"/api/user/{as_user.user_id}"), 404)

    assert data(await as_admin.post("/api/user/manage", json={"id": ghost.user_id, "action": "delete"}))
    assert (await as_root.delete(f"/api/user/{ghost.user_id}")).json()["success"] is True
    assert await column(harness, ghost.user_id, "id") is None
    assert (await as_root.delete(f"/api/user/{other_admin.user_id}")).json()["success"] is True
