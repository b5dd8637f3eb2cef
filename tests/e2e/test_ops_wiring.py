"""The operations kit wired into the running gateway: a relay charge that crosses a user's
threshold sends a signed webhook, an automatic channel disable tells root, probes answer outside
/api, and admins see the active-request counter in /api/status."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import update

from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.auth.sessions import SessionCodec
from tollway.db.models import User

pytestmark = pytest.mark.db
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", received
    await runner.cleanup()


async def wait_for(items: list[Any], count: int = 1) -> None:
    for _ in range(100):
        if len(items) >= count:
            return
        await asyncio.sleep(0.05)


def setting(url: str, **extra: Any) -> str:
    return json.dumps({"notify_type": "webhook", "webhook_url": url, "webhook_secret": "s3cret", **extra})


async def test_quota_warning_and_channel_notice(
    live: Live, upstream: FakeUpstream, hook: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, received = hook
    await live.set_option("NotificationAllowPrivateTargets", "true")
    await live.set_option("AutomaticDisableChannelEnabled", "true")
    db = live.runtime.db
    root = await create_user(db, "root", role=100, quota=10**9)
    user_id = await create_user(db, quota=10_100)
    async with db.session() as session, session.begin():
        await session.execute(
            update(User)
            .where(User.id.in_([root, user_id]))
            .values(setting=setting(url, quota_warning_threshold=10_000))
        )
    _, key = await create_token(db, user_id)
    await create_channel(db, upstream.base_url)
    live.refresh()
    upstream.configure(prompt_tokens=1000, completion_tokens=500)  # costs 225: 10,100 → 9,875

    response = await live.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    await wait_for(received)
    headers, body = received[0]
    payload = json.loads(body)
    assert payload["type"] == "quota_exceed"
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == expected

    upstream.set_mode("status_401_invalid_key")
    failed = await live.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
    )
    assert failed.status_code == 401
    await wait_for(received, 2)
    notices = [json.loads(b) for _, b in received[1:]]
    assert any("disabled" in n["title"] for n in notices)


async def test_probes_and_admin_status(live: Live) -> None:
    healthz = await live.client.get("/healthz")
    assert healthz.status_code == 200 and healthz.json() == {"status": "ok"}
    assert healthz.headers["x-oneapi-request-id"]
    readyz = await live.client.get("/readyz")
    assert readyz.status_code == 200 and readyz.json()["checks"]["database"] == "ok"
    public = (await live.client.get("/api/status")).json()["data"]
    assert "active_requests" not in public
    admin = await create_user(live.runtime.db, "ops", role=10)
    token = SessionCodec(live.runtime.settings.session_secret).encode(admin)
    headers = {"Authorization": f"Bearer {token}", "New-Api-User": str(admin)}
    mine = (await live.client.get("/api/status", headers=headers)).json()["data"]
    assert mine["active_requests"] >= 1  # this very request
    assert (await live.client.get("/api/status/test", headers=headers)).json()["success"] is True
