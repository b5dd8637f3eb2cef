"""The tokenizer's tables (about 70 MB per worker) are loaded only when a count is needed: a
worker whose upstreams report usage never loads them, unless a reservation depends on the exact
prompt (``max_tokens`` set, and a balance too small for the trust rule to waive it).

Runs in a fresh interpreter: the test process itself has loaded every encoding long ago."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from sqlalchemy import select
    from tollway.db.models import Log
    from tests.fakes.upstream import FakeUpstream
    from tests.seed import create_channel, create_token, create_user
    from tollway.app import create_app
    from tollway.relay import tokenizer
    from tollway.settings import Settings

    def loaded():
        return sorted(tokenizer._loaded)

    async def main(folder):
        settings = Settings(sqlite_path=f"{folder}/t.db", session_secret="s" * 24, crypto_secret="test-crypto-secret")
        app = create_app(settings, run_migrations=True)
        async with FakeUpstream() as upstream, app.router.lifespan_context(app):
            db = app.runtime.db
            user_id = await create_user(db, quota=10_000_000)
            _, key = await create_token(db, user_id)
            await create_channel(db, upstream.base_url, models="gpt-4o-mini,gpt-3.5-turbo")
            app.runtime.relay.channels.changed()
            app.runtime.relay.accounts.tokens_changed()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                headers = {"Authorization": f"Bearer {key}"}
                chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
                async def post(body):
                    r = await client.post("/v1/chat/completions", json=body, headers=headers)
                    assert r.status_code == 200, r.text
                    return r
                await post(chat)
                await post({**chat, "stream": True})
                print("usage reported:", loaded())
                await post({**chat, "max_tokens": 50})
                print("max_tokens, rich caller:", loaded())
                _, poor_key = await create_token(db, user_id, unlimited=False, remain_quota=2_000)
                app.runtime.relay.accounts.tokens_changed()
                r = await client.post(
                    "/v1/chat/completions",
                    json={**chat, "max_tokens": 50},
                    headers={"Authorization": f"Bearer {poor_key}"},
                )
                assert r.status_code == 200, r.text
                print("max_tokens, token near its limit:", loaded())
                upstream.set_mode("no_usage")
                await post({**chat, "model": "gpt-3.5-turbo"})
                await app.runtime.relay.writer.flush()
                async with db.log_session() as session:
                    row = (await session.scalars(select(Log).order_by(Log.id.desc()))).first()
                print("no usage:", loaded(), row.model_name, row.prompt_tokens > 0)

    asyncio.run(main(sys.argv[1]))
    """
)


def test_encodings_load_only_when_a_count_is_needed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "usage reported: []",
        "max_tokens, rich caller: []",
        "max_tokens, token near its limit: ['o200k_base']",
        "no usage: ['cl100k_base', 'o200k_base'] gpt-3.5-turbo True",
    ]
