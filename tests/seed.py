"""Rows for tests: users, tokens and channels written straight to the database (the management
API has its own tests; relay tests need data without depending on it)."""

from __future__ import annotations

import time

from tollway.auth.keys import KeyCipher, generate_api_key, hash_key, key_hint
from tollway.db.engine import Database
from tollway.db.models import Channel, Token, User
from tollway.relay.abilities import rebuild_abilities


async def create_user(
    db: Database, username: str = "alice", *, quota: int = 10_000_000, role: int = 1, group: str = "default"
) -> int:
    async with db.session() as session, session.begin():
        user = User(
            username=username, password="!", display_name=username, quota=quota, role=role, group=group
        )
        session.add(user)
        await session.flush()
        return user.id


async def create_token(
    db: Database,
    user_id: int,
    *,
    name: str = "test token",
    remain_quota: int = 0,
    unlimited: bool = True,
    status: int = 1,
    expired_time: int = -1,
    model_limits: str = "",
    allow_ips: str = "",
    group: str = "",
    crypto_secret: str = "test-crypto-secret",
) -> tuple[int, str]:
    """Returns the token id and the client's key (``sk-…``)."""
    key = generate_api_key()
    async with db.session() as session, session.begin():
        token = Token(
            user_id=user_id,
            key_hash=hash_key(key),
            key_encrypted=KeyCipher(crypto_secret).encrypt(key),
            key_hint=key_hint(key),
            name=name,
            status=status,
            created_time=int(time.time()),
            expired_time=expired_time,
            remain_quota=remain_quota,
            unlimited_quota=unlimited,
            model_limits_enabled=bool(model_limits),
            model_limits=model_limits,
            allow_ips=allow_ips,
            group=group,
        )
        session.add(token)
        await session.flush()
        return token.id, f"sk-{key}"


async def create_channel(
    db: Database,
    base_url: str,
    *,
    name: str = "upstream",
    models: str = "gpt-4o-mini,gpt-4o,text-embedding-3-small",
    group: str = "default",
    type: int = 1,
    key: str = "sk-upstream-key",
    priority: int = 0,
    weight: int = 0,
    status: int = 1,
    model_mapping: str = "",
    status_code_mapping: str = "",
    auto_ban: int = 1,
    other: str = "",
) -> int:
    async with db.session() as session, session.begin():
        channel = Channel(
            type=type,
            name=name,
            key=key,
            base_url=base_url,
            models=models,
            group=group,
            priority=priority,
            weight=weight,
            status=status,
            model_mapping=model_mapping,
            status_code_mapping=status_code_mapping,
            auto_ban=auto_ban,
            other=other,
            created_time=int(time.time()),
        )
        session.add(channel)
        await session.flush()
        await rebuild_abilities(session, channel)
        return channel.id
