"""Token routes through HTTP on every database: keys, paging in both dialects, ownership, exact
balances with leases, bad input, and the relay refusing a deleted or disabled token at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel
from tollway.app import create_app
from tollway.auth.keys import KeyCipher, hash_key
from tollway.db.models import QuotaLease, Token
from tollway.db.models.lease import ACCOUNT_TOKEN
from tollway.db.models.user import ROLE_COMMON
from tollway.settings import Settings

pytestmark = pytest.mark.db

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
FULL: dict[str, Any] = {
    "name": "build server",
    "expired_time": -1,
    "remain_quota": 1000,
    "unlimited_quota": False,
    "model_limits_enabled": True,
    "model_limits": "gpt-4o-mini, gpt-4o,,gpt-4o-mini",
    "allow_ips": "10.0.0.1\n192.168.0.0/16, ::1",
    "group": "vip",
}


async def create(user: As, **fields: Any) -> dict[str, Any]:
    body = {"name": "t", "unlimited_quota": True, **fields}
    answer = (await user.post("/api/token/", json=body)).json()
    assert answer["success"], answer
    data: dict[str, Any] = answer["data"]
    return data


async def snapshot(harness: AppHarness) -> list[tuple[Any, ...]]:
    """Every token row as stored, deleted ones included: what "nothing changed" compares."""
    async with harness.runtime.db.session() as session:
        rows = await session.execute(select(Token.__table__).order_by(Token.id))
        return [tuple(r) for r in rows.all()]


async def row(harness: AppHarness, token_id: int) -> Token:
    async with harness.runtime.db.session() as session:
        token = await session.get(Token, token_id)
        assert token is not None
        return token


def veloera(user: As) -> As:
    """The same user as Veloera's console calls: ``Veloera-User`` instead of ``New-Api-User``."""
    headers = {"Authorization": user.headers["Authorization"], "Veloera-User": str(user.user_id)}
    return As(user.client, user.user_id, user.username, headers)


def masked(key: str) -> str:
    return f"{key[3:7]}**********{key[-4:]}"


async def test_create_returns_the_key_once_and_stores_only_its_hash(harness: AppHarness, as_user: As) -> None:
    data = await create(as_user, **FULL)
    key = data["key"]
    assert key.startswith("sk-") and len(key) == 51 and key[3:].isalnum()
    assert data["status"] == 1 and data["user_id"] == as_user.user_id
    assert data["model_limits"] == "gpt-4o-mini,gpt-4o"
    assert data["allow_ips"] == "10.0.0.1\n192.168.0.0/16\n::1"
    assert (data["remain_quota"], data["group"], data["name"], data["DeletedAt"]) == (
        1000,
        "vip",
        "build server",
        None,
    )

    stored = await row(harness, data["id"])
    assert stored.key_hash == hash_key(key) == hash_key(key[3:])
    assert key[3:] not in stored.key_encrypted and key[3:] not in str(stored.key_hint)
    assert KeyCipher(harness.runtime.settings.crypto_secret).decrypt(stored.key_encrypted) == key[3:]

    one = (await as_user.get(f"/api/token/{data['id']}")).json()
    assert one["success"] and one["data"]["key"] == masked(key)
    assert {k: v for k, v in one["data"].items() if k != "key"} == {
        k: v for k, v in data.items() if k != "key"
    }
    listed = (await as_user.get("/api/token/")).json()["data"]["items"]
    assert [t["key"] for t in listed] == [masked(key)]

    # A limited token may start with nothing: it exists, and shows as exhausted (status 4).
    empty = await create(as_user, unlimited_quota=False, remain_quota=0)
    assert (empty["remain_quota"], empty["status"]) == (0, 4)


async def test_lists_and_search_page_in_both_dialects(harness: AppHarness, as_user: As) -> None:
    made = [await create(as_user, name=f"token {i:02d}") for i in range(12)]
    odd = await create(as_user, name="100%_sure")
    ids = [t["id"] for t in reversed([*made, odd])]  # id desc

    page = (await as_user.get("/api/token/", params={"p": 1, "page_size": 5})).json()["data"]
    assert (page["total"], page["page"], page["page_size"]) == (13, 1, 5)
    assert [t["id"] for t in page["items"]] == ids[:5]
    last = (await as_user.get("/api/token/", params={"p": 3, "page_size": 5})).json()["data"]
    assert [t["id"] for t in last["items"]] == ids[10:]
    clamped = (await as_user.get("/api/token/", params={"page_size": 500})).json()["data"]
    assert (clamped["page_size"], len(clamped["items"])) == (100, 13)

    vel = veloera(as_user)
    first = (await vel.get("/api/token/", params={"p": 0, "size": 5})).json()
    assert first["success"] and [t["id"] for t in first["data"]] == ids[:5]
    third = (await vel.get("/api/token/", params={"p": 2, "size": 5})).json()["data"]
    assert [t["id"] for t in third] == ids[10:]

    found = (await as_user.get("/api/token/search", params={"keyword": "token 1"})).json()["data"]
    assert found["total"] == 2 and [t["name"] for t in found["items"]] == ["token 11", "token 10"]
    literal = (await as_user.get("/api/token/search", params={"keyword": "0%_"})).json()["data"]
    assert [t["id"] for t in literal["items"]] == [odd["id"]]
    by_key = (await as_user.get("/api/token/search", params={"token": odd["key"]})).json()["data"]
    assert [t["id"] for t in by_key["items"]] == [odd["id"]]
    bare = (await as_user.get("/api/token/search", params={"token": odd["key"][3:]})).json()["data"]
    assert bare["total"] == 1
    fragment = (await as_user.get("/api/token/search", params={"token": odd["key"][3:20]})).json()["data"]
    assert fragment["total"] == 0

    vel_found = (await vel.get("/api/token/search", params={"keyword": "token"})).json()
    assert vel_found["success"] and len(vel_found["data"]) == 12  # every match, a plain array
    vel_paged = (await vel.get("/api/token/search", params={"keyword": "token", "p": 1, "size": 5})).json()
    assert [t["id"] for t in vel_paged["data"]] == ids[6:11]
    everything = (await as_user.get("/api/token/search")).json()["data"]
    assert everything["total"] == 13 and len(everything["items"]) == 10


async def test_remain_quota_is_exact_with_leases(harness: AppHarness, as_user: As) -> None:
    data = await create(as_user, unlimited_quota=False, remain_quota=1000)
    token_id = data["id"]
    async with harness.runtime.db.session() as session, session.begin():
        # A worker leased 300 of it: the column went down by 300, the lease holds it.
        await session.execute(update(Token).where(Token.id == token_id).values(remain_quota=700))
        await session.execute(
            insert(QuotaLease).values(
                holder="w1", account_kind=ACCOUNT_TOKEN, account_id=token_id, amount=300
            )
        )
    shown = (await as_user.get(f"/api/token/{token_id}")).json()["data"]
    assert shown["remain_quota"] == 1000
    listed = (await as_user.get("/api/token/")).json()["data"]["items"][0]
    assert listed["remain_quota"] == 1000

    updated = (await as_user.put("/api/token/", json={**data, "remain_quota": 500})).json()
    assert updated["success"] and updated["data"]["remain_quota"] == 500
    assert (await row(harness, token_id)).remain_quota == 200  # 500 − 300 held by the lease


async def test_update_full_and_status_only_and_refused_enabling(harness: AppHarness, as_user: As) -> None:
    data = await create(as_user, **FULL)
    token_id = data["id"]
    later = int(time.time()) + 3600
    body = {
        **data,
        "name": "renamed",
        "expired_time": later,
        "unlimited_quota": True,
        "model_limits_enabled": False,
        "allow_ips": "",
        "group": "",
        "status": 2,  # a full update does not apply status (new-api)
    }
    answer = (await as_user.put("/api/token/", json=body)).json()
    assert answer["success"], answer
    got = answer["data"]
    assert (got["name"], got["expired_time"], got["unlimited_quota"], got["group"]) == (
        "renamed",
        later,
        True,
        "",
    )
    assert got["status"] == 1 and got["key"] == masked(data["key"])
    assert (await row(harness, token_id)).status == 1

    off = (await as_user.put("/api/token/?status_only=1", json={"id": token_id, "status": 2})).json()
    assert off["success"] and off["data"]["status"] == 2 and off["data"]["name"] == "renamed"
    on = (
        await as_user.put("/api/token/", params={"status_only": "true"}, json={"id": token_id, "status": 1})
    ).json()
    assert on["success"] and on["data"]["status"] == 1

    expired = await create(as_user)
    exhausted = await create(as_user, unlimited_quota=False, remain_quota=0)
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(
            update(Token)
            .where(Token.id == expired["id"])
            .values(status=2, expired_time=int(time.time()) - 10)
        )
        await session.execute(update(Token).where(Token.id == exhausted["id"]).values(status=2))
    before = await snapshot(harness)
    for token, reason in ((expired, "expired"), (exhausted, "used up")):
        answer = (
            await as_user.put("/api/token/?status_only=1", json={"id": token["id"], "status": 1})
        ).json()
        assert not answer["success"] and reason in answer["message"]
    assert await snapshot(harness) == before
    listed = {t["id"]: t["status"] for t in (await as_user.get("/api/token/")).json()["data"]["items"]}
    assert (listed[expired["id"]], listed[exhausted["id"]]) == (2, 2)

    # A full update may keep a past expiry as it is (renaming an expired token), not set a new one.
    stale = (await as_user.get(f"/api/token/{expired['id']}")).json()["data"]
    renamed = (await as_user.put("/api/token/", json={**stale, "name": "old one"})).json()
    assert renamed["success"] and renamed["data"]["name"] == "old one" and renamed["data"]["status"] == 2
    moved = (
        await as_user.put("/api/token/", json={**stale, "expired_time": stale["expired_time"] - 1})
    ).json()
    assert not moved["success"] and "expired_time" in moved["message"]


async def test_delete_batch_delete_and_reveal(harness: AppHarness, as_user: As) -> None:
    other = await make_user(harness, "bob", ROLE_COMMON)
    mine = [await create(as_user, name=f"m{i}") for i in range(4)]
    theirs = await create(other, name="theirs")

    gone = (await as_user.delete(f"/api/token/{mine[0]['id']}")).json()
    assert gone["success"]
    assert (await row(harness, mine[0]["id"])).deleted_at is not None
    assert (await as_user.get(f"/api/token/{mine[0]['id']}")).status_code == 404
    again = await as_user.delete(f"/api/token/{mine[0]['id']}")
    assert again.status_code == 404 and not again.json()["success"]

    ids = [mine[1]["id"], mine[2]["id"], theirs["id"], mine[0]["id"], 999_999]
    batch = (await as_user.post("/api/token/batch", json={"ids": ids})).json()
    assert batch == {"success": True, "message": "", "data": 2}
    left = (await as_user.get("/api/token/")).json()["data"]
    assert [t["id"] for t in left["items"]] == [mine[3]["id"]] and left["total"] == 1
    assert (await row(harness, theirs["id"])).deleted_at is None

    a, b = await create(as_user, name="a"), await create(as_user, name="b")
    theirs = await create(other, name="theirs 2")

    revealed = await as_user.post(f"/api/token/{a['id']}/key")
    assert revealed.json() == {"success": True, "message": "", "data": {"key": a["key"]}}
    assert revealed.headers["cache-control"] == "no-store"
    assert (await as_user.post(f"/api/token/{theirs['id']}/key")).status_code == 404
    assert (await as_user.post(f"/api/token/{mine[0]['id']}/key")).status_code == 404  # deleted

    ids = [a["id"], b["id"], theirs["id"], 424242]
    keys = (await as_user.post("/api/token/batch/keys", json={"ids": ids})).json()
    assert keys["success"] and keys["data"] == {"keys": {str(a["id"]): a["key"], str(b["id"]): b["key"]}}

    too_many = (await as_user.post("/api/token/batch/keys", json={"ids": list(range(1, 102))})).json()
    assert not too_many["success"] and "100" in too_many["message"]


async def test_another_users_token_is_invisible_and_untouchable(harness: AppHarness, as_user: As) -> None:
    bob = await make_user(harness, "bob", ROLE_COMMON)
    theirs = await create(bob, name="bob's", unlimited_quota=False, remain_quota=10)
    before = await snapshot(harness)
    tid = theirs["id"]

    assert (await as_user.get(f"/api/token/{tid}")).status_code == 404
    listed = (await as_user.get("/api/token/")).json()["data"]
    assert listed == {"items": [], "total": 0, "page": 1, "page_size": 10}
    search = (await as_user.get("/api/token/search", params={"token": theirs["key"]})).json()["data"]
    assert search["total"] == 0
    for answer in (
        await as_user.put("/api/token/", json={**theirs, "name": "stolen", "remain_quota": 10**9}),
        await as_user.put("/api/token/?status_only=1", json={"id": tid, "status": 2}),
        await as_user.delete(f"/api/token/{tid}"),
        await as_user.post(f"/api/token/{tid}/key"),
    ):
        assert answer.status_code == 404 and answer.json()["success"] is False
    assert (await as_user.post("/api/token/batch", json={"ids": [tid]})).json()["data"] == 0
    assert (await as_user.post("/api/token/batch/keys", json={"ids": [tid]})).json()["data"] == {"keys": {}}
    assert await snapshot(harness) == before

    assert (await harness.client.get("/api/token/")).status_code == 401


BAD_CREATE: list[tuple[Any, str]] = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "x" * 51}, "50"),
    ({"name": 123}, "name"),
    ({"expired_time": 0}, "expired_time"),
    ({"expired_time": 1_000_000}, "expired_time"),
    ({"expired_time": "tomorrow"}, "expired_time"),
    ({"expired_time": 10**13}, "expired_time"),
    ({"remain_quota": -1, "unlimited_quota": False}, "remain_quota"),
    ({"remain_quota": 10**16, "unlimited_quota": False}, "remain_quota"),
    ({"remain_quota": 1.5}, "remain_quota"),
    ({"unlimited_quota": "perhaps"}, "unlimited_quota"),
    ({"allow_ips": "10.0.0.1\nnot-an-ip"}, "not-an-ip"),
    ({"allow_ips": "300.1.1.1"}, "300.1.1.1"),
    ({"allow_ips": ",".join(f"10.0.{i // 250}.{i % 250}" for i in range(200))}, "1024"),
    ({"model_limits": ",".join(f"model-{i}" for i in range(200))}, "1024"),
    ({"group": "svip"}, "svip"),  # has a ratio, but users may not choose it
    ({"group": "nonexistent"}, "nonexistent"),
    ({"group": "g" * 65}, "64"),
    ({"model_limits": ["gpt-4o"]}, "model_limits"),
]


async def test_bad_input_is_refused_and_changes_nothing(harness: AppHarness, as_user: As) -> None:
    token = await create(as_user, name="keep", unlimited_quota=False, remain_quota=5)
    tid = token["id"]
    before = await snapshot(harness)
    base = {"name": "ok", "unlimited_quota": True}
    cases: list[tuple[str, str, Any, str]] = []
    for fields, hint in BAD_CREATE:
        cases.append(("post", "/api/token/", {**base, **fields}, hint))
        cases.append(("put", "/api/token/", {**token, **fields}, hint))
    cases += [
        ("post", "/api/token/", [1, 2], "invalid request"),
        ("post", "/api/token/", "not json", "invalid request"),
        ("put", "/api/token/?status_only=1", {"id": tid, "status": 3}, "status"),
        ("put", "/api/token/?status_only=1", {"id": tid, "status": "off"}, "status"),
        ("put", "/api/token/?status_only=1", {"id": tid}, "status"),
        ("put", "/api/token/", {**token, "id": "one"}, "id"),
        ("put", "/api/token/", {**token, "id": 10**12}, "id"),
        ("post", "/api/token/batch", {"ids": []}, "ids"),
        ("post", "/api/token/batch", {}, "ids"),
        ("post", "/api/token/batch", {"ids": ["x"]}, "ids"),
        ("post", "/api/token/batch", {"ids": tid}, "ids"),
        ("post", "/api/token/batch/keys", {"ids": []}, "ids"),
        ("post", "/api/token/batch/keys", {"ids": [None]}, "ids"),
    ]
    for method, url, body, hint in cases:
        if isinstance(body, str):
            response = await as_user.client.request(method, url, content=body, headers=as_user.headers)
        else:
            response = await getattr(as_user, method)(url, json=body)
        answer = response.json()
        assert response.status_code == 200 and answer["success"] is False, (method, body, answer)
        assert hint in answer["message"], (body, answer["message"])
    for method, url in (("put", "/api/token/"), ("delete", "/api/token/777"), ("post", "/api/token/777/key")):
        body_kw = {"json": {**token, "id": 777}} if method == "put" else {}
        response = await getattr(as_user, method)(url, **body_kw)
        assert response.status_code == 404 and response.json()["success"] is False
    assert (await as_user.get("/api/token/abc")).json()["success"] is False
    assert (await as_user.get("/api/token/99999999999")).json()["success"] is False
    assert await snapshot(harness) == before


async def test_relay_refuses_a_deleted_or_disabled_token_at_once(harness: AppHarness, as_user: As) -> None:
    async with FakeUpstream() as upstream:
        await create_channel(harness.runtime.db, upstream.base_url)
        harness.runtime.relay.channels.changed()
        token = await create(as_user, name="relay")
        auth = {"Authorization": f"Bearer {token['key']}"}

        async def relay_status() -> int:
            response = await harness.client.post("/v1/chat/completions", json=CHAT, headers=auth)
            return response.status_code

        assert await relay_status() == 200
        disabled = await as_user.put("/api/token/?status_only=1", json={"id": token["id"], "status": 2})
        assert disabled.json()["success"]
        assert await relay_status() == 401
        enabled = await as_user.put("/api/token/?status_only=1", json={"id": token["id"], "status": 1})
        assert enabled.json()["success"]
        assert await relay_status() == 200
        limited = await as_user.put(
            "/api/token/", json={**token, "model_limits_enabled": True, "model_limits": "gpt-4o"}
        )
        assert limited.json()["success"]
        assert await relay_status() == 403  # the new model allow-list applies at once too
        assert (await as_user.delete(f"/api/token/{token['id']}")).json()["success"]
        assert await relay_status() == 401


async def test_key_reveal_and_search_are_rate_limited(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Key reveal counts against ``CRITICAL_RATE_LIMIT`` and search against ``SEARCH_RATE_LIMIT``."""
    settings = make_settings(
        sql_dsn=f"sqlite:///{tmp_path / 'limits.db'}",
        critical_rate_limit_enable=True,
        critical_rate_limit=2,
        search_rate_limit_enable=True,
        search_rate_limit=1,
    )
    app = create_app(settings, run_migrations=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tollway.test") as client:
            user = await make_user(AppHarness(app, client), "carol", ROLE_COMMON)
            token = await create(user)
            reveals = [await user.post(f"/api/token/{token['id']}/key") for _ in range(2)]
            assert [r.status_code for r in reveals] == [200, 200]
            refused = await user.post("/api/token/batch/keys", json={"ids": [token["id"]]})
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["success"] is False
            assert (await user.get("/api/token/search")).status_code == 200
            assert (await user.get("/api/token/search")).status_code == 429
            assert (await user.get("/api/token/")).status_code == 200  # lists are not limited
