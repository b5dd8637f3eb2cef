"""The third-party `newapi-python` client (PyPI), unchanged, against a running Tollway: log in with
a username and password, read the profile, list/create/reveal/delete tokens, redeem a code, read
the logs. The client is synchronous, so it runs in a thread beside the live server's loop."""

from __future__ import annotations

import asyncio
import time
import uuid

import newapi
import pytest
from sqlalchemy import select

from tests.e2e.conftest import Live
from tollway.auth.passwords import hash_password
from tollway.db.models import Redemption, User
from tollway.db.models.log import LOG_LOGIN, LOG_TOPUP

pytestmark = pytest.mark.db
PASSWORD = "newapi-python-pass"


async def test_newapi_python_client_works_unchanged(live: Live) -> None:
    code = uuid.uuid4().hex
    async with live.runtime.db.session() as session, session.begin():
        session.add(
            User(username="scripter", password=await hash_password(PASSWORD), quota=1000, aff_code="abcd")
        )
        session.add(Redemption(key=code, name="gift", quota=250_000, created_time=int(time.time())))

    def scenario() -> dict[str, object]:
        with newapi.NewAPI(live.base_url, impersonate=None) as client:
            user = client.login("scripter", PASSWORD)
            profile = client.me()
            balance = client.balance()
            token, key = client.tokens.create_and_reveal("from newapi-python", unlimited_quota=True)
            listed = client.tokens.list()
            client.tokens.delete(int(token["id"]))
            after_delete = client.tokens.list()
            redeemed = client.topup.redeem(code)
            logs = client.logs.list()
            stat = client.logs.stat()
            return {
                "user": user,
                "profile": profile,
                "balance": balance,
                "key": key,
                "listed": [t.get("name") for t in listed],
                "after_delete": [t.get("name") for t in after_delete],
                "redeemed": redeemed,
                "log_types": sorted({int(log.get("type")) for log in logs}),
                "stat": stat,
            }

    result = await asyncio.to_thread(scenario)
    assert result["user"].get("username") == "scripter"  # type: ignore[attr-defined]
    assert result["profile"].get("quota") == 1000  # type: ignore[attr-defined]
    assert str(result["key"]).startswith("sk-") and len(str(result["key"])) == 51
    assert result["listed"] == ["from newapi-python"]
    assert result["after_delete"] == []
    assert result["redeemed"].get("quota") == 250_000  # type: ignore[attr-defined]
    assert result["log_types"] == [LOG_TOPUP, LOG_LOGIN]
    async with live.runtime.db.session() as session:
        user = await session.scalar(select(User).where(User.username == "scripter"))
        assert user is not None and user.quota == 251_000
