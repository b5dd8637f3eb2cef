"""What administrators do to other users' accounts, and the group list.

Role rules (new-api's): an admin acts only on users whose role is below its own; root acts on
everyone but can never be disabled, deleted or demoted; only root promotes or sets roles, and
never to root (a second root could never be removed again). Balances shown and set here are exact
while workers hold quota leases: shown = column + leased, and setting Q writes Q − leased in the
same statement that reads the leases. Every change reaches the relay at once (``users_changed``),
and sessions re-read the user on each request, so a disabled user is locked out immediately.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictInt, StrictStr
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.api.deps import AdminUser, RuntimeDep, Session
from tollway.api.envelope import ok
from tollway.api.paging import Page
from tollway.api.users import QUOTA_FOR_NEW_USER, user_json
from tollway.api.users_self import (
    check_display_name,
    check_password,
    check_username,
    describe_quota,
    generate_aff_code,
    leased_quota_column,
    username_taken,
)
from tollway.auth.passwords import hash_password
from tollway.billing.pricing import GROUP_RATIO
from tollway.db.models import QuotaLease, Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.db.models.log import LOG_MANAGE, LOG_SYSTEM
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON, ROLE_ROOT, USER_DISABLED, USER_ENABLED
from tollway.errors import BusinessError, Forbidden, NotFound
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log

router = APIRouter()

MAX_ID = 2**31 - 1  # ids are 32-bit integers in every schema
MAX_QUOTA = 2**53 - 1  # consoles hold quota in a JavaScript number
MAX_GROUP = 64
ASSIGNABLE_ROLES = (ROLE_COMMON, ROLE_ADMIN)
_AFF_CODE_ATTEMPTS = 8
_RAW = 256  # coarse cap on incoming strings; the precise limits are checked with clear messages
_TAKEN = "the username already exists or belonged to a deleted account"


class NewUser(BaseModel):
    username: StrictStr = Field(max_length=_RAW)
    password: StrictStr = Field(max_length=_RAW)
    display_name: StrictStr | None = Field(default=None, max_length=_RAW)
    role: StrictInt | None = None  # checked as new-api does, never applied


class UserEdit(BaseModel):
    id: StrictInt
    username: StrictStr = Field(max_length=_RAW)
    display_name: StrictStr | None = Field(default=None, max_length=_RAW)
    group: StrictStr = Field(max_length=_RAW)
    quota: StrictInt = Field(ge=0, le=MAX_QUOTA)
    password: StrictStr | None = Field(default=None, max_length=_RAW)
    role: StrictInt | None = None


class ManageRequest(BaseModel):
    id: StrictInt
    action: Literal["disable", "enable", "delete", "promote", "demote"]


# ----- shared checks ------------------------------------------------------------------------------


def _check_authority(caller: Session, target: User) -> None:
    """new-api's rule: nobody but root acts on a user of the same or a higher role."""
    if target.role >= caller.role and caller.role != ROLE_ROOT:
        raise Forbidden("you cannot manage a user whose role is equal to or above yours")


def _check_id(user_id: int) -> None:
    if not 0 < user_id <= MAX_ID:
        raise NotFound(f"user {user_id} not found")


async def _user_row(session: AsyncSession, user_id: int) -> tuple[User, int] | None:
    """A user (deleted or not, freshly read) and its leased quota, from one statement."""
    row = (
        await session.execute(
            select(User, leased_quota_column())
            .where(User.id == user_id)
            .execution_options(populate_existing=True)
        )
    ).first()
    return None if row is None else (row[0], int(row[1] or 0))


async def _lock_user(session: AsyncSession, user_id: int, *, deleted_too: bool = False) -> tuple[User, int]:
    """The target row and its leased quota, locked until the transaction ends. The no-op UPDATE
    takes the row lock on every database (SQLite's write lock too) before anything is read, in the
    same order as the balance store: the user row, then its leases."""
    _check_id(user_id)
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(quota=User.quota + 0)
        .execution_options(synchronize_session=False)
    )
    found = await _user_row(session, user_id)
    if found is None:
        raise NotFound(f"user {user_id} not found")
    if found[0].deleted_at is not None and not deleted_too:
        raise NotFound(f"user {user_id} was deleted")
    return found


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# ----- lists --------------------------------------------------------------------------------------


async def _page_of_users(runtime: Runtime, page: Page, *filters: ColumnElement[bool]) -> dict[str, Any]:
    """One page, newest first, soft-deleted rows included (they show ``DeletedAt``), and the exact
    count of every row matching the filters."""
    async with runtime.db.session() as session:
        total = await session.scalar(select(func.count()).select_from(User).where(*filters))
        rows = await session.execute(
            select(User, leased_quota_column())
            .where(*filters)
            .order_by(User.id.desc())
            .offset(page.offset)
            .limit(page.page_size)
        )
        items = [user_json(user, int(leased or 0)) for user, leased in rows.all()]
    return page.answer(items, int(total or 0))


def _search_filters(keyword: str, group: str) -> list[ColumnElement[bool]]:
    """A numeric keyword also matches the id; text matches are substrings, case-insensitive on
    every database, with ``%`` and ``_`` taken literally."""
    filters: list[ColumnElement[bool]] = []
    if group:
        filters.append(User.group == group)
    if keyword:
        matches: list[ColumnElement[bool]] = [
            User.username.icontains(keyword, autoescape=True),
            User.email.icontains(keyword, autoescape=True),
            User.display_name.icontains(keyword, autoescape=True),
        ]
        if keyword.isascii() and keyword.isdigit() and 0 < int(keyword) <= MAX_ID:
            matches.append(User.id == int(keyword))
        filters.append(or_(*matches))
    return filters


@router.get("/user/")
async def list_users(request: Request, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    return ok(await _page_of_users(runtime, Page.from_request(request)))


@router.get("/user/search")
async def search_users(
    request: Request, caller: AdminUser, runtime: RuntimeDep, keyword: str = "", group: str = ""
) -> dict[str, Any]:
    filters = _search_filters(keyword.strip(), group.strip())
    return ok(await _page_of_users(runtime, Page.from_request(request), *filters))


@router.get("/user/{user_id:int}")
async def get_user(user_id: int, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Deleted users can still be looked at: the list shows them."""
    _check_id(user_id)
    async with runtime.db.session() as session:
        found = await _user_row(session, user_id)
    if found is None:
        raise NotFound(f"user {user_id} not found")
    _check_authority(caller, found[0])
    return ok(user_json(*found))


@router.get("/group/")
async def list_groups(caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    ratios = runtime.options.get(GROUP_RATIO)
    return ok(list(ratios))


# ----- create -------------------------------------------------------------------------------------


async def _insert_user(
    session: AsyncSession, runtime: Runtime, username: str, hashed: str, display_name: str
) -> int:
    """A common user with a fresh invitation code and the new-user gift, as registration gives."""
    if await username_taken(session, username):
        raise BusinessError(_TAKEN)
    gift = runtime.options.get(QUOTA_FOR_NEW_USER)
    user = User(
        username=username,
        password=hashed,
        display_name=display_name,
        role=ROLE_COMMON,
        status=USER_ENABLED,
        quota=gift,
        aff_code=generate_aff_code(),
    )
    session.add(user)
    await session.flush()
    if gift > 0:
        content = f"New user bonus: {describe_quota(runtime.options, gift)}"
        await record_log(
            runtime.db, log_entry(LOG_SYSTEM, user.id, username, content, quota=gift), session=session
        )
    return user.id


@router.post("/user/")
async def create_user(body: NewUser, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    username = check_username(body.username)
    check_password(body.password)
    display_name = check_display_name(body.display_name or "") or username
    if body.role is not None and body.role >= caller.role:
        raise Forbidden("you cannot create a user whose role is equal to or above yours")
    hashed = await hash_password(body.password)
    for _ in range(_AFF_CODE_ATTEMPTS):
        try:
            async with runtime.db.session() as session, session.begin():
                user_id = await _insert_user(session, runtime, username, hashed, display_name)
                created = await _user_row(session, user_id)
        except IntegrityError:
            continue  # a concurrent twin (refused on the next pass) or a drawn code already in use
        runtime.relay.accounts.users_changed()
        return ok(user_json(*created) if created else None, "user created")
    raise BusinessError("could not create the user, please retry")


# ----- edit ---------------------------------------------------------------------------------------


def _check_role_change(caller: Session, target: User, role: int | None) -> int:
    """The role the edit leaves: only root changes roles, never root's own, never to root.
    A missing role or 0 (what Go clients send when they leave it out) keeps the current one."""
    if not role or role == target.role:
        return target.role
    if caller.role != ROLE_ROOT:
        raise Forbidden("only the root user can change a user's role")
    if target.role == ROLE_ROOT:
        raise BusinessError("the root user's role cannot be changed")
    if role not in ASSIGNABLE_ROLES:
        raise BusinessError(f"role must be {ROLE_COMMON} (common user) or {ROLE_ADMIN} (administrator)")
    return role


def _check_group(group: str) -> str:
    name = group.strip()
    if not name or len(name) > MAX_GROUP:
        raise BusinessError(f"group must be 1 to {MAX_GROUP} characters")
    return name


async def _edit_values(body: UserEdit) -> dict[str, Any]:
    """The validated columns an edit writes (everything but quota and role)."""
    values: dict[str, Any] = {
        "username": check_username(body.username),
        "group": _check_group(body.group),
    }
    if body.display_name is not None:
        values["display_name"] = check_display_name(body.display_name)
    if body.password:
        check_password(body.password)
        values["password"] = await hash_password(body.password)
    return values


async def _apply_edit(
    session: AsyncSession, runtime: Runtime, caller: Session, body: UserEdit, values: dict[str, Any]
) -> dict[str, Any]:
    target, leased = await _lock_user(session, body.id)
    _check_authority(caller, target)
    values["role"] = _check_role_change(caller, target, body.role)
    if values["username"] != target.username and await username_taken(
        session, values["username"], except_id=target.id
    ):
        raise BusinessError(_TAKEN)
    old_quota = int(target.quota or 0) + leased
    entry = None
    if body.quota != old_quota:
        # Leases are read inside the statement, under the row lock: shown afterwards = body.quota.
        values["quota"] = body.quota - leased_quota_column()
        content = (
            f"admin {caller.user.username} changed the quota from {old_quota} to {body.quota}"
            f" ({describe_quota(runtime.options, old_quota)} to {describe_quota(runtime.options, body.quota)})"
        )
        entry = log_entry(LOG_MANAGE, target.id, values["username"], content)
    await session.execute(
        update(User).where(User.id == target.id).values(**values).execution_options(synchronize_session=False)
    )
    if entry is not None:
        await record_log(runtime.db, entry, session=session)
    edited = await _user_row(session, target.id)
    assert edited is not None  # the row is locked by this transaction
    return user_json(*edited)


@router.put("/user/")
async def update_user(body: UserEdit, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    """new-api's console sends the whole user back; a quota that differs from the one shown writes
    exactly one manage log, owned by the edited user, in the same transaction as the change."""
    values = await _edit_values(body)
    try:
        async with runtime.db.session() as session, session.begin():
            edited = await _apply_edit(session, runtime, caller, body, values)
    except IntegrityError:
        raise BusinessError(_TAKEN) from None
    runtime.relay.accounts.users_changed()
    return ok(edited, "user updated")


# ----- manage and delete --------------------------------------------------------------------------


def _manage_values(caller: Session, target: User, action: str) -> dict[str, Any]:
    """The columns an action writes, or the reason it is refused."""
    if action in ("disable", "delete", "demote") and target.role == ROLE_ROOT:
        raise BusinessError(f"the root user cannot be {action}d")
    if action == "disable":
        return {"status": USER_DISABLED}
    if action == "enable":
        return {"status": USER_ENABLED}
    if action == "delete":
        return {"deleted_at": _now()}
    if action == "promote":
        if caller.role != ROLE_ROOT:
            raise Forbidden("only the root user can promote users to administrator")
        if target.role >= ROLE_ADMIN:
            raise BusinessError("this user is already an administrator")
        return {"role": ROLE_ADMIN}
    if target.role <= ROLE_COMMON:
        raise BusinessError("this user is already a common user")
    return {"role": ROLE_COMMON}


@router.post("/user/manage")
async def manage_user(body: ManageRequest, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Answers the user's resulting ``role`` and ``status``, which is what consoles read."""
    async with runtime.db.session() as session, session.begin():
        target, _leased = await _lock_user(session, body.id)
        _check_authority(caller, target)
        values = _manage_values(caller, target, body.action)
        await session.execute(
            update(User)
            .where(User.id == target.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    runtime.relay.accounts.users_changed()
    if body.action == "delete":
        runtime.relay.accounts.tokens_changed()
    result = {"role": values.get("role", target.role), "status": values.get("status", target.status)}
    return ok(result, f"user {body.action}d")


async def _drop_leases(session: AsyncSession, user_id: int) -> None:
    """Leases of a user (and of its tokens) that is about to vanish. SQLite may hand a freed id to
    the next new row, which must not inherit quota held for the old one; a worker that still holds
    such a lease in memory finds no row when it returns it, and gives back nothing."""
    tokens = select(Token.id).where(Token.user_id == user_id)
    await session.execute(
        delete(QuotaLease).where(
            or_(
                and_(QuotaLease.account_kind == ACCOUNT_USER, QuotaLease.account_id == user_id),
                and_(QuotaLease.account_kind == ACCOUNT_TOKEN, QuotaLease.account_id.in_(tokens)),
            )
        )
    )


@router.delete("/user/{user_id:int}")
async def delete_user(user_id: int, caller: AdminUser, runtime: RuntimeDep) -> dict[str, Any]:
    """A hard delete: the row goes, its tokens with it (foreign-key cascade). Soft-deleted users
    can be purged this way too."""
    async with runtime.db.session() as session, session.begin():
        target, _leased = await _lock_user(session, user_id, deleted_too=True)
        _check_authority(caller, target)
        if target.role == ROLE_ROOT:
            raise BusinessError("the root user cannot be deleted")
        await _drop_leases(session, target.id)
        await session.execute(delete(User).where(User.id == target.id))
    runtime.relay.accounts.users_changed()
    runtime.relay.accounts.tokens_changed()
    return ok()
