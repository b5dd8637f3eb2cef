"""First run: setup creates the root user exactly once; status tells the console what it needs."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import select

from tests.conftest import AppHarness
from tollway.db.models import User
from tollway.db.models.user import ROLE_ROOT

ROOT = {"username": "root", "password": "correct-horse", "confirmPassword": "correct-horse"}


@pytest.mark.db
async def test_setup_creates_root_once(harness: AppHarness) -> None:
    client = harness.client
    before = (await client.get("/api/setup")).json()
    assert before == {
        "success": True,
        "message": "",
        "data": {"status": False, "root_init": False, "database_type": before["data"]["database_type"]},
    }
    assert before["data"]["database_type"] in ("sqlite", "postgres", "mysql")
    assert (await client.get("/api/status")).json()["data"]["setup"] is False

    response = await client.post("/api/setup", json={**ROOT, "SelfUseModeEnabled": True})
    assert response.status_code == 200
    assert response.json()["success"] is True

    async with harness.runtime.db.session() as session:
        users = (await session.scalars(select(User))).all()
    assert len(users) == 1
    root = users[0]
    assert (root.username, root.role, root.quota, root.status) == ("root", ROLE_ROOT, 100_000_000, 1)
    assert root.password.startswith("$argon2id$")
    assert "correct-horse" not in root.password

    status = (await client.get("/api/status")).json()["data"]
    assert status["setup"] is True
    assert status["self_use_mode_enabled"] is True

    again = await client.post("/api/setup", json={**ROOT, "username": "second"})
    assert again.status_code == 400
    assert again.json()["success"] is False
    async with harness.runtime.db.session() as session:
        assert len((await session.scalars(select(User))).all()) == 1


@pytest.mark.db
async def test_concurrent_setups_create_one_root(harness: AppHarness) -> None:
    bodies = [{**ROOT, "username": f"root{i}"} for i in range(6)]
    responses = await asyncio.gather(*(harness.client.post("/api/setup", json=b) for b in bodies))
    assert sum(r.json()["success"] for r in responses) == 1
    async with harness.runtime.db.session() as session:
        assert len((await session.scalars(select(User).where(User.role == ROLE_ROOT))).all()) == 1


@pytest.mark.db
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**ROOT, "confirmPassword": "different-one"}, "do not match"),
        ({**ROOT, "password": "short", "confirmPassword": "short"}, "password"),
        ({**ROOT, "username": ""}, "username"),
        ({**ROOT, "username": "a-very-long-username"}, "username"),
        ({"username": 5, "password": [], "confirmPassword": {}}, "invalid request"),
    ],
)
async def test_bad_setup_input_is_refused_and_changes_nothing(
    harness: AppHarness, body: dict[str, object], fragment: str
) -> None:
    response = await harness.client.post("/api/setup", json=body)
    assert response.json()["success"] is False
    assert fragment in response.json()["message"]
    async with harness.runtime.db.session() as session:
        assert (await session.scalars(select(User))).all() == []


async def test_setup_accepts_json_without_a_content_type(harness: AppHarness) -> None:
    raw = b'{"username":"root","password":"12345678","confirmPassword":"12345678"}'
    response = await harness.client.post(
        "/api/setup", content=raw, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.json()["success"] is True


async def test_every_response_carries_a_request_id(harness: AppHarness) -> None:
    for path in ("/api/status", "/v1/unknown", "/api/nothing-here", "/"):
        response = await harness.client.get(path)
        request_id = response.headers["x-oneapi-request-id"]
        assert re.fullmatch(r"\d{14}\d{1,9}[0-9A-Za-z]{8}", request_id), request_id


async def test_status_has_the_reference_fields(harness: AppHarness) -> None:
    data = (await harness.client.get("/api/status")).json()["data"]
    expected = {
        "version",
        "start_time",
        "email_verification",
        "github_oauth",
        "github_client_id",
        "linuxdo_oauth",
        "linuxdo_client_id",
        "telegram_oauth",
        "telegram_bot_name",
        "system_name",
        "logo",
        "footer_html",
        "wechat_qrcode",
        "wechat_login",
        "server_address",
        "price",
        "min_topup",
        "turnstile_check",
        "turnstile_site_key",
        "top_up_link",
        "docs_link",
        "quota_per_unit",
        "display_in_currency",
        "enable_batch_update",
        "enable_drawing",
        "enable_task",
        "enable_data_export",
        "data_export_default_time",
        "default_collapse_sidebar",
        "enable_online_topup",
        "mj_notify_enabled",
        "chats",
        "demo_site_enabled",
        "self_use_mode_enabled",
        "oidc_enabled",
        "oidc_client_id",
        "oidc_authorization_endpoint",
        "setup",
        "check_in_enabled",
    }
    assert expected <= set(data)
    assert data["quota_per_unit"] == 500000


async def test_unknown_and_unsupported_routes(harness: AppHarness) -> None:
    missing = await harness.client.post("/v1/does-not-exist", json={})
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid URL (POST /v1/does-not-exist) (request id: ")

    unsupported = await harness.client.get("/v1/files")
    assert unsupported.status_code == 501
    assert unsupported.json()["error"]["code"] == "api_not_implemented"

    api_missing = await harness.client.get("/api/no-such-route")
    assert api_missing.status_code == 404
    assert api_missing.json()["success"] is False


async def test_openapi_schema_is_published(harness: AppHarness) -> None:
    schema = (await harness.client.get("/api/openapi.json")).json()
    assert {"/api/setup", "/api/status"} <= set(schema["paths"])
