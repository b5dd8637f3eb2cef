"""Management API tests: an in-process app (see tests/conftest.py ``harness``) and logged-in users
of each role. ``as_root``, ``as_admin``, ``as_user`` send the session as a bearer token plus the
``New-Api-User`` header, exactly as new-api's console and the newapi-python client do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import AppHarness
from tollway.auth.passwords import hash_password
from tollway.auth.sessions import SessionCodec
from tollway.db.models import User
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON, ROLE_ROOT

PASSWORD = "correct-horse-battery"


@dataclass
class As:
    """An HTTP client acting as one user."""

    client: httpx.AsyncClient
    user_id: int
    username: str
    headers: dict[str, str]

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(url, headers=self.headers, **kwargs)

    async def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(url, headers=self.headers, **kwargs)

    async def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.put(url, headers=self.headers, **kwargs)

    async def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.delete(url, headers=self.headers, **kwargs)


async def make_user(
    harness: AppHarness, username: str, role: int, *, quota: int = 0, group: str = "default"
) -> As:
    runtime = harness.runtime
    async with runtime.db.session() as session, session.begin():
        user = User(
            username=username,
            password=await hash_password(PASSWORD),
            display_name=username,
            role=role,
            quota=quota,
            group=group,
        )
        session.add(user)
        await session.flush()
        user_id = user.id
    token = SessionCodec(runtime.settings.session_secret).encode(user_id)
    headers = {"Authorization": f"Bearer {token}", "New-Api-User": str(user_id)}
    return As(harness.client, user_id, username, headers)


@pytest.fixture
async def as_root(harness: AppHarness) -> As:
    return await make_user(harness, "root", ROLE_ROOT, quota=100_000_000)


@pytest.fixture
async def as_admin(harness: AppHarness) -> As:
    return await make_user(harness, "admin", ROLE_ADMIN, quota=1_000_000)


@pytest.fixture
async def as_user(harness: AppHarness) -> As:
    return await make_user(harness, "alice", ROLE_COMMON, quota=500_000)
