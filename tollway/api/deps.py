"""Dependencies shared by the management routes: the runtime, and who is calling.

Credentials: the ``session`` cookie, or ``Authorization: Bearer <token>`` where the token is a
session value (returned by login) or a system access token. The ``New-Api-User`` header (or
Veloera's ``Veloera-User``) must name the same user. Roles: 1 common, 10 admin, 100 root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from tollway.auth.sessions import SESSION_COOKIE, SessionCodec, hash_access_token
from tollway.db.models import User
from tollway.db.models.user import ROLE_ADMIN, ROLE_COMMON, ROLE_ROOT, USER_ENABLED
from tollway.errors import Forbidden, Unauthorized
from tollway.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True)
class Session:
    """The authenticated caller of a management route."""

    user: User
    via_access_token: bool
    veloera: bool  # the caller sent Veloera-User (Veloera's console): some lists answer in its dialect

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def role(self) -> int:
        return self.user.role


def session_codec(runtime: Runtime) -> SessionCodec:
    return SessionCodec(runtime.settings.session_secret)


async def _authenticate(request: Request, runtime: Runtime, min_role: int) -> Session:
    codec = session_codec(runtime)
    user_id: int | None = None
    access_token = False
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        user_id = codec.decode(cookie)
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header[:7].lower() == "bearer " else header.strip()
    user: User | None = None
    async with runtime.db.session() as session:
        if user_id is None and bearer:
            user_id = codec.decode(bearer)
            if user_id is None:
                user = await session.scalar(
                    select(User).where(
                        User.access_token == hash_access_token(bearer), User.deleted_at.is_(None)
                    )
                )
                if user is None:
                    raise Unauthorized("invalid access token")
                access_token = True
        if user is None and user_id is not None:
            user = await session.scalar(select(User).where(User.id == user_id, User.deleted_at.is_(None)))
    if user is None:
        raise Unauthorized("not logged in: send the session cookie or Authorization: Bearer <access token>")
    claimed = request.headers.get("new-api-user")
    veloera = claimed is None and request.headers.get("veloera-user") is not None
    if claimed is None:
        claimed = request.headers.get("veloera-user")
    if claimed is None:
        raise Unauthorized("the New-Api-User header is missing")
    if claimed.strip() != str(user.id):
        raise Unauthorized("the New-Api-User header does not match the logged-in user")
    if user.status != USER_ENABLED:
        raise Forbidden("this user is disabled")
    if user.role < min_role:
        raise Forbidden("insufficient permissions")
    return Session(user=user, via_access_token=access_token, veloera=veloera)


async def current_user(request: Request, runtime: RuntimeDep) -> Session:
    return await _authenticate(request, runtime, ROLE_COMMON)


async def admin_user(request: Request, runtime: RuntimeDep) -> Session:
    return await _authenticate(request, runtime, ROLE_ADMIN)


async def root_user(request: Request, runtime: RuntimeDep) -> Session:
    return await _authenticate(request, runtime, ROLE_ROOT)


CurrentUser = Annotated[Session, Depends(current_user)]
AdminUser = Annotated[Session, Depends(admin_user)]
RootUser = Annotated[Session, Depends(root_user)]


async def caller_is_admin(request: Request, runtime: Runtime) -> bool:
    """For public routes that show operators more: True when valid admin credentials came along."""
    if not request.headers.get("authorization") and SESSION_COOKIE not in request.cookies:
        return False
    try:
        await _authenticate(request, runtime, ROLE_ADMIN)
    except (Unauthorized, Forbidden):
        return False
    return True
