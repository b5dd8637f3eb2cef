"""Management routes: redemption codes (reference §2.8, §4.6, behaviour §10).

Administrators create, list, edit and delete codes; any user redeems one with
``POST /api/user/topup`` (the transaction is in :mod:`tollway.api.redeem`). Veloera's additions
are supported: custom codes, gift codes (once per user, ``max_uses`` in all), validity windows,
and its bulk routes. Deletes are soft, like new-api's.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tollway.api.deps import AdminUser, CurrentUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.api.paging import Page
from tollway.api.redeem import MAX_CODE_LENGTH, redeem
from tollway.api.token_fields import MAX_QUOTA, MAX_TIMESTAMP, DbId, PathId, ids_of
from tollway.db.models import Redemption
from tollway.db.models.redemption import REDEMPTION_DISABLED, REDEMPTION_ENABLED
from tollway.errors import BusinessError, NotFound
from tollway.runtime import Runtime

router = APIRouter()

MAX_NAME = 20
MAX_COUNT = 100
MAX_BATCH = 1000
MAX_SEARCH_TEXT = 200


class CreateBody(BaseModel):
    name: str = ""
    quota: int = 0
    count: int = 0
    key: str = ""
    is_gift: bool = False
    max_uses: int = -1
    valid_from: int = 0
    valid_until: int = 0


class UpdateBody(BaseModel):
    id: DbId = 0
    name: str = ""
    quota: int = 0
    status: int = 0
    valid_from: int = 0
    valid_until: int = 0


class IdsBody(BaseModel):
    ids: list[DbId] = Field(default_factory=list)


class RedeemBody(BaseModel):
    key: str = ""


def redemption_json(row: Redemption) -> dict[str, Any]:
    return {
        "id": row.id,
        "user_id": row.user_id,
        "key": row.key,
        "status": row.status,
        "name": row.name,
        "quota": row.quota,
        "created_time": row.created_time,
        "redeemed_time": row.redeemed_time,
        "count": 0,  # new-api's request-only field, always 0 in answers
        "used_user_id": row.used_user_id,
        "is_gift": bool(row.is_gift),
        "max_uses": row.max_uses,
        "used_count": row.used_count,
        "valid_from": row.valid_from,
        "valid_until": row.valid_until,
        "DeletedAt": row.deleted_at.isoformat() if row.deleted_at else None,
    }


# ----- validation ------------------------------------------------------------------------------


def _name(raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_NAME:
        raise BusinessError(f"the name must be 1 to {MAX_NAME} characters")
    return name


def _quota(value: int) -> int:
    if not 0 < value <= MAX_QUOTA:
        raise BusinessError(f"quota must be greater than 0 and at most {MAX_QUOTA}")
    return value


def _window(valid_from: int, valid_until: int) -> tuple[int, int]:
    """0 means no bound; otherwise unix times, the end after the start."""
    for label, value in (("valid_from", valid_from), ("valid_until", valid_until)):
        if not 0 <= value <= MAX_TIMESTAMP:
            raise BusinessError(f"{label} must be 0 (no bound) or a unix time")
    if valid_from and valid_until and valid_until <= valid_from:
        raise BusinessError("valid_until must be later than valid_from")
    return valid_from, valid_until


def _custom_key(raw: str) -> str:
    key = raw.strip()
    if len(key) > MAX_CODE_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in key):
        raise BusinessError(f"a custom key must be at most {MAX_CODE_LENGTH} characters, without spaces")
    return key


def _new_codes(body: CreateBody) -> list[str]:
    """A custom ``key`` makes exactly one code (``count`` is then ignored, as in Veloera)."""
    key = _custom_key(body.key)
    if key:
        return [key]
    if not 1 <= body.count <= MAX_COUNT:
        raise BusinessError(f"count must be between 1 and {MAX_COUNT}")
    return [uuid.uuid4().hex for _ in range(body.count)]


# ----- reading ---------------------------------------------------------------------------------

_LIVE = Redemption.deleted_at.is_(None)


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9


async def _paged(runtime: Runtime, request: Request, where: list[ColumnElement[bool]]) -> dict[str, Any]:
    page = Page.from_request(request)
    async with runtime.db.session() as session:
        total = await session.scalar(select(func.count()).select_from(Redemption).where(*where))
        rows = await session.scalars(
            select(Redemption)
            .where(*where)
            .order_by(Redemption.id.desc())
            .offset(page.offset)
            .limit(page.page_size)
        )
        items = [redemption_json(row) for row in rows.all()]
    return ok(page.answer(items, int(total or 0)))


@router.get("/redemption/")
async def list_redemptions(request: Request, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    return await _paged(runtime, request, [_LIVE])


@router.get("/redemption/search")
async def search_redemptions(
    request: Request, runtime: RuntimeDep, _admin: AdminUser, keyword: str = ""
) -> dict[str, Any]:
    """``keyword``: a code id, or the start of its name."""
    keyword = keyword.strip()[:MAX_SEARCH_TEXT]
    where: list[ColumnElement[bool]] = [_LIVE]
    if keyword:
        by_name = Redemption.name.startswith(keyword, autoescape=True)
        where.append(or_(Redemption.id == int(keyword), by_name) if _is_id(keyword) else by_name)
    return await _paged(runtime, request, where)


@router.get("/redemption/count-by-name")
async def count_by_name(runtime: RuntimeDep, _admin: AdminUser, name: str = "") -> dict[str, Any]:
    if not name.strip():
        raise BusinessError("name is required")
    async with runtime.db.session() as session:
        count = await session.scalar(
            select(func.count()).select_from(Redemption).where(_LIVE, Redemption.name == name.strip())
        )
    return ok(int(count or 0))


@router.get("/redemption/{redemption_id}")
async def get_redemption(redemption_id: PathId, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    async with runtime.db.session() as session:
        row = await session.scalar(select(Redemption).where(Redemption.id == redemption_id, _LIVE))
    if row is None:
        raise NotFound("redemption code not found")
    return ok(redemption_json(row))


# ----- writing ---------------------------------------------------------------------------------


@router.post("/redemption/")
async def create_redemptions(body: CreateBody, runtime: RuntimeDep, admin: AdminUser) -> dict[str, Any]:
    """``data`` = the new codes. ``is_gift`` codes may be redeemed once per user, ``max_uses``
    times in all (-1: unlimited)."""
    name, quota = _name(body.name), _quota(body.quota)
    valid_from, valid_until = _window(body.valid_from, body.valid_until)
    if body.max_uses != -1 and body.max_uses < 1:
        raise BusinessError("max_uses must be -1 (unlimited) or at least 1")
    keys = _new_codes(body)
    now = int(time.time())
    rows = [
        {
            "user_id": admin.id,
            "key": key,
            "status": REDEMPTION_ENABLED,
            "name": name,
            "quota": quota,
            "created_time": now,
            "is_gift": body.is_gift,
            "max_uses": body.max_uses,
            "valid_from": valid_from,
            "valid_until": valid_until,
        }
        for key in keys
    ]
    try:
        async with runtime.db.session() as session, session.begin():
            await session.execute(insert(Redemption), rows)
    except IntegrityError:
        raise BusinessError("a redemption code with this key already exists (deleted codes count)") from None
    return ok(keys)


async def _updated(runtime: Runtime, redemption_id: int, values: dict[str, Any]) -> dict[str, Any]:
    async with runtime.db.session() as session, session.begin():
        changed = await session.execute(
            update(Redemption)
            .where(Redemption.id == redemption_id, _LIVE)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise NotFound("redemption code not found")
        row = await session.scalar(select(Redemption).where(Redemption.id == redemption_id))
        assert row is not None
        return redemption_json(row)


@router.put("/redemption/")
async def update_redemption(
    body: UpdateBody, request: Request, runtime: RuntimeDep, _admin: AdminUser
) -> dict[str, Any]:
    """``{id, name, quota, valid_from, valid_until}``, or with ``?status_only=1`` ``{id, status}``
    (1 enabled, 2 disabled). ``data`` = the code as saved."""
    if request.query_params.get("status_only"):
        if body.status not in (REDEMPTION_ENABLED, REDEMPTION_DISABLED):
            raise BusinessError("status must be 1 (enabled) or 2 (disabled)")
        return ok(await _updated(runtime, body.id, {"status": body.status}))
    valid_from, valid_until = _window(body.valid_from, body.valid_until)
    values = {
        "name": _name(body.name),
        "quota": _quota(body.quota),
        "valid_from": valid_from,
        "valid_until": valid_until,
    }
    return ok(await _updated(runtime, body.id, values))


async def _bulk(runtime: Runtime, where: list[ColumnElement[bool]], values: dict[str, Any]) -> int:
    async with runtime.db.session() as session, session.begin():
        result = await session.execute(
            update(Redemption)
            .where(_LIVE, *where)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount)  # type: ignore[attr-defined]


@router.put("/redemption/batch-disable")
async def batch_disable(body: IdsBody, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    """Disables the enabled codes among ``ids``; ``data`` = how many changed."""
    ids = ids_of(body.ids)
    if not ids or len(ids) > MAX_BATCH:
        raise BusinessError(f"ids must be a list of 1 to {MAX_BATCH} redemption code ids")
    where = [Redemption.id.in_(ids), Redemption.status == REDEMPTION_ENABLED]
    return ok(await _bulk(runtime, where, {"status": REDEMPTION_DISABLED}))


@router.delete("/redemption/delete-disabled")
async def delete_disabled(runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    where = [Redemption.status == REDEMPTION_DISABLED]
    return ok(await _bulk(runtime, where, {"deleted_at": func.now()}))


@router.delete("/redemption/delete-by-name")
async def delete_by_name(runtime: RuntimeDep, _admin: AdminUser, name: str = "") -> dict[str, Any]:
    if not name.strip():
        raise BusinessError("name is required")
    return ok(await _bulk(runtime, [Redemption.name == name.strip()], {"deleted_at": func.now()}))


@router.delete("/redemption/{redemption_id}")
async def delete_redemption(redemption_id: PathId, runtime: RuntimeDep, _admin: AdminUser) -> dict[str, Any]:
    if await _bulk(runtime, [Redemption.id == redemption_id], {"deleted_at": func.now()}) == 0:
        raise NotFound("redemption code not found")
    return ok()


# ----- redeeming -------------------------------------------------------------------------------


@router.post("/user/topup")
async def redeem_code(body: RedeemBody, runtime: RuntimeDep, caller: CurrentUser) -> dict[str, Any]:
    """``data`` = ``{quota, is_gift}`` (Veloera's form; newapi-python accepts it as well as
    new-api's bare number)."""
    redeemed = await redeem(runtime, caller.user, body.key)
    return ok({"quota": redeemed.quota, "is_gift": redeemed.is_gift})
