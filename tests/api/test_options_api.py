"""``/api/option/``, ``/api/option/rest_model_ratio``, ``/api/pricing`` and ``/api/models`` over HTTP."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from tests.api.conftest import As, make_user
from tests.conftest import AppHarness
from tests.seed import create_channel
from tollway.billing import defaults
from tollway.billing.pricing import COMPLETION_RATIO, GROUP_RATIO, MODEL_RATIO, SELF_USE_MODEL_RATIO
from tollway.db.models import Option
from tollway.db.models.user import ROLE_COMMON
from tollway.options import QUOTA_PER_UNIT, REGISTER_ENABLED, RETRY_TIMES

UPSTREAM = "http://upstream.invalid"


async def stored_options(harness: AppHarness) -> dict[str, str]:
    async with harness.runtime.db.session() as session:
        return {key: value for key, value in (await session.execute(select(Option.key, Option.value))).all()}


async def put_option(caller: As, key: str, value: Any) -> dict[str, Any]:
    response = await caller.put("/api/option/", json={"key": key, "value": value})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(caller: As) -> dict[str, str]:
    response = await caller.get("/api/option/")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["message"] == ""
    return {item["key"]: item["value"] for item in body["data"]}


async def test_list_hides_secrets_and_is_root_only(harness: AppHarness, as_root: As, as_admin: As) -> None:
    secrets = {
        "SMTPToken": "smtp-password",
        "GitHubClientSecret": "gh-secret",
        "oidc.client_secret": "oidc-secret",
        "EpayKey": "epay-key",
        "SMTPPassword": "hunter2",
    }
    for key, value in secrets.items():
        assert (await put_option(as_root, key, value))["success"] is True
    assert await put_option(as_root, "SomeFutureOption", "kept verbatim") == {"success": True, "message": ""}

    options = await listed(as_root)
    assert not set(secrets) & set(options)
    assert all(value not in options.values() for value in secrets.values())
    assert options["RetryTimes"] == "2"
    assert options["SomeFutureOption"] == "kept verbatim"
    assert json.loads(options["ModelRatio"])["gpt-4o"] == defaults.DEFAULT_MODEL_RATIO["gpt-4o"]
    assert {key: (await stored_options(harness))[key] for key in secrets} == secrets  # stored, only hidden

    assert (await as_admin.get("/api/option/")).status_code == 403
    assert (await harness.client.get("/api/option/")).status_code == 401


async def test_update_converts_values_and_reaches_the_runtime(harness: AppHarness, as_root: As) -> None:
    options = harness.runtime.options
    assert (await put_option(as_root, "RetryTimes", "4"))["success"] is True
    assert (await put_option(as_root, "RegisterEnabled", False))["success"] is True
    assert (await put_option(as_root, "QuotaPerUnit", 250000))["success"] is True
    assert (await put_option(as_root, "GroupRatio", '{"default": 1, "vip": 1.5}'))["success"] is True
    assert options.get(RETRY_TIMES) == 4
    assert options.get(REGISTER_ENABLED) is False
    assert options.get(QUOTA_PER_UNIT) == 250000.0
    assert options.get(GROUP_RATIO) == {"default": 1, "vip": 1.5}
    stored = await stored_options(harness)
    assert stored["RetryTimes"] == "4"
    assert stored["RegisterEnabled"] == "false"
    assert stored["QuotaPerUnit"] == "250000.0"

    refused = await put_option(as_root, "GitHubOAuthEnabled", "true")
    assert refused["success"] is False and "GitHubClientId" in refused["message"]
    assert (await put_option(as_root, "GitHubClientId", "client-id"))["success"] is True
    assert (await put_option(as_root, "GitHubOAuthEnabled", True))["success"] is True
    assert (await stored_options(harness))["GitHubOAuthEnabled"] == "true"


# (body, HTTP status, words of the message)
BAD_BODIES: list[tuple[Any, int, str]] = [
    (b"not json", 400, "must be JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"value": "x"}, 400, "key is required"),
    ({"key": 5, "value": "x"}, 400, "key must be a string"),
    ({"key": "RetryTimes", "value": {"a": 1}}, 400, "value must be a string"),
    ({"key": "", "value": "x"}, 200, "key must not be empty"),
    ({"key": "k" * 256, "value": "x"}, 200, "at most 255"),
    ({"key": "Notice"}, 200, "value is required"),
    ({"key": "Notice", "value": None}, 200, "value is required"),
    ({"key": "Notice", "value": "x" * 70_000}, 200, "at most 65535 bytes"),
    ({"key": "RetryTimes", "value": "many"}, 200, "RetryTimes"),
    ({"key": "RetryTimes", "value": "-1"}, 200, "negative"),
    ({"key": "QuotaPerUnit", "value": "inf"}, 200, "finite"),
    ({"key": "QuotaPerUnit", "value": "nan"}, 200, "finite"),
    ({"key": "RetryTimes", "value": "1e400"}, 200, "finite"),
    ({"key": "RegisterEnabled", "value": "maybe"}, 200, "true or false"),
    ({"key": "GroupRatio", "value": '{"vip": -1}'}, 200, "GroupRatio"),
    ({"key": "GroupRatio", "value": '{"vip": "2"}'}, 200, "GroupRatio"),
    ({"key": "GroupRatio", "value": '{"vip": true}'}, 200, "GroupRatio"),
    ({"key": "GroupRatio", "value": "[1]"}, 200, "JSON object"),
    ({"key": "GroupRatio", "value": "{not json"}, 200, "GroupRatio"),
    ({"key": "GroupRatio", "value": ""}, 200, "JSON object"),
    ({"key": "ModelRatio", "value": '{"gpt-4o": -0.5}'}, 200, "ModelRatio"),
    ({"key": "CompletionRatio", "value": '{"gpt-4o": null}'}, 200, "CompletionRatio"),
    ({"key": "ModelPrice", "value": '{"dall-e-3": "0.04"}'}, 200, "ModelPrice"),
    ({"key": "CacheRatio", "value": "[]"}, 200, "JSON object"),
    ({"key": "TurnstileCheckEnabled", "value": "true"}, 200, "TurnstileSiteKey"),
]


async def test_refused_updates_change_nothing(harness: AppHarness, as_root: As, as_admin: As) -> None:
    assert (await put_option(as_root, "Notice", "before"))["success"] is True
    before_db = await stored_options(harness)
    before_runtime = harness.runtime.options.export(include_secrets=True)
    for body, status, words in BAD_BODIES:
        if isinstance(body, bytes):
            response = await as_root.put("/api/option/", content=body)
        else:
            response = await as_root.put("/api/option/", json=body)
        assert response.status_code == status, (body, response.text)
        answer = response.json()
        assert answer["success"] is False, body
        assert words in answer["message"], (body, answer["message"])
    denied = await as_admin.put("/api/option/", json={"key": "Notice", "value": "by admin"})
    assert denied.status_code == 403 and denied.json()["success"] is False
    assert (await harness.client.put("/api/option/", json={"key": "Notice", "value": "x"})).status_code == 401
    assert await stored_options(harness) == before_db
    assert harness.runtime.options.export(include_secrets=True) == before_runtime


async def test_rest_model_ratio_restores_the_defaults(harness: AppHarness, as_root: As, as_admin: As) -> None:
    options = harness.runtime.options
    assert (await put_option(as_root, "ModelRatio", '{"gpt-4o": 99}'))["success"] is True
    assert (await put_option(as_root, "CompletionRatio", '{"gpt-4o": 7}'))["success"] is True
    assert options.get(MODEL_RATIO) == {"gpt-4o": 99}

    assert (await as_admin.post("/api/option/rest_model_ratio")).status_code == 403
    assert options.get(MODEL_RATIO) == {"gpt-4o": 99}

    response = await as_root.post("/api/option/rest_model_ratio")
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "model ratios reset to the defaults"}
    assert options.get(MODEL_RATIO) == defaults.DEFAULT_MODEL_RATIO
    assert json.loads((await stored_options(harness))["ModelRatio"]) == defaults.DEFAULT_MODEL_RATIO
    assert options.get(COMPLETION_RATIO) == {"gpt-4o": 7}  # only ModelRatio, as new-api


async def seed_channels(harness: AppHarness) -> None:
    db = harness.runtime.db
    await create_channel(db, UPSTREAM, models="gpt-4o,dall-e-3,house-model", group="default,vip")
    await create_channel(
        db, UPSTREAM, name="claude", type=14, models="claude-3-5-sonnet-20241022,gpt-4o", group="svip"
    )
    await create_channel(db, UPSTREAM, name="off", models="retired-model,gpt-4o", status=2)
    harness.runtime.relay.channels.changed()
    await harness.runtime.relay.channels.reload()


async def test_pricing_lists_served_models_with_prices(harness: AppHarness, as_root: As) -> None:
    await seed_channels(harness)
    assert (await put_option(as_root, "GroupRatio", '{"default": 1, "vip": 1.5, "svip": 0.8}'))["success"]

    anonymous = await harness.client.get("/api/pricing")
    assert anonymous.status_code == 200
    body = anonymous.json()
    assert set(body) == {"success", "data", "group_ratio", "usable_group"}
    assert body["success"] is True
    rows = {row["model_name"]: row for row in body["data"]}
    assert list(rows) == ["claude-3-5-sonnet-20241022", "dall-e-3", "gpt-4o", "house-model"]
    assert rows["gpt-4o"] == {
        "model_name": "gpt-4o",
        "quota_type": 0,
        "model_ratio": defaults.DEFAULT_MODEL_RATIO["gpt-4o"],
        "model_price": 0.0,
        "owner_by": "openai",
        "completion_ratio": 4.0,
        "enable_groups": ["default", "svip", "vip"],
    }
    assert rows["dall-e-3"]["quota_type"] == 1
    assert rows["dall-e-3"]["model_price"] == defaults.DEFAULT_MODEL_PRICE["dall-e-3"]
    assert rows["dall-e-3"]["model_ratio"] == 0
    assert rows["claude-3-5-sonnet-20241022"]["enable_groups"] == ["svip"]
    assert rows["claude-3-5-sonnet-20241022"]["completion_ratio"] == 5.0
    assert rows["house-model"]["model_ratio"] == SELF_USE_MODEL_RATIO
    assert body["usable_group"] == {"default": "default group", "vip": "vip group"}
    assert body["group_ratio"] == {"default": 1, "vip": 1.5}  # svip is not usable by this caller

    svip = await make_user(harness, "bob", ROLE_COMMON, group="svip")
    mine = (await svip.get("/api/pricing")).json()
    assert mine["usable_group"]["svip"] == "user group"
    assert mine["group_ratio"] == {"default": 1, "vip": 1.5, "svip": 0.8}
    garbage = await harness.client.get("/api/pricing", headers={"Authorization": "Bearer nonsense"})
    assert garbage.status_code == 200 and garbage.json()["group_ratio"] == {"default": 1, "vip": 1.5}

    # Cached for a minute, yet rebuilt at once when prices or channels change.
    cache = harness.app.api.state.pricing_cache
    await harness.client.get("/api/pricing")
    assert harness.app.api.state.pricing_cache is cache
    assert (await put_option(as_root, "ModelRatio", '{"gpt-4o": 2}'))["success"] is True
    await create_channel(harness.runtime.db, UPSTREAM, name="new", models="fresh-model")
    harness.runtime.relay.channels.changed()
    rows = {row["model_name"]: row for row in (await harness.client.get("/api/pricing")).json()["data"]}
    assert rows["gpt-4o"]["model_ratio"] == 2
    assert "fresh-model" in rows


async def test_dashboard_models_by_channel_type(harness: AppHarness, as_user: As) -> None:
    await seed_channels(harness)
    response = await as_user.get("/api/models")
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {
            "1": ["dall-e-3", "gpt-4o", "house-model", "retired-model"],
            "14": ["claude-3-5-sonnet-20241022", "gpt-4o"],
        },
    }
    assert (await harness.client.get("/api/models")).status_code == 401
