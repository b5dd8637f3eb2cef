"""User accounts seen from outside: registration, login, logout. The self-service routes live in
``users_self``, check-in in ``users_checkin`` and the email flows in ``users_email``; this module's
``router`` carries all of them (the app registers it once).

Also exported for other route modules: :func:`user_json` (the User JSON shape) and the
new-user options (``QUOTA_FOR_NEW_USER`` and the invitation rewards).
"""

from __future__ import annotations

import asyncio
import time
from functools import cache
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import case, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tollway import options as opt
from tollway.api import users_checkin, users_email, users_self
from tollway.api.deps import RuntimeDep, session_codec
from tollway.api.envelope import ok
from tollway.api.users_email import code_matches, consume_code, count_failure, email_owner_filter
from tollway.api.users_self import (
    check_display_name,
    check_password,
    check_username,
    describe_quota,
    generate_aff_code,
    is_email,
    parse_setting,
    user_json,
    username_taken,
)
from tollway.auth.passwords import hash_password, hash_password_sync, verify_password
from tollway.auth.sessions import SESSION_COOKIE, SESSION_MAX_AGE
from tollway.db.models import User
from tollway.db.models.log import LOG_LOGIN, LOG_SYSTEM
from tollway.db.models.user import ROLE_COMMON, USER_ENABLED
from tollway.db.models.verification import PURPOSE_REGISTER
from tollway.errors import BusinessError
from tollway.ops.ratelimit import critical_rate_limit
from tollway.options import REGISTRY, OptionError
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log

__all__ = ["QUOTA_FOR_INVITEE", "QUOTA_FOR_INVITER", "QUOTA_FOR_NEW_USER", "router", "user_json"]

router = APIRouter()


def _not_negative(value: int) -> None:
    if value < 0:
        raise OptionError("must not be negative")


QUOTA_FOR_NEW_USER = REGISTRY.declare("QuotaForNewUser", 0, _not_negative)
QUOTA_FOR_INVITEE = REGISTRY.declare("QuotaForInvitee", 0, _not_negative)
QUOTA_FOR_INVITER = REGISTRY.declare("QuotaForInviter", 0, _not_negative)

_AFF_CODE_ATTEMPTS = 8


# ----- registration -------------------------------------------------------------------------------


class RegisterRequest(BaseModel):
    username: str = Field(default="", max_length=64)
    password: str = Field(default="", max_length=64)
    display_name: str = Field(default="", max_length=64)
    email: str = Field(default="", max_length=255)
    verification_code: str = Field(default="", max_length=64)
    aff_code: str = Field(default="", max_length=32)


class _WrongCode(Exception):
    """The verification code did not match (its failure is counted outside the transaction)."""


def _check_registration_open(runtime: Runtime) -> None:
    if not runtime.options.get(opt.REGISTER_ENABLED):
        raise BusinessError("registration of new users is closed")
    if not runtime.options.get(opt.PASSWORD_REGISTER_ENABLED):
        raise BusinessError("registration with a password is closed: use a third-party account")


def _verified_email(runtime: Runtime, body: RegisterRequest) -> str | None:
    """The address to store: only a verified one (an unverified address could squat someone's)."""
    email = body.email.strip()
    if email and not is_email(email):
        raise BusinessError("the email address is not valid")
    if not runtime.options.get(opt.EMAIL_VERIFICATION_ENABLED):
        return None
    if not email or not body.verification_code.strip():
        raise BusinessError("email verification is on: enter your email address and the code sent to it")
    return email


async def _reward_inviter(
    session: AsyncSession, runtime: Runtime, inviter: User, invitee: str, reward: int
) -> None:
    await session.execute(
        update(User)
        .where(User.id == inviter.id)
        .values(
            aff_count=User.aff_count + 1,
            aff_quota=User.aff_quota + reward,
            aff_history_quota=User.aff_history_quota + reward,
        )
    )
    if reward > 0:
        content = (
            f"Invited user {invitee}: {describe_quota(runtime.options, reward)} added to invitation rewards"
        )
        await record_log(
            runtime.db,
            log_entry(LOG_SYSTEM, inviter.id, inviter.username, content, quota=reward),
            session=session,
        )


async def _insert_user(
    session: AsyncSession,
    runtime: Runtime,
    body: RegisterRequest,
    username: str,
    hashed: str,
    email: str | None,
) -> None:
    """Everything a registration writes, in the caller's transaction."""
    if await username_taken(session, username):
        raise BusinessError("the username already exists or belonged to a deleted account")
    if email is not None:
        if await session.scalar(select(User.id).where(email_owner_filter(email)).limit(1)) is not None:
            raise BusinessError("this email address is already in use")
        if not await consume_code(session, email, PURPOSE_REGISTER, body.verification_code):
            raise _WrongCode
    inviter: User | None = None
    if body.aff_code.strip():
        inviter = await session.scalar(
            select(User).where(User.aff_code == body.aff_code.strip(), User.deleted_at.is_(None))
        )
    gift = runtime.options.get(QUOTA_FOR_NEW_USER)
    bonus = runtime.options.get(QUOTA_FOR_INVITEE) if inviter is not None else 0
    user = User(
        username=username,
        password=hashed,
        display_name=check_display_name(body.display_name) or username,
        email=email,
        role=ROLE_COMMON,
        status=USER_ENABLED,
        group="default",
        quota=gift + bonus,
        aff_code=generate_aff_code(),
        inviter_id=inviter.id if inviter is not None else None,
    )
    session.add(user)
    await session.flush()
    if gift > 0:
        content = f"New user bonus: {describe_quota(runtime.options, gift)}"
        await record_log(
            runtime.db, log_entry(LOG_SYSTEM, user.id, username, content, quota=gift), session=session
        )
    if inviter is not None:
        if bonus > 0:
            content = (
                f"Bonus for signing up with an invitation code: {describe_quota(runtime.options, bonus)}"
            )
            await record_log(
                runtime.db, log_entry(LOG_SYSTEM, user.id, username, content, quota=bonus), session=session
            )
        await _reward_inviter(session, runtime, inviter, username, runtime.options.get(QUOTA_FOR_INVITER))


async def _precheck(runtime: Runtime, body: RegisterRequest, username: str, email: str | None) -> None:
    """Refuse what is bound to fail before the deliberately slow password hash, so a flood of bad
    registrations costs little. The transaction checks all of it again."""
    async with runtime.db.session() as session:
        if await username_taken(session, username):
            raise BusinessError("the username already exists or belonged to a deleted account")
        if email is None:
            return
        if await session.scalar(select(User.id).where(email_owner_filter(email)).limit(1)) is not None:
            raise BusinessError("this email address is already in use")
        matches = await code_matches(session, email, PURPOSE_REGISTER, body.verification_code)
    if not matches:
        await count_failure(runtime, email, PURPOSE_REGISTER)
        raise BusinessError("the verification code is wrong or has expired")


@router.post("/user/register", dependencies=[Depends(critical_rate_limit)])
async def register(body: RegisterRequest, runtime: RuntimeDep) -> dict[str, Any]:
    _check_registration_open(runtime)
    username = check_username(body.username)
    check_password(body.password)
    check_display_name(body.display_name)
    email = _verified_email(runtime, body)
    await _precheck(runtime, body, username, email)
    hashed = await hash_password(body.password)
    for _ in range(_AFF_CODE_ATTEMPTS):
        try:
            async with runtime.db.session() as session, session.begin():
                await _insert_user(session, runtime, body, username, hashed, email)
        except _WrongCode:
            await count_failure(runtime, email or "", PURPOSE_REGISTER)
            raise BusinessError("the verification code is wrong or has expired") from None
        except IntegrityError:
            async with runtime.db.session() as session:
                if await username_taken(session, username):
                    raise BusinessError(
                        "the username already exists or belonged to a deleted account"
                    ) from None
            continue  # the drawn invitation code belongs to someone else: draw again
        return ok(message="registration complete: you can log in now")
    raise BusinessError("registration failed, please retry")


# ----- login and logout ---------------------------------------------------------------------------


class LoginRequest(BaseModel):
    username: str = Field(default="", max_length=255)
    password: str = Field(default="", max_length=255)


@cache
def _decoy_hash() -> str:
    """Checked against when no account matches, so a wrong name costs as long as a wrong password."""
    return hash_password_sync("tollway-decoy-password")


async def _find_login(runtime: Runtime, name: str) -> User | None:
    """The live account whose username is ``name``, else whose email is (case-insensitively)."""
    async with runtime.db.session() as session:
        return await session.scalar(
            select(User)
            .where(User.deleted_at.is_(None), or_(User.username == name, email_owner_filter(name)))
            .order_by(case((User.username == name, 0), else_=1), User.id)
            .limit(1)
        )


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


async def _log_login(runtime: Runtime, request: Request, user: User) -> None:
    """A login log (type 7); the address only when the user opted in (setting ``record_ip_log``)."""
    ip = _client_ip(request) if parse_setting(user.setting).get("record_ip_log") else ""
    entry = log_entry(LOG_LOGIN, user.id, user.username, f"login from IP {ip}" if ip else "login")
    entry.ip = ip
    await record_log(runtime.db, entry)


def login_payload(user: User, token: str) -> dict[str, Any]:
    """new-api's console reads the user fields; the newapi-python client reads ``access_token``
    and ``user``. Both get what they expect."""
    fields = {
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name or "",
        "role": user.role,
        "status": user.status,
        "group": user.group or "default",
    }
    return {
        **fields,
        "access_token": token,
        "token_type": "Bearer",
        "expires_at": int(time.time()) + SESSION_MAX_AGE,
        "user": dict(fields),
    }


@router.post("/user/login", dependencies=[Depends(critical_rate_limit)])
async def login(
    body: LoginRequest, request: Request, response: Response, runtime: RuntimeDep
) -> dict[str, Any]:
    if not runtime.options.get(opt.PASSWORD_LOGIN_ENABLED):
        raise BusinessError("password login is disabled by the administrator")
    name = body.username.strip()
    if not name or not body.password:
        raise BusinessError("username and password are required")
    user = await _find_login(runtime, name)
    stored = user.password if user else await asyncio.to_thread(_decoy_hash)
    valid = await verify_password(stored, body.password)
    if user is None or not valid:
        raise BusinessError("wrong username or password")
    if user.status != USER_ENABLED:
        raise BusinessError("this user is disabled")
    token = session_codec(runtime).encode(user.id)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, path="/", httponly=True, samesite="strict"
    )
    await _log_login(runtime, request, user)
    return ok(login_payload(user, token))


@router.get("/user/login/encryption-key")
async def login_encryption_key() -> dict[str, Any]:
    """The newapi-python client asks before it logs in; passwords travel in the clear over TLS."""
    return ok({"enabled": False})


@router.get("/user/logout")
@router.post("/user/logout")
async def logout(response: Response) -> dict[str, Any]:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return ok(message="logged out")


for _module in (users_self, users_checkin, users_email):
    router.include_router(_module.router)
