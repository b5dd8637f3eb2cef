"""Channel management routes through HTTP on every database: CRUD, multi-key channels, keys never
shown, abilities and routing kept in step, both list dialects, search, tags, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.api.conftest import As
from tests.conftest import AppHarness
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_token, create_user
from tollway.db.models import Ability, Channel

pytestmark = pytest.mark.db

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


def veloera(client: As) -> As:
    """The same user through Veloera's console (``Veloera-User`` instead of ``New-Api-User``)."""
    headers = {"Authorization": client.headers["Authorization"], "Veloera-User": str(client.user_id)}
    return As(client.client, client.user_id, client.username, headers)


async def add(client: As, **fields: Any) -> list[int]:
    body = {"type": 1, "name": "chan", "key": "sk-k", "models": "gpt-4o-mini", "group": "default", **fields}
    response = await client.post("/api/channel/", json=body)
    assert response.status_code == 200 and response.json()["success"], response.text
    ids: list[int] = response.json()["data"]
    return ids


async def stored(harness: AppHarness, channel_id: int) -> Channel:
    async with harness.runtime.db.session() as session:
        row = await session.get(Channel, channel_id)
        assert row is not None
        return row


async def abilities(harness: AppHarness, channel_id: int) -> list[tuple[str, str, bool, str | None]]:
    async with harness.runtime.db.session() as session:
        rows = await session.execute(
            select(Ability.group, Ability.model, Ability.enabled, Ability.tag)
            .where(Ability.channel_id == channel_id)
            .order_by(Ability.group, Ability.model)
        )
        return [(g, m, bool(e), t) for g, m, e, t in rows.all()]


async def database_state(harness: AppHarness) -> tuple[list[Any], list[Any]]:
    async with harness.runtime.db.session() as session:
        channels = (await session.execute(select(Channel.__table__).order_by(Channel.id))).all()
        rows = await session.execute(
            select(Ability.__table__).order_by(Ability.channel_id, Ability.group, Ability.model)
        )
        return [tuple(r) for r in channels], [tuple(r) for r in rows.all()]


async def wipe(harness: AppHarness) -> None:
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(Ability.__table__.delete())
        await session.execute(Channel.__table__.delete())


async def relay(harness: AppHarness, key: str, model: str = "gpt-4o-mini") -> int:
    response = await harness.client.post(
        "/v1/chat/completions", json={**CHAT, "model": model}, headers={"Authorization": f"Bearer {key}"}
    )
    return response.status_code


async def client_key(harness: AppHarness) -> str:
    db = harness.runtime.db
    user_id = await create_user(db, "relay-user")
    _, key = await create_token(db, user_id)
    harness.runtime.relay.accounts.users_changed()
    harness.runtime.relay.accounts.tokens_changed()
    return key


async def test_create_read_update_never_reveal_keys(harness: AppHarness, as_admin: As) -> None:
    secrets = ["sk-secret-one-AAAA", "sk-secret-two-BBBB", "sk-multi-CCCC", "sk-multi-DDDD", "sk-new-EEEE"]
    bodies: list[str] = []

    # new-api: several keys, one per line, make one channel each.
    ids = await add(as_admin, name="batch", key=f"{secrets[0]}\n\n {secrets[1]} \n", group="default,vip")
    assert len(ids) == 2
    assert [(await stored(harness, i)).key for i in ids] == secrets[:2]
    assert await abilities(harness, ids[0]) == [
        ("default", "gpt-4o-mini", True, None),
        ("vip", "gpt-4o-mini", True, None),
    ]
    # NA+: multi_to_single keeps the keys together in one multi-key channel.
    response = await as_admin.post(
        "/api/channel/",
        json={
            "mode": "multi_to_single",
            "multi_key_mode": "polling",
            "channel": {"type": 1, "name": "multi", "key": f"{secrets[2]}\n{secrets[3]}", "models": "gpt-4o"},
        },
    )
    assert response.json()["success"], response.text
    (multi_id,) = response.json()["data"]
    row = await stored(harness, multi_id)
    assert (row.key, row.multi_key_mode, row.group) == (f"{secrets[2]}\n{secrets[3]}", "polling", "default")
    single = await as_admin.post(
        "/api/channel/", json={"mode": "single", "channel": {"name": "one", "key": "sk-x", "models": "m"}}
    )
    batch = await as_admin.post(
        "/api/channel/",
        json={"mode": "batch", "channel": {"name": "two", "key": "sk-y\nsk-z", "models": "m"}},
    )
    assert len(single.json()["data"]) == 1 and len(batch.json()["data"]) == 2

    got = await as_admin.get(f"/api/channel/{multi_id}")
    data = got.json()["data"]
    assert data["key"] == "" and data["name"] == "multi" and data["models"] == "gpt-4o"
    assert data["channel_info"] == {"is_multi_key": True, "multi_key_size": 2, "multi_key_mode": "polling"}
    assert {"id", "type", "status", "group", "model_mapping", "setting", "param_override", "tag"} <= set(data)
    bodies.append(got.text)
    for url in (
        "/api/channel/?p=1&page_size=50",
        "/api/channel/search?keyword=sk-",
        "/api/channel/search?keyword=m",
    ):
        response = await as_admin.get(url)
        assert response.json()["success"]
        bodies.append(response.text)
    assert (await as_admin.get("/api/channel/search?keyword=sk-secret")).json()["data"]["total"] == 0
    bodies.append((await veloera(as_admin).get("/api/channel/?p=0")).text)
    for channel_id in ids:
        bodies.append((await as_admin.get(f"/api/channel/{channel_id}/")).text)

    # An edit without a key keeps the stored one; only the fields sent change.
    updated = await as_admin.put("/api/channel/", json={"id": ids[0], "name": "renamed", "key": ""})
    assert updated.json()["success"], updated.text
    assert updated.json()["data"]["name"] == "renamed" and updated.json()["data"]["key"] == ""
    bodies.append(updated.text)
    row = await stored(harness, ids[0])
    assert (row.key, row.name, row.group, row.models) == (secrets[0], "renamed", "default,vip", "gpt-4o-mini")
    replaced = await as_admin.put("/api/channel/", json={"id": ids[0], "key": secrets[4]})
    bodies.append(replaced.text)
    assert (await stored(harness, ids[0])).key == secrets[4]
    appended = await as_admin.put(
        "/api/channel/", json={"id": multi_id, "key": "sk-more", "key_mode": "append"}
    )
    bodies.append(appended.text)
    assert (await stored(harness, multi_id)).key == f"{secrets[2]}\n{secrets[3]}\nsk-more"

    assert (await as_admin.get("/api/channel/987654")).status_code == 404
    missing = await as_admin.put("/api/channel/", json={"id": 987654, "name": "x"})
    assert missing.status_code == 404 and missing.json()["success"] is False
    for body in bodies:
        for secret in secrets:
            assert secret not in body


async def test_relay_follows_multi_keys_and_edits(
    harness: AppHarness, as_admin: As, upstream: FakeUpstream
) -> None:
    response = await as_admin.post(
        "/api/channel/",
        json={
            "mode": "multi_to_single",
            "multi_key_mode": "polling",
            "channel": {
                "type": 1,
                "name": "pool",
                "key": "sk-pool-1\nsk-pool-2",
                "base_url": upstream.base_url,
                "models": "gpt-4o-mini",
                "group": "default",
            },
        },
    )
    assert response.json()["success"], response.text
    key = await client_key(harness)
    for _ in range(4):
        assert await relay(harness, key) == 200
    seen = [request.headers["authorization"] for request in upstream.requests]
    assert sorted(seen) == ["Bearer sk-pool-1"] * 2 + ["Bearer sk-pool-2"] * 2
    await wipe(harness)
    upstream.requests.clear()

    # Edits rebuild abilities and the relay routes by them at once.
    (channel_id,) = await add(as_admin, base_url=upstream.base_url, models="gpt-4o-mini,gpt-4o", tag="t1")
    assert await relay(harness, key, "gpt-4o") == 200

    response = await as_admin.put("/api/channel/", json={"id": channel_id, "models": "gpt-4o-mini"})
    assert response.json()["success"], response.text
    assert await abilities(harness, channel_id) == [("default", "gpt-4o-mini", True, "t1")]
    assert await relay(harness, key, "gpt-4o") == 503
    assert await relay(harness, key, "gpt-4o-mini") == 200

    await as_admin.put("/api/channel/", json={"id": channel_id, "group": "vip", "groups": ["ignored"]})
    assert await abilities(harness, channel_id) == [("vip", "gpt-4o-mini", True, "t1")]
    assert await relay(harness, key) == 503

    # Veloera's console enables and disables with PUT {id, status}.
    await as_admin.put("/api/channel/", json={"id": channel_id, "group": "default"})
    disabled = await veloera(as_admin).put("/api/channel/", json={"id": channel_id, "status": 2})
    assert disabled.json()["data"]["status"] == 2
    assert await abilities(harness, channel_id) == [("default", "gpt-4o-mini", False, "t1")]
    assert await relay(harness, key) == 503
    await as_admin.put("/api/channel/", json={"id": channel_id, "status": 1})
    assert await relay(harness, key) == 200


async def test_lists_tag_mode_and_search(harness: AppHarness, as_admin: As) -> None:
    low = (await add(as_admin, name="low", priority=0))[0]
    high = (await add(as_admin, name="high", priority=5, type=3, other="2024-10-21"))[0]
    vip = (await add(as_admin, name="vip", priority=1, group="vip,svip"))[0]
    off = (await add(as_admin, name="off", priority=2, status=2))[0]
    last = (await add(as_admin, name="last", priority=0))[0]

    paged = (await as_admin.get("/api/channel/?p=1&page_size=2")).json()["data"]
    assert [c["id"] for c in paged["items"]] == [high, off]
    assert (paged["total"], paged["page"], paged["page_size"]) == (5, 1, 2)
    assert paged["type_counts"] == {"1": 4, "3": 1}
    second = (await as_admin.get("/api/channel/?p=2&page_size=2")).json()["data"]
    assert [c["id"] for c in second["items"]] == [vip, last]
    by_id = (await as_admin.get("/api/channel/?p=1&page_size=10&id_sort=true")).json()["data"]
    assert [c["id"] for c in by_id["items"]] == [last, off, vip, high, low]
    capped = (await as_admin.get("/api/channel/?page_size=1000")).json()["data"]
    assert capped["page_size"] == 100 and len(capped["items"]) == 5

    # Veloera: p is 0-based and data is a plain array of that page.
    plain = (await veloera(as_admin).get("/api/channel/?p=0&page_size=2&id_sort=true")).json()
    assert [c["id"] for c in plain["data"]] == [last, off]
    plain = (await veloera(as_admin).get("/api/channel/?p=1&page_size=2&id_sort=true")).json()
    assert [c["id"] for c in plain["data"]] == [vip, high]

    async def ids(query: str) -> list[int]:
        return [c["id"] for c in (await as_admin.get(f"/api/channel/?{query}")).json()["data"]["items"]]

    assert await ids("status=enabled&id_sort=1") == [last, vip, high, low]
    assert await ids("status=disabled") == [off]
    assert await ids("type=3") == [high]
    assert await ids("group=svip") == [vip]
    assert await ids("group=vi") == []

    await wipe(harness)
    await tag_mode(as_admin)
    await wipe(harness)
    await search(as_admin)


async def tag_mode(as_admin: As) -> None:
    a1 = (await add(as_admin, name="a1", tag="alpha", priority=1))[0]
    a2 = (await add(as_admin, name="a2", tag="alpha", priority=9))[0]
    b1 = (await add(as_admin, name="b1", tag="beta", priority=3))[0]
    loose = (await add(as_admin, name="loose", priority=5))[0]
    lone = (await add(as_admin, name="lone", priority=0))[0]

    page = (await as_admin.get("/api/channel/?tag_mode=true&p=1&page_size=2")).json()["data"]
    assert page["total"] == 4  # alpha, beta and the two untagged channels
    assert [c["id"] for c in page["items"]] == [a2, a1, loose]
    page = (await as_admin.get("/api/channel/?tag_mode=true&p=2&page_size=2")).json()["data"]
    assert [c["id"] for c in page["items"]] == [b1, lone]
    plain = (await veloera(as_admin).get("/api/channel/?tag_mode=true&p=0&page_size=1&id_sort=true")).json()[
        "data"
    ]
    assert [c["id"] for c in plain] == [lone]
    found = (await as_admin.get("/api/channel/search?keyword=a1&tag_mode=true")).json()["data"]
    assert [c["id"] for c in found["items"]] == [a1]


async def search(as_admin: As) -> None:
    """id equal, name or base URL containing the keyword; group membership; model substring."""
    first = (
        await add(as_admin, name="OpenAI main", key="sk-hidden-key", base_url="https://api.example.com")
    )[0]
    second = (await add(as_admin, name="backup", models="claude-3-haiku,gpt-4o", group="vip,default"))[0]
    third = (await add(as_admin, name="other", base_url="https://proxy.local"))[0]

    async def ids(query: str, client: As = as_admin) -> list[int]:
        data = (await client.get(f"/api/channel/search?{query}")).json()["data"]
        items = data if isinstance(data, list) else data["items"]
        return sorted(c["id"] for c in items)

    assert await ids("keyword=openai") == [first]
    assert await ids(f"keyword={second}") == [second]
    assert await ids("keyword=proxy") == [third]
    assert await ids("keyword=hidden") == []
    assert await ids("group=vip") == [second]
    assert await ids("model=claude") == [second]
    assert await ids("keyword=%25") == []  # LIKE wildcards are matched literally
    assert await ids("keyword=o&p=1&page_size=1") in ([first], [second], [third])
    # Veloera's search sends no paging and gets every match as a plain array.
    assert await ids("keyword=", veloera(as_admin)) == [first, second, third]


async def test_model_lists_deletes_and_fix(harness: AppHarness, as_admin: As) -> None:
    await add(as_admin, models="my-custom-model,gpt-4o-mini")
    await add(as_admin, models="switched-off-model", status=2)
    models = (await as_admin.get("/api/channel/models")).json()["data"]
    names = {m["id"] for m in models}
    assert {"my-custom-model", "switched-off-model", "gpt-4o", "claude-3-haiku-20240307"} <= names
    assert models[0]["object"] == "model" and "owned_by" in models[0]
    enabled = (await as_admin.get("/api/channel/models_enabled")).json()["data"]
    assert enabled == ["gpt-4o-mini", "my-custom-model"]
    await wipe(harness)

    keep = (await add(as_admin, name="keep"))[0]
    gone = (await add(as_admin, name="gone"))[0]
    batch = await add(as_admin, name="b", key="sk-1\nsk-2\nsk-3")
    manual = (await add(as_admin, name="manual", status=2))[0]
    auto = (await add(as_admin, name="auto", status=3))[0]

    assert (await as_admin.delete(f"/api/channel/{gone}/")).json() == {"success": True, "message": ""}
    assert (await as_admin.delete(f"/api/channel/{gone}")).status_code == 404
    response = await as_admin.post("/api/channel/batch", json={"ids": [*batch, 99999]})
    assert response.json()["data"] == 3
    assert (await as_admin.delete("/api/channel/disabled")).json()["data"] == 2
    async with harness.runtime.db.session() as session:
        assert list(await session.scalars(select(Channel.id))) == [keep]
        left = set(await session.scalars(select(Ability.channel_id)))
    assert left == {keep}
    assert manual not in left and auto not in left

    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(Ability.__table__.delete())
    assert (await as_admin.post("/api/channel/fix")).json()["data"] == 1
    assert await abilities(harness, keep) == [("default", "gpt-4o-mini", True, None)]


async def test_tags(harness: AppHarness, as_admin: As, upstream: FakeUpstream) -> None:
    t1, t2 = await add(as_admin, key="sk-1\nsk-2", tag="team", base_url=upstream.base_url)
    other = (await add(as_admin, tag="solo", base_url=upstream.base_url))[0]
    key = await client_key(harness)

    assert (await as_admin.post("/api/channel/tag/disabled", json={"tag": "team"})).json()["data"] == 2
    assert {(await stored(harness, i)).status for i in (t1, t2)} == {2}
    assert (await abilities(harness, t1))[0][2] is False
    assert await relay(harness, key) == 200  # "solo" still serves
    assert upstream.count() == 1
    assert (await stored(harness, other)).status == 1
    await as_admin.post("/api/channel/tag/enabled", json={"tag": "team"})
    assert {(await stored(harness, i)).status for i in (t1, t2)} == {1}
    assert (await abilities(harness, t2))[0][2] is True

    edit = {"tag": "team", "new_tag": "crew", "priority": 7, "weight": 3, "models": "gpt-4o", "groups": "vip"}
    assert (await as_admin.put("/api/channel/tag", json=edit)).json()["data"] == 2
    row = await stored(harness, t1)
    assert (row.tag, row.priority, row.weight, row.models, row.group) == ("crew", 7, 3, "gpt-4o", "vip")
    assert await abilities(harness, t2) == [("vip", "gpt-4o", True, "crew")]
    keep_models = {"tag": "crew", "models": "", "model_mapping": "", "priority": 1}
    assert (await as_admin.put("/api/channel/tag", json=keep_models)).json()["success"]
    assert (await stored(harness, t2)).models == "gpt-4o"

    tagged = await as_admin.post("/api/channel/batch/tag", json={"ids": [t1, other], "tag": "mixed"})
    assert tagged.json()["data"] == 2
    assert (await stored(harness, other)).tag == "mixed"
    assert (await abilities(harness, other))[0][3] == "mixed"
    await as_admin.post("/api/channel/batch/tag", json={"ids": [other], "tag": ""})
    assert (await stored(harness, other)).tag is None

    for url, method in (("/api/channel/tag/disabled", "post"), ("/api/channel/tag", "put")):
        response = await getattr(as_admin, method)(url, json={"tag": "nobody-has-it"})
        assert response.json()["success"] is False and "nobody-has-it" in response.json()["message"]


BAD_CREATES: list[tuple[Any, str]] = [
    ({"name": "x", "key": "sk", "models": "m", "type": 999}, "type"),
    ({"name": "x", "key": "sk", "models": "m", "type": "openai"}, "type"),
    ({"key": "sk", "models": "m"}, "name"),
    ({"name": "   ", "key": "sk", "models": "m"}, "name"),
    ({"name": "x" * 256, "key": "sk", "models": "m"}, "name"),
    ({"name": "x", "models": "m"}, "key"),
    ({"name": "x", "key": " \n ", "models": "m"}, "key"),
    ({"name": "x", "key": "k" * 70_000, "models": "m"}, "key"),
    ({"name": "x", "key": "sk", "models": " , "}, "models"),
    ({"name": "x", "key": "sk"}, "models"),
    ({"name": "x", "key": "sk", "models": "m" * 256}, "model name"),
    ({"name": "x", "key": "sk", "models": "m", "group": ","}, "group"),
    ({"name": "x", "key": "sk", "models": "m", "group": "g" * 65}, "group"),
    ({"name": "x", "key": "sk", "models": "m", "base_url": "ftp://host"}, "base_url"),
    ({"name": "x", "key": "sk", "models": "m", "base_url": "not a url"}, "base_url"),
    ({"name": "x", "key": "sk", "models": "m", "model_mapping": "{bad"}, "model_mapping"),
    ({"name": "x", "key": "sk", "models": "m", "model_mapping": '{"a": 1}'}, "model_mapping"),
    ({"name": "x", "key": "sk", "models": "m", "model_mapping": "[1]"}, "model_mapping"),
    (
        {"name": "x", "key": "sk", "models": "m", "status_code_mapping": '{"400": "abc"}'},
        "status_code_mapping",
    ),
    ({"name": "x", "key": "sk", "models": "m", "setting": "nope"}, "setting"),
    ({"name": "x", "key": "sk", "models": "m", "param_override": "[]"}, "param_override"),
    ({"name": "x", "key": "sk", "models": "m", "priority": "high"}, "priority"),
    ({"name": "x", "key": "sk", "models": "m", "weight": -1}, "weight"),
    ({"name": "x", "key": "sk", "models": "m", "weight": 1.5}, "weight"),
    ({"name": "x", "key": "sk", "models": "m", "status": 7}, "status"),
    ({"name": "x", "key": "sk", "models": "m", "type": 41}, "Vertex"),
    ({"name": "x", "key": "sk", "models": "m", "multi_key_mode": "sometimes"}, "multi_key_mode"),
    ({"mode": "everything", "channel": {"name": "x", "key": "sk", "models": "m"}}, "mode"),
    (
        {"mode": "single", "multi_key_mode": "loop", "channel": {"name": "x", "key": "sk", "models": "m"}},
        "multi",
    ),
    ({"mode": "single", "channel": {"name": 5, "key": "sk", "models": "m"}}, "name"),
    ([1, 2], "JSON object"),
    ("just text", "JSON object"),
]


async def test_bad_input_and_roles_change_nothing(harness: AppHarness, as_admin: As, as_user: As) -> None:
    (channel_id,) = await add(as_admin, name="stable", tag="keep")
    before = await database_state(harness)

    for body, word in BAD_CREATES:
        response = await as_admin.post("/api/channel/", json=body)
        assert response.status_code == 200, (body, response.text)
        answer = response.json()
        assert answer["success"] is False and word.lower() in answer["message"].lower(), (body, answer)
    not_json = await as_admin.post("/api/channel/", content=b"{nope")
    assert not_json.json()["success"] is False

    bad_updates: list[dict[str, Any]] = [
        {"name": "no id"},
        {"id": "abc"},
        {"id": channel_id, "models": ""},
        {"id": channel_id, "name": ""},
        {"id": channel_id, "status": 0},
        {"id": channel_id, "base_url": "javascript:alert(1)"},
        {"id": channel_id, "group": "g" * 100},
        {"id": channel_id, "model_mapping": '{"gpt-4o": ["x"]}'},
        {"id": channel_id, "type": 41, "other": ""},
        {"id": channel_id, "name": "changed", "weight": -5},  # nothing of a refused edit is kept
    ]
    for body in bad_updates:
        response = await as_admin.put("/api/channel/", json=body)
        assert response.json()["success"] is False, (body, response.text)
    bad_others = [
        ("post", "/api/channel/batch", {"ids": []}),
        ("post", "/api/channel/batch", {"ids": ["x"]}),
        ("post", "/api/channel/batch", {"ids": list(range(1, 1002))}),
        ("post", "/api/channel/batch/tag", {"ids": [], "tag": "t"}),
        ("post", "/api/channel/batch/tag", {"ids": [channel_id], "tag": "t" * 300}),
        ("post", "/api/channel/tag/disabled", {}),
        ("post", "/api/channel/tag/enabled", {"tag": "  "}),
        ("put", "/api/channel/tag", {"tag": "keep", "weight": -1}),
        ("put", "/api/channel/tag", {"tag": "keep", "models": ",,"}),
        ("put", "/api/channel/tag", {"tag": "keep", "new_tag": "n" * 300}),
        ("put", "/api/channel/tag", {"priority": 1}),
    ]
    for method, url, body in bad_others:
        response = await getattr(as_admin, method)(url, json=body)
        assert response.status_code == 200 and response.json()["success"] is False, (url, body, response.text)
    assert (await as_admin.delete("/api/channel/424242")).status_code == 404
    assert await database_state(harness) == before

    # Only admins manage channels.
    for url in ("/api/channel/", "/api/channel/search", "/api/channel/models", "/api/channel/1"):
        assert (await as_user.get(url)).status_code == 403
    response = await as_user.post("/api/channel/", json={"name": "x", "key": "sk", "models": "m"})
    assert response.status_code == 403
    assert (await harness.client.get("/api/channel/")).status_code == 401
