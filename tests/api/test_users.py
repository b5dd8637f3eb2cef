"""User self-service routes through HTTP on every database: registration, login (cookie and
bearer), email codes and password resets through a local SMTP sink, invitations, check-in,
settings, access tokens, groups and models. Bad input on every write route changes nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.api.conftest import PASSWORD, As, make_user
from tests.api.test_mailer import SmtpSink
from tests.conftest import AppHarness
from tollway.api import users as users_module
from tollway.db.models import Channel, Log, User, VerificationCode
from tollway.db.models.log import LOG_LOGIN, LOG_SYSTEM
from tollway.db.models.user import ROLE_COMMON, USER_DISABLED

NEW_PASSWORD = "brand-new-pass1"


# ----- helpers ------------------------------------------------------------------------------------


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = SmtpSink()
    await server.start()
    yield server
    await server.stop()


async def set_options(harness: AppHarness, **values: object) -> None:
    for name, value in values.items():
        raw = ("true" if value else "false") if isinstance(value, bool) else str(value)
        await harness.runtime.options.save(name, raw)


async def use_sink(harness: AppHarness, sink: SmtpSink) -> None:
    await set_options(harness, SMTPServer="127.0.0.1", SMTPPort=sink.port, SMTPFrom="noreply@tollway.test")


async def row(harness: AppHarness, user_id: int) -> User:
    async with harness.runtime.db.session() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user


async def by_name(harness: AppHarness, username: str) -> User | None:
    async with harness.runtime.db.session() as session:
        return await session.scalar(select(User).where(User.username == username))


async def write(harness: AppHarness, user_id: int, **values: Any) -> None:
    async with harness.runtime.db.session() as session, session.begin():
        await session.execute(update(User).where(User.id == user_id).values(**values))
    harness.runtime.relay.accounts.users_changed()


async def snapshot(harness: AppHarness) -> list[tuple[Any, ...]]:
    """Every user row, every column: 'changes nothing' means this stays equal."""
    async with harness.runtime.db.session() as session:
        rows = (await session.scalars(select(User).order_by(User.id))).all()
    columns = [c.key for c in User.__mapper__.column_attrs if c.key != "updated_at"]
    return [tuple(getattr(r, c) for c in columns) for r in rows]


async def logs(harness: AppHarness, user_id: int, log_type: int) -> list[Log]:
    async with harness.runtime.db.log_session() as session:
        found = await session.scalars(
            select(Log).where(Log.user_id == user_id, Log.type == log_type).order_by(Log.id)
        )
        return list(found.all())


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    """Log in without leaving the cookie in the shared client's jar (other callers use bearers)."""
    response = await client.post("/api/user/login", json={"username": username, "password": password})
    client.cookies.clear()
    return response


def refused(response: httpx.Response, fragment: str = "") -> None:
    body = response.json()
    assert response.status_code == 200, body
    assert body["success"] is False, body
    assert body["message"], body
    assert fragment.lower() in body["message"].lower(), body


def succeeded(response: httpx.Response) -> Any:
    body = response.json()
    assert response.status_code == 200 and body["success"] is True, body
    return body.get("data")


# ----- registration and login ---------------------------------------------------------------------


async def _register_then_login_with_cookie_and_bearer(harness: AppHarness) -> None:
    client = harness.client
    succeeded(
        await client.post(
            "/api/user/register", json={"username": "bob", "password": "password123", "display_name": "Bobby"}
        )
    )
    response = await login(client, "bob", "password123")
    data = succeeded(response)
    fields = {"id", "username", "display_name", "role", "status", "group"}
    assert {k: data[k] for k in fields} == data["user"]
    assert data["user"] | {"id": 0} == {
        "id": 0,
        "username": "bob",
        "display_name": "Bobby",
        "role": ROLE_COMMON,
        "status": 1,
        "group": "default",
    }
    assert data["token_type"] == "Bearer" and data["access_token"]
    assert abs(data["expires_at"] - (time.time() + 30 * 86400)) < 60
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"session={data['access_token']};")
    for attribute in ("HttpOnly", "Max-Age=2592000", "Path=/", "SameSite=strict"):
        assert attribute.lower() in cookie.lower()

    user_id = data["id"]
    via_cookie = await client.get(
        "/api/user/self", headers={"Cookie": f"session={data['access_token']}", "New-Api-User": str(user_id)}
    )
    via_bearer = await client.get(
        "/api/user/self",
        headers={"Authorization": f"Bearer {data['access_token']}", "New-Api-User": str(user_id)},
    )
    me = succeeded(via_cookie)
    assert succeeded(via_bearer) == me
    assert me["username"] == "bob" and me["display_name"] == "Bobby" and me["password"] == ""
    assert me["access_token"] is None and me["quota"] == 0 and me["group"] == "default"
    assert re.fullmatch(r"[0-9A-Za-z]{4}", me["aff_code"])
    assert me["DeletedAt"] is None and me["last_check_in_time"] is None and me["setting"] == ""
    for key in (
        "email",
        "used_quota",
        "request_count",
        "aff_count",
        "aff_quota",
        "aff_history_quota",
        "inviter_id",
    ):
        assert key in me
    no_header = await client.get(
        "/api/user/self", headers={"Authorization": f"Bearer {data['access_token']}"}
    )
    assert no_header.status_code == 401
    login_logs = await logs(harness, user_id, LOG_LOGIN)
    assert [entry.content for entry in login_logs] == ["login"] and login_logs[0].ip == ""


async def _login_by_email_wrong_password_disabled_and_switch(harness: AppHarness) -> None:
    client = harness.client
    carol = await make_user(harness, "carol", ROLE_COMMON)
    await write(
        harness, carol.user_id, email="Carol@Example.com", setting=json.dumps({"record_ip_log": True})
    )
    assert succeeded(await login(client, "carol@example.com", PASSWORD))["id"] == carol.user_id
    assert (await logs(harness, carol.user_id, LOG_LOGIN))[0].content.startswith("login from IP ")

    wrong_password = await login(client, "carol", "not-the-password")
    unknown_user = await login(client, "nobody", PASSWORD)
    refused(wrong_password, "wrong username or password")
    assert wrong_password.json()["message"] == unknown_user.json()["message"]
    assert "set-cookie" not in wrong_password.headers
    for body in ({}, {"username": "carol"}, {"username": 5, "password": PASSWORD}, {"username": ["carol"]}):
        refused(await client.post("/api/user/login", json=body))

    await write(harness, carol.user_id, status=USER_DISABLED)
    refused(await login(client, "carol", PASSWORD), "disabled")
    await write(harness, carol.user_id, status=1)
    await set_options(harness, PasswordLoginEnabled=False)
    refused(await login(client, "carol", PASSWORD), "password login is disabled")
    assert len(await logs(harness, carol.user_id, LOG_LOGIN)) == 1


async def _registration_switches_validation_and_duplicates(harness: AppHarness) -> None:
    client = harness.client
    good = {"username": "dave", "password": "password123"}
    await set_options(harness, RegisterEnabled=False)
    refused(await client.post("/api/user/register", json=good), "closed")
    await set_options(harness, RegisterEnabled=True, PasswordRegisterEnabled=False)
    refused(await client.post("/api/user/register", json=good), "closed")
    await set_options(harness, PasswordRegisterEnabled=True)

    before = await snapshot(harness)
    bad_bodies: list[Any] = [
        {},
        {"username": "dave"},
        {"username": "x" * 21, "password": "password123"},
        {"username": "da ve", "password": "password123"},
        {"username": "dave", "password": "short7!"},
        {"username": "dave", "password": "p" * 21},
        {"username": 42, "password": "password123"},
        {"username": "dave", "password": "password123", "display_name": "d" * 21},
        {"username": "dave", "password": "password123", "email": "not-an-email"},
        {"username": "dave", "password": "password123", "email": "e" * 300},
        ["dave", "password123"],
    ]
    for body in bad_bodies:
        refused(await client.post("/api/user/register", json=body))
    refused(await client.post("/api/user/register", content=b"{not json"))
    assert await snapshot(harness) == before

    succeeded(await client.post("/api/user/register", json=good | {"email": "dave@example.com"}))
    dave = await by_name(harness, "dave")
    assert dave is not None and dave.email is None  # not verified: not stored
    assert dave.display_name == "dave" and dave.role == ROLE_COMMON and dave.quota == 0
    refused(await client.post("/api/user/register", json=good), "already exists")
    await write(harness, dave.id, deleted_at=datetime.now(UTC).replace(tzinfo=None))
    refused(await client.post("/api/user/register", json=good), "already exists")


async def _email_verification_flow(harness: AppHarness, sink: SmtpSink) -> None:
    client = harness.client
    await use_sink(harness, sink)
    await set_options(harness, EmailVerificationEnabled=True)
    body = {"username": "erin", "password": "password123", "email": "erin@example.com"}
    refused(await client.post("/api/user/register", json=body), "verification")

    sent = len(sink.received)
    succeeded(await client.get("/api/verification", params={"email": "Erin@Example.com"}))
    assert [mail.recipients for mail in sink.received[sent:]] == [["Erin@Example.com"]]
    code = re.search(r"\b(\d{6})\b", sink.received[-1].html)
    assert code is not None
    async with harness.runtime.db.session() as session:
        stored = (
            await session.scalars(select(VerificationCode).where(VerificationCode.purpose == "register"))
        ).all()
    assert [(c.email, c.code_hash) for c in stored] == [
        ("erin@example.com", hashlib.sha256(code.group(1).encode()).hexdigest())
    ]

    refused(await client.post("/api/user/register", json=body | {"verification_code": "000000x"}), "code")
    assert await by_name(harness, "erin") is None
    succeeded(await client.post("/api/user/register", json=body | {"verification_code": code.group(1)}))
    erin = await by_name(harness, "erin")
    assert erin is not None and erin.email == "erin@example.com"
    reuse = body | {"username": "erin2", "verification_code": code.group(1)}
    refused(await client.post("/api/user/register", json=reuse))
    refused(await client.get("/api/verification", params={"email": "ERIN@example.com"}), "already in use")
    refused(await client.get("/api/verification", params={"email": "nope"}), "valid email")
    assert len(sink.received) == sent + 1

    # Five wrong guesses burn a code.
    succeeded(await client.get("/api/verification", params={"email": "frank@example.com"}))
    right = re.search(r"\b(\d{6})\b", sink.received[-1].html)
    assert right is not None
    frank = {"username": "frank", "password": "password123", "email": "frank@example.com"}
    for _ in range(5):
        refused(await client.post("/api/user/register", json=frank | {"verification_code": "999999x"}))
    refused(await client.post("/api/user/register", json=frank | {"verification_code": right.group(1)}))
    assert await by_name(harness, "frank") is None

    # A mail server that cannot be reached: a clear failure, and no code left behind.
    await sink.stop()
    failed = await client.get("/api/verification", params={"email": "gina@example.com"})
    refused(failed, "cannot send email")
    async with harness.runtime.db.session() as session:
        left = await session.scalar(select(func.count()).where(VerificationCode.email == "gina@example.com"))
    assert left == 0


async def _password_reset_flow(harness: AppHarness, sink: SmtpSink, as_user: As) -> None:
    client = harness.client
    await use_sink(harness, sink)
    await set_options(harness, ServerAddress="https://gw.example.com/")
    await write(harness, as_user.user_id, email="alice@example.com")
    before = await snapshot(harness)

    succeeded(await client.get("/api/reset_password", params={"email": "nobody@example.com"}))
    assert sink.received == []  # same answer, no mail: the route does not reveal accounts
    refused(await client.get("/api/reset_password", params={"email": "not-an-email"}))
    succeeded(await client.get("/api/reset_password", params={"email": "ALICE@example.com"}))
    link = re.search(r'href="([^"]+)"', sink.received[0].html)
    assert link is not None
    url = httpx.URL(link.group(1).replace("&amp;", "&"))
    assert str(url).startswith("https://gw.example.com/user/reset?")
    token = url.params["token"]
    assert re.fullmatch(r"[0-9A-Za-z]{32}", token) and url.params["email"] == "ALICE@example.com"

    for bad in (
        {},
        {"email": "alice@example.com"},
        {"email": 5, "token": token},
        {"email": "x", "token": token},
    ):
        refused(await client.post("/api/user/reset", json=bad))
    refused(
        await client.post("/api/user/reset", json={"email": "alice@example.com", "token": "wrong"}), "invalid"
    )
    assert await snapshot(harness) == before

    new_password = succeeded(
        await client.post("/api/user/reset", json={"email": "Alice@Example.com", "token": token})
    )
    assert re.fullmatch(r"[0-9A-Za-z]{12}", new_password)
    succeeded(await login(client, "alice", new_password))
    refused(await login(client, "alice", PASSWORD))
    refused(await client.post("/api/user/reset", json={"email": "alice@example.com", "token": token}))


# ----- profile, tokens, deletion ------------------------------------------------------------------


async def _update_self(harness: AppHarness, as_user: As) -> None:
    await make_user(harness, "bob", ROLE_COMMON)
    before = await snapshot(harness)
    bad_bodies: list[Any] = [
        {},
        {"username": "bob"},
        {"username": "a" * 21},
        {"username": 7},
        {"display_name": "d" * 21},
        {"password": NEW_PASSWORD},
        {"password": NEW_PASSWORD, "original_password": "wrong-password"},
        {"password": "short", "original_password": PASSWORD},
        {"password": NEW_PASSWORD, "original_password": PASSWORD, "username": "bob"},
    ]
    for body in bad_bodies:
        refused(await as_user.put("/api/user/self", json=body))
    assert await snapshot(harness) == before

    succeeded(await as_user.put("/api/user/self", json={"display_name": "Alice A", "username": "alice2"}))
    user = await row(harness, as_user.user_id)
    assert (user.username, user.display_name) == ("alice2", "Alice A")
    succeeded(
        await as_user.put("/api/user/self", json={"password": NEW_PASSWORD, "original_password": PASSWORD})
    )
    refused(await login(harness.client, "alice2", PASSWORD))
    succeeded(await login(harness.client, "alice2", NEW_PASSWORD))


async def _access_token(harness: AppHarness, as_user: As) -> None:
    client = harness.client
    token = succeeded(await as_user.get("/api/user/token"))
    assert isinstance(token, str) and len(token) >= 24
    stored = (await row(harness, as_user.user_id)).access_token
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    header = {"New-Api-User": str(as_user.user_id)}
    me = succeeded(await client.get("/api/user/self", headers=header | {"Authorization": token}))
    assert me["id"] == as_user.user_id and me["access_token"] == "********"
    succeeded(await client.get("/api/user/self", headers=header | {"Authorization": f"Bearer {token}"}))

    newer = succeeded(await as_user.get("/api/user/token"))
    assert newer != token
    assert (await client.get("/api/user/self", headers=header | {"Authorization": token})).status_code == 401
    succeeded(await client.get("/api/user/self", headers=header | {"Authorization": newer}))


async def _delete_self(harness: AppHarness, as_user: As, as_root: As, username: str, password: str) -> None:
    refused(await as_root.delete("/api/user/self"), "root")
    session = succeeded(await login(harness.client, username, password))["access_token"]
    succeeded(await as_user.delete("/api/user/self"))
    assert (await row(harness, as_user.user_id)).deleted_at is not None
    assert (await as_user.get("/api/user/self")).status_code == 401
    cookie = {"Cookie": f"session={session}", "New-Api-User": str(as_user.user_id)}
    assert (await harness.client.get("/api/user/self", headers=cookie)).status_code == 401
    refused(await login(harness.client, username, password), "wrong username or password")
    refused(
        await harness.client.post("/api/user/register", json={"username": username, "password": PASSWORD})
    )
    assert (await row(harness, as_root.user_id)).deleted_at is None


# ----- invitations --------------------------------------------------------------------------------


async def _invitation_rewards(harness: AppHarness, as_user: As, monkeypatch: pytest.MonkeyPatch) -> None:
    await set_options(harness, QuotaForNewUser=50, QuotaForInvitee=100, QuotaForInviter=200)
    code = succeeded(await as_user.get("/api/user/aff"))
    assert re.fullmatch(r"[0-9A-Za-z]{4}", code)
    assert succeeded(await as_user.get("/api/user/aff")) == code

    body = {"username": "frank", "password": "password123", "aff_code": code}
    succeeded(await harness.client.post("/api/user/register", json=body))
    frank = await by_name(harness, "frank")
    assert frank is not None
    assert (frank.quota, frank.inviter_id) == (150, as_user.user_id)
    assert frank.aff_code and frank.aff_code != code
    alice = await row(harness, as_user.user_id)
    assert (alice.aff_count, alice.aff_quota, alice.aff_history_quota, alice.quota) == (1, 200, 200, 500_000)
    assert sorted(e.quota for e in await logs(harness, frank.id, LOG_SYSTEM)) == [50, 100]
    assert [e.quota for e in await logs(harness, as_user.user_id, LOG_SYSTEM)] == [200]
    me = succeeded(await as_user.get("/api/user/self"))
    assert (me["aff_count"], me["aff_quota"], me["aff_history_quota"]) == (1, 200, 200)

    # An unknown invitation code is ignored (as in new-api); a drawn code that collides is redrawn.
    draws = iter([code, "Q7q7"])
    monkeypatch.setattr(users_module, "generate_aff_code", lambda: next(draws))
    succeeded(
        await harness.client.post(
            "/api/user/register", json={"username": "gina", "password": "password123", "aff_code": "zz!z"}
        )
    )
    gina = await by_name(harness, "gina")
    assert gina is not None and (gina.quota, gina.inviter_id, gina.aff_code) == (50, None, "Q7q7")


async def _aff_transfer_is_atomic_under_concurrency(harness: AppHarness, as_user: As) -> None:
    unit = 500_000
    await write(harness, as_user.user_id, aff_quota=5 * unit + 123)
    before = await snapshot(harness)
    for body in (
        {},
        {"quota": unit - 1},
        {"quota": "abc"},
        {"quota": 1.5},
        {"quota": -unit},
        {"quota": 6 * unit},
    ):
        refused(await as_user.post("/api/user/aff_transfer", json=body))
    assert await snapshot(harness) == before

    results = await asyncio.gather(
        *(as_user.post("/api/user/aff_transfer", json={"quota": unit}) for _ in range(20))
    )
    assert sum(r.json()["success"] for r in results) == 5
    alice = await row(harness, as_user.user_id)
    assert (alice.aff_quota, alice.quota) == (123, 500_000 + 5 * unit)
    transfers = [e for e in await logs(harness, as_user.user_id, LOG_SYSTEM) if "Transferred" in e.content]
    assert [e.quota for e in transfers] == [unit] * 5
    assert succeeded(await as_user.get("/api/user/self"))["quota"] == 500_000 + 5 * unit


# ----- check-in -----------------------------------------------------------------------------------


async def test_check_in_once_per_day(harness: AppHarness, as_user: As) -> None:
    refused(await as_user.post("/api/user/check_in"), "not enabled")
    refused(await as_user.post("/api/user/checkin"), "not enabled")
    assert succeeded(await as_user.get("/api/user/check_in_status")) == {"can_check_in": False}
    assert succeeded(await as_user.get("/api/user/checkin"))["enabled"] is False
    await set_options(harness, CheckInEnabled=True, CheckInQuota=1000, CheckInMaxQuota=0)
    assert succeeded(await as_user.get("/api/user/check_in_status")) == {"can_check_in": True}

    calls = [as_user.post("/api/user/check_in") for _ in range(10)]
    calls += [as_user.post("/api/user/checkin") for _ in range(10)]
    results = await asyncio.gather(*calls)
    winners = [r.json() for r in results if r.json()["success"]]
    assert len(winners) == 1
    assert winners[0]["message"] == "check-in successful"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert winners[0]["data"] in ({"quota": 1000}, {"quota_awarded": 1000, "checkin_date": today})
    assert all("already checked in" in r.json()["message"] for r in results if not r.json()["success"])
    assert (await row(harness, as_user.user_id)).quota == 501_000
    assert [e.quota for e in await logs(harness, as_user.user_id, LOG_SYSTEM)] == [1000]

    assert succeeded(await as_user.get("/api/user/check_in_status")) == {"can_check_in": False}
    status = succeeded(await as_user.get("/api/user/checkin", params={"month": today[:7]}))
    assert (status["enabled"], status["min_quota"], status["max_quota"]) == (True, 1000, 1000)
    assert status["stats"] == {
        "total_quota": 1000,
        "total_checkins": 1,
        "checkin_count": 1,
        "checked_in_today": True,
        "records": [{"checkin_date": today, "quota_awarded": 1000}],
    }
    assert (
        succeeded(await as_user.get("/api/user/checkin", params={"month": "2001-01"}))["stats"]["records"]
        == []
    )
    for month in ("2025-13", "abc", "2025-1"):
        refused(await as_user.get("/api/user/checkin", params={"month": month}), "YYYY-MM")
    me = succeeded(await as_user.get("/api/user/self"))
    assert me["last_check_in_time"].startswith(today) and me["last_check_in_time"].endswith("Z")

    # Tomorrow (simulated): a random reward within [CheckInQuota, CheckInMaxQuota].
    yesterday = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    await write(harness, as_user.user_id, last_check_in_time=yesterday)
    await set_options(harness, CheckInMaxQuota=2000)
    reward = succeeded(await as_user.post("/api/user/check_in"))["quota"]
    assert 1000 <= reward <= 2000
    assert (await row(harness, as_user.user_id)).quota == 501_000 + reward


# ----- settings -----------------------------------------------------------------------------------


async def _settings_validation_and_storage(harness: AppHarness, as_user: As) -> None:
    await write(harness, as_user.user_id, setting=json.dumps({"language": "fr"}))
    before = await snapshot(harness)
    base = {"notify_type": "email", "quota_warning_threshold": 1000}
    bad_bodies: list[Any] = [
        {},
        base | {"notify_type": "sms"},
        base | {"quota_warning_threshold": 0},
        base | {"quota_warning_threshold": -5},
        base | {"quota_warning_threshold": "lots"},
        base | {"notify_type": "webhook"},
        base | {"notify_type": "webhook", "webhook_url": "ftp://hooks.example.com/x"},
        base | {"notify_type": "webhook", "webhook_url": "not a url"},
        base | {"notify_type": "webhook", "webhook_url": "https://h.example.com/" + "x" * 2000},
        base | {"notify_type": "bark"},
        base | {"notify_type": "gotify", "gotify_url": "https://gotify.example.com"},
        base
        | {
            "notify_type": "gotify",
            "gotify_url": "https://g.example.com",
            "gotify_token": "t",
            "gotify_priority": 11,
        },
        base | {"notification_email": "nope"},
        base | {"record_ip_log": "sometimes"},
        base | {"bark_url": "javascript:alert(1)"},
    ]
    for body in bad_bodies:
        refused(await as_user.put("/api/user/setting", json=body))
    assert await snapshot(harness) == before

    good = base | {
        "notify_type": "webhook",
        "webhook_url": "https://hooks.example.com/tollway",
        "webhook_secret": "whsec",
        "record_ip_log": True,
        "unknown_field": "ignored",
    }
    succeeded(await as_user.put("/api/user/setting", json=good))
    stored = json.loads((await row(harness, as_user.user_id)).setting or "")
    assert stored["language"] == "fr" and "unknown_field" not in stored
    assert (stored["notify_type"], stored["webhook_url"], stored["record_ip_log"]) == (
        "webhook",
        "https://hooks.example.com/tollway",
        True,
    )
    assert stored["quota_warning_threshold"] == 1000
    assert json.loads(succeeded(await as_user.get("/api/user/self"))["setting"]) == stored
    record = await harness.runtime.relay.accounts.user(as_user.user_id)
    assert record is not None and record.record_ip
    gotify = base | {"notify_type": "gotify", "gotify_url": "http://g.example.com", "gotify_token": "tok"}
    succeeded(await as_user.put("/api/user/setting", json=gotify))
    assert json.loads((await row(harness, as_user.user_id)).setting or "")["gotify_priority"] == 5


# ----- groups, models, misc -----------------------------------------------------------------------


async def _groups_and_models(harness: AppHarness, as_user: As) -> None:
    client = harness.client
    public = succeeded(await client.get("/api/user/groups"))
    assert public == {
        "default": {"ratio": 1.0, "desc": "default group"},
        "vip": {"ratio": 1.0, "desc": "vip group"},
    }
    assert (await client.get("/api/user/self/groups")).status_code == 401
    assert succeeded(await as_user.get("/api/user/self/groups")) == public

    async with harness.runtime.db.session() as session, session.begin():
        for name, models, group in (
            ("a", "gpt-4o,gpt-4o-mini", "default"),
            ("b", "claude-x", "vip"),
            ("c", "secret-model", "svip"),
        ):
            session.add(Channel(name=name, key="sk-x", models=models, group=group, base_url="http://up.test"))
    harness.runtime.relay.channels.changed()

    assert succeeded(await as_user.get("/api/user/models")) == ["claude-x", "gpt-4o", "gpt-4o-mini"]
    assert succeeded(await as_user.get("/api/user/self/models")) == ["claude-x", "gpt-4o", "gpt-4o-mini"]
    assert succeeded(await as_user.get("/api/user/self/models", params={"group": "vip"})) == ["claude-x"]
    refused(await as_user.get("/api/user/self/models", params={"group": "svip"}), "not available")

    await write(harness, as_user.user_id, group="svip")
    groups = succeeded(await as_user.get("/api/user/self/groups"))
    assert set(groups) == {"default", "vip", "svip"} and groups["svip"]["ratio"] == 1.0
    assert "secret-model" in succeeded(await as_user.get("/api/user/models"))


async def _logout_and_encryption_key(harness: AppHarness) -> None:
    client = harness.client
    assert (await client.get("/api/user/login/encryption-key")).json() == {
        "success": True,
        "message": "",
        "data": {"enabled": False},
    }
    for method in ("GET", "POST"):
        response = await client.request(method, "/api/user/logout")
        succeeded(response)
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith("session=") and "max-age=0" in cookie


# ----- the scenarios, grouped so that each database is set up a few times only --------------------


async def test_register_login_logout(harness: AppHarness) -> None:
    await _register_then_login_with_cookie_and_bearer(harness)
    await _logout_and_encryption_key(harness)


async def test_login_and_registration_rules(harness: AppHarness) -> None:
    await _login_by_email_wrong_password_disabled_and_switch(harness)
    await _registration_switches_validation_and_duplicates(harness)


async def test_email_flows(harness: AppHarness, sink: SmtpSink, as_user: As) -> None:
    await _password_reset_flow(harness, sink, as_user)
    await _email_verification_flow(harness, sink)


async def test_profile_access_token_and_delete(harness: AppHarness, as_user: As, as_root: As) -> None:
    await _access_token(harness, as_user)
    await _update_self(harness, as_user)
    await _delete_self(harness, as_user, as_root, "alice2", NEW_PASSWORD)


async def test_invitations_and_aff_transfer(
    harness: AppHarness, as_user: As, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _invitation_rewards(harness, as_user, monkeypatch)
    await _aff_transfer_is_atomic_under_concurrency(harness, as_user)


async def test_settings_groups_and_models(harness: AppHarness, as_user: As) -> None:
    await _settings_validation_and_storage(harness, as_user)
    await _groups_and_models(harness, as_user)
