"""Management routes: a user's own API tokens (reference §2.4, CONTRACT §2 keys and §5 paging).

Every route acts on the caller's tokens only; another user's token answers 404 as if it did not
exist. Keys are stored hashed and encrypted: lists show them masked, creating a token returns the
full key once, and the owner may reveal it later. Every write tells the relay's token cache at
once, so a deleted or disabled token stops working on the next request on every worker.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.api.deps import CurrentUser, RuntimeDep, Session
from tollway.api.envelope import ok
from tollway.api.paging import MAX_PAGE_SIZE, Page
from tollway.api.token_fields import (
    DbId,
    PathId,
    TokenBody,
    check_expiry,
    check_status,
    ids_of,
    refuse_enabling,
    take_write_lock,
    token_json,
    validate_body,
)
from tollway.auth.keys import KeyCipher, generate_api_key, hash_key, key_hint
from tollway.billing.balances import leased_amounts
from tollway.db.models import Token
from tollway.db.models.lease import ACCOUNT_TOKEN
from tollway.db.models.token import TOKEN_ENABLED
from tollway.errors import BusinessError, NotFound
from tollway.ops.ratelimit import CriticalRateLimit, SearchRateLimit
from tollway.runtime import Runtime

router = APIRouter()

MAX_BATCH_DELETE = 1000
MAX_BATCH_REVEAL = 100
MAX_SEARCH_TEXT = 200


class IdsBody(BaseModel):
    ids: list[DbId] = Field(default_factory=list)


def _own(caller: Session) -> list[ColumnElement[bool]]:
    return [Token.user_id == caller.id, Token.deleted_at.is_(None)]


async def _rendered(session: AsyncSession, rows: list[Token]) -> list[dict[str, Any]]:
    leased = await leased_amounts(session, ACCOUNT_TOKEN, [r.id for r in rows if not r.unlimited_quota])
    now = int(time.time())
    return [token_json(row, leased.get(row.id, 0), now=now) for row in rows]


async def _listing(
    runtime: Runtime, where: list[ColumnElement[bool]], page: Page
) -> tuple[list[dict[str, Any]], int]:
    async with runtime.db.session() as session:
        total = await session.scalar(select(func.count()).select_from(Token).where(*where))
        rows = await session.scalars(
            select(Token).where(*where).order_by(Token.id.desc()).offset(page.offset).limit(page.page_size)
        )
        return await _rendered(session, list(rows.all())), int(total or 0)


def _veloera_page(request: Request, *, search: bool) -> Page:
    """Veloera's console: ``p`` 0-based, size in ``size``. Its search sends neither and expects
    every match (new-api's search was unpaged), so a search without ``size`` gets the maximum."""
    if search and not request.query_params.get("size"):
        return Page(page=1, page_size=MAX_PAGE_SIZE)
    return Page.from_request(request, zero_based=True, size_param="size")


async def _answer(
    request: Request, runtime: Runtime, caller: Session, where: list[ColumnElement[bool]], *, search: bool
) -> dict[str, Any]:
    if caller.veloera:
        items, _total = await _listing(runtime, where, _veloera_page(request, search=search))
        return ok(items)
    page = Page.from_request(request)
    items, total = await _listing(runtime, where, page)
    return ok(page.answer(items, total))


@router.get("/token/")
async def list_tokens(request: Request, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    return await _answer(request, runtime, caller, _own(caller), search=False)


@router.get("/token/search")
async def search_tokens(
    request: Request,
    runtime: RuntimeDep,
    caller: CurrentUser,
    _limit: SearchRateLimit,
    keyword: str = "",
    token: str = "",
) -> dict[str, Any]:
    """``keyword`` matches part of the name. ``token`` matches a whole key (with or without
    ``sk-``): keys are stored hashed, so a fragment of a key cannot be searched for."""
    where = _own(caller)
    keyword, token = keyword.strip()[:MAX_SEARCH_TEXT], token.strip()[:MAX_SEARCH_TEXT]
    if keyword:
        where.append(Token.name.contains(keyword, autoescape=True))
    if token:
        where.append(Token.key_hash == hash_key(token))
    return await _answer(request, runtime, caller, where, search=True)


async def _own_token(session: AsyncSession, caller: Session, token_id: int, *, lock: bool = False) -> Token:
    query = select(Token).where(Token.id == token_id, *_own(caller))
    row = await session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound("token not found")
    return row


@router.get("/token/{token_id}")
async def get_token(token_id: PathId, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    async with runtime.db.session() as session:
        row = await _own_token(session, caller, token_id)
        return ok((await _rendered(session, [row]))[0])


@router.post("/token/")
async def create_token(body: TokenBody, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    """Answers the new token with its full key (``sk-…``) in ``data.key``, shown this once; new-api
    answered nothing and its clients re-listed to find the key."""
    values = validate_body(body, caller.user, runtime.options)
    key = generate_api_key()
    now = int(time.time())
    row = Token(
        user_id=caller.id,
        key_hash=hash_key(key),
        key_encrypted=KeyCipher(runtime.settings.crypto_secret).encrypt(key),
        key_hint=key_hint(key),
        status=TOKEN_ENABLED,
        created_time=now,
        accessed_time=now,
        used_quota=0,
        **values.columns(),
    )
    async with runtime.db.session() as session, session.begin():
        session.add(row)
        await session.flush()
    runtime.relay.accounts.tokens_changed()
    return ok({**token_json(row, now=now), "key": f"sk-{key}"})


@router.put("/token/")
async def update_token(
    body: TokenBody, request: Request, runtime: RuntimeDep, caller: CurrentUser
) -> dict[str, Any]:
    """A full update (new-api's semantics: ``status`` in the body is not applied), or with
    ``?status_only=1`` only ``status``. A limited token's ``remain_quota`` is set exactly: the
    column gets the value minus what workers hold in leases, under the token's row lock."""
    status_only = bool(request.query_params.get("status_only"))
    status = check_status(body.status) if status_only else TOKEN_ENABLED
    values = None if status_only else validate_body(body, caller.user, runtime.options, update=True)
    now = int(time.time())
    async with runtime.db.session() as session, session.begin():
        await take_write_lock(session, runtime.db.dialect, Token, Token.id == body.id, *_own(caller))
        row = await _own_token(session, caller, body.id, lock=True)
        leased = (await leased_amounts(session, ACCOUNT_TOKEN, [row.id])).get(row.id, 0)
        if values is None:
            if status == TOKEN_ENABLED:
                refuse_enabling(row, leased, now)
            row.status = status
        else:
            if values.expired_time != row.expired_time:
                check_expiry(values.expired_time, now)
            for name, value in values.columns().items():
                setattr(row, name, value)
            if not values.unlimited_quota:
                row.remain_quota = values.remain_quota - leased
        await session.flush()
        data = token_json(row, leased, now=now)
    runtime.relay.accounts.tokens_changed()
    return ok(data)


async def _soft_delete(runtime: Runtime, caller: Session, ids: list[int]) -> int:
    async with runtime.db.session() as session, session.begin():
        result = await session.execute(
            update(Token)
            .where(Token.id.in_(ids), *_own(caller))
            .values(deleted_at=func.now())
            .execution_options(synchronize_session=False)
        )
    runtime.relay.accounts.tokens_changed()
    return int(result.rowcount)  # type: ignore[attr-defined]


@router.delete("/token/{token_id}")
async def delete_token(token_id: PathId, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    if await _soft_delete(runtime, caller, [token_id]) == 0:
        raise NotFound("token not found")
    return ok()


def _checked_ids(body: IdsBody, limit: int) -> list[int]:
    ids = ids_of(body.ids)
    if not ids:
        raise BusinessError("ids must be a non-empty list of token ids")
    if len(ids) > limit:
        raise BusinessError(f"at most {limit} ids at a time")
    return ids


@router.post("/token/batch")
async def delete_tokens(body: IdsBody, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    """``data`` = how many of the caller's tokens were deleted (others' ids are ignored)."""
    return ok(await _soft_delete(runtime, caller, _checked_ids(body, MAX_BATCH_DELETE)))


async def _reveal(runtime: Runtime, caller: Session, ids: list[int]) -> dict[int, str]:
    async with runtime.db.session() as session:
        rows = await session.execute(
            select(Token.id, Token.key_encrypted).where(Token.id.in_(ids), *_own(caller))
        )
        stored = rows.all()
    cipher = KeyCipher(runtime.settings.crypto_secret)
    keys: dict[int, str] = {}
    for token_id, encrypted in stored:
        key = cipher.decrypt(encrypted or "")
        if key is not None:
            keys[int(token_id)] = f"sk-{key}"
    return keys


@router.post("/token/batch/keys")
async def reveal_keys(
    body: IdsBody, response: Response, runtime: RuntimeDep, caller: CurrentUser, _limit: CriticalRateLimit
) -> dict[str, Any]:
    """``data.keys`` maps each of the caller's token ids to its full key; other ids are left out."""
    keys = await _reveal(runtime, caller, _checked_ids(body, MAX_BATCH_REVEAL))
    response.headers["Cache-Control"] = "no-store"
    return ok({"keys": {str(token_id): key for token_id, key in keys.items()}})


@router.post("/token/{token_id}/key")
async def reveal_key(
    token_id: PathId,
    response: Response,
    runtime: RuntimeDep,
    caller: CurrentUser,
    _limit: CriticalRateLimit,
) -> dict[str, Any]:
    keys = await _reveal(runtime, caller, [token_id])
    if token_id not in keys:
        async with runtime.db.session() as session:
            await _own_token(session, caller, token_id)  # 404 unless it exists
        raise BusinessError("this key was stored under another CRYPTO_SECRET and cannot be shown")
    response.headers["Cache-Control"] = "no-store"
    return ok({"key": keys[token_id]})
