"""What a logged-in user does to their own account: profile, access token, invitations, groups,
models. Also the shared pieces the other user modules build on: the User JSON shape, the field
limits and the quota wording of log lines."""

from __future__ import annotations

import json
import re
import secrets
import string
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tollway import options as opt
from tollway.api.deps import CurrentUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.auth.passwords import hash_password, verify_password
from tollway.auth.sessions import generate_access_token, hash_access_token
from tollway.billing.pricing import GROUP_RATIO
from tollway.db.models import QuotaLease, User
from tollway.db.models.lease import ACCOUNT_USER
from tollway.db.models.log import LOG_SYSTEM
from tollway.db.models.user import ROLE_ROOT
from tollway.errors import BusinessError, NotFound
from tollway.options import Options
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log

router = APIRouter()

MAX_USERNAME, MAX_DISPLAY_NAME, MAX_EMAIL = 20, 20, 50
MIN_PASSWORD, MAX_PASSWORD = 8, 20
AFF_CODE_LENGTH = 4
# Only a hash is stored: the token itself is shown once, when generated; afterwards this mask.
ACCESS_TOKEN_MASK = "********"  # noqa: S105 (a placeholder, not a secret)
_AFF_ALPHABET = string.digits + string.ascii_letters
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


# ----- shapes and helpers shared by the user modules ----------------------------------------------


def rfc3339(value: datetime | None) -> str | None:
    """Timestamps are stored as naive UTC; new-api's JSON shows them as RFC 3339 (or null)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_json(user: User, leased: int) -> dict[str, Any]:
    """A User as new-api emits it (reference §4.4). ``leased`` is quota held by workers' leases:
    the balance shown is ``quota + leased``, exact. Secrets are never included."""
    return {
        "id": user.id,
        "username": user.username,
        "password": "",
        "display_name": user.display_name or "",
        "role": user.role,
        "status": user.status,
        "email": user.email or "",
        "github_id": user.github_id or "",
        "oidc_id": user.oidc_id or "",
        "wechat_id": user.wechat_id or "",
        "telegram_id": user.telegram_id or "",
        "linux_do_id": user.linux_do_id or "",
        "verification_code": "",
        "access_token": ACCESS_TOKEN_MASK if user.access_token else None,
        "quota": int(user.quota or 0) + leased,
        "used_quota": int(user.used_quota or 0),
        "request_count": int(user.request_count or 0),
        "group": user.group or "default",
        "aff_code": user.aff_code or "",
        "aff_count": int(user.aff_count or 0),
        "aff_quota": int(user.aff_quota or 0),
        "aff_history_quota": int(user.aff_history_quota or 0),
        "inviter_id": user.inviter_id or 0,
        "setting": user.setting or "",
        "last_check_in_time": rfc3339(user.last_check_in_time),
        "DeletedAt": rfc3339(user.deleted_at),
    }


def leased_quota_column() -> Any:
    """A correlated subquery: the quota held in leases for ``users.id``. Selected together with
    the user row it gives an exact balance from one snapshot."""
    return (
        select(func.coalesce(func.sum(QuotaLease.amount), 0))
        .where(QuotaLease.account_kind == ACCOUNT_USER, QuotaLease.account_id == User.id)
        .scalar_subquery()
    )


async def load_user(session: AsyncSession, user_id: int) -> tuple[User, int]:
    """The live (not deleted) user and its leased quota, read in one statement."""
    row = (
        await session.execute(
            select(User, leased_quota_column()).where(User.id == user_id, User.deleted_at.is_(None))
        )
    ).first()
    if row is None:
        raise NotFound("user not found")
    return row[0], int(row[1] or 0)


def describe_quota(options: Options, quota: int) -> str:
    """Quota as log lines word it: dollars when the site displays currency, points otherwise."""
    if options.get(opt.DISPLAY_IN_CURRENCY_ENABLED):
        per_unit = options.get(opt.QUOTA_PER_UNIT) or 500_000.0
        return f"${quota / per_unit:.6f}"
    return f"{quota} quota points"


def parse_setting(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def generate_aff_code() -> str:
    return "".join(secrets.choice(_AFF_ALPHABET) for _ in range(AFF_CODE_LENGTH))


def is_email(value: str) -> bool:
    return len(value) <= MAX_EMAIL and _EMAIL.match(value) is not None


def check_username(username: str) -> str:
    name = username.strip()
    if not name:
        raise BusinessError("username is required")
    if len(name) > MAX_USERNAME or any(ch.isspace() for ch in name):
        raise BusinessError(f"username must be 1 to {MAX_USERNAME} characters without spaces")
    return name


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BusinessError(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def check_display_name(display_name: str) -> str:
    name = display_name.strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise BusinessError(f"display name must be at most {MAX_DISPLAY_NAME} characters")
    return name


async def username_taken(session: AsyncSession, username: str, *, except_id: int = 0) -> bool:
    """Deleted users keep their names: new-api never hands a deleted account's name out again."""
    found = await session.scalar(select(User.id).where(User.username == username, User.id != except_id))
    return found is not None


def usable_groups(runtime: Runtime, own_group: str | None) -> dict[str, dict[str, Any]]:
    """Groups the relay lets this user's tokens use: the ones in ``UserUsableGroups`` that have a
    ratio, plus the user's own group (always usable)."""
    ratios = runtime.options.get(GROUP_RATIO)
    described = runtime.options.get(opt.USER_USABLE_GROUPS)
    groups = {
        name: {"ratio": float(ratios[name]), "desc": str(desc)}
        for name, desc in described.items()
        if name in ratios
    }
    if own_group and own_group not in groups:
        groups[own_group] = {
            "ratio": float(ratios.get(own_group, 1)),
            "desc": str(described.get(own_group, "your group")),
        }
    return groups


# ----- profile ------------------------------------------------------------------------------------


class SelfUpdate(BaseModel):
    username: str = Field(default="", max_length=64)
    display_name: str = Field(default="", max_length=64)
    password: str = Field(default="", max_length=64)
    original_password: str = Field(default="", max_length=64)


@router.get("/user/self")
async def get_self(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.db.session() as session:
        user, leased = await load_user(session, caller.id)
    return ok(user_json(user, leased))


@router.put("/user/self")
async def update_self(body: SelfUpdate, caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Empty fields stay unchanged (as in new-api); a new password needs the current one."""
    values: dict[str, Any] = {}
    if body.username.strip():
        values["username"] = check_username(body.username)
    if body.display_name.strip():
        values["display_name"] = check_display_name(body.display_name)
    if body.password:
        check_password(body.password)
        if not await verify_password(caller.user.password, body.original_password):
            raise BusinessError("the current password is wrong")
        values["password"] = await hash_password(body.password)
    if not values:
        raise BusinessError("nothing to update")
    try:
        async with runtime.db.session() as session, session.begin():
            if "username" in values and await username_taken(
                session, values["username"], except_id=caller.id
            ):
                raise BusinessError("this username is already taken")
            await session.execute(
                update(User).where(User.id == caller.id, User.deleted_at.is_(None)).values(**values)
            )
    except IntegrityError:
        raise BusinessError("this username is already taken") from None
    runtime.relay.accounts.users_changed()
    return ok(message="profile updated")


@router.delete("/user/self")
async def delete_self(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """A soft delete: the name stays reserved, and every session and token stops working at once."""
    if caller.role >= ROLE_ROOT:
        raise BusinessError("the root user cannot be deleted")
    now = datetime.now(UTC).replace(tzinfo=None)
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(User).where(User.id == caller.id, User.deleted_at.is_(None)).values(deleted_at=now)
        )
    runtime.relay.accounts.users_changed()
    runtime.relay.accounts.tokens_changed()
    return ok(message="account deleted")


@router.get("/user/token")
async def generate_token(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """A new system access token replaces the old one. Only its hash is stored, so this answer is
    the only time it is shown."""
    token = generate_access_token()
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(User).where(User.id == caller.id).values(access_token=hash_access_token(token))
        )
    return ok(token)


# ----- invitations --------------------------------------------------------------------------------


class AffTransfer(BaseModel):
    quota: int


@router.get("/user/aff")
async def get_aff_code(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Users created without a code (the root user, say) get one on first request."""
    if caller.user.aff_code:
        return ok(caller.user.aff_code)
    for _ in range(10):
        try:
            async with runtime.db.session() as session, session.begin():
                await session.execute(
                    update(User)
                    .where(User.id == caller.id, User.aff_code.is_(None))
                    .values(aff_code=generate_aff_code())
                )
                code = await session.scalar(select(User.aff_code).where(User.id == caller.id))
            return ok(code)
        except IntegrityError:
            continue  # another user holds that code: draw again
    raise BusinessError("could not allocate an invitation code, please retry")


@router.post("/user/aff_transfer")
async def transfer_aff_quota(body: AffTransfer, caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Moves invitation rewards to the spendable balance with one conditional UPDATE, so parallel
    transfers can never move more than there is."""
    minimum = int(runtime.options.get(opt.QUOTA_PER_UNIT))
    if body.quota <= 0 or body.quota < minimum:
        raise BusinessError(
            f"the amount to transfer must be at least {describe_quota(runtime.options, minimum)}"
        )
    async with runtime.db.session() as session, session.begin():
        moved = await session.execute(
            update(User)
            .where(User.id == caller.id, User.deleted_at.is_(None), User.aff_quota >= body.quota)
            .values(aff_quota=User.aff_quota - body.quota, quota=User.quota + body.quota)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise BusinessError("not enough invitation rewards to transfer that amount")
        content = (
            f"Transferred {describe_quota(runtime.options, body.quota)} of invitation rewards to the balance"
        )
        entry = log_entry(LOG_SYSTEM, caller.id, caller.user.username, content, quota=body.quota)
        await record_log(runtime.db, entry, session=session)
    runtime.relay.accounts.users_changed()
    return ok(message="transfer complete")


# ----- settings -----------------------------------------------------------------------------------

NOTIFY_TYPES = ("email", "webhook", "bark", "gotify")


class SettingUpdate(BaseModel):
    notify_type: str = Field(default="", max_length=16)
    quota_warning_threshold: float = Field(default=0, allow_inf_nan=False)
    webhook_url: str = Field(default="", max_length=1024)
    webhook_secret: str = Field(default="", max_length=256)
    notification_email: str = Field(default="", max_length=255)
    bark_url: str = Field(default="", max_length=1024)
    gotify_url: str = Field(default="", max_length=1024)
    gotify_token: str = Field(default="", max_length=256)
    gotify_priority: int = 5
    accept_unset_model_ratio_model: bool = False
    record_ip_log: bool = False


def _check_url(name: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BusinessError(f"{name} must be an http:// or https:// URL")


def _validate_setting(body: SettingUpdate) -> dict[str, Any]:
    if body.notify_type not in NOTIFY_TYPES:
        raise BusinessError(f"notify_type must be one of {', '.join(NOTIFY_TYPES)}")
    if body.quota_warning_threshold <= 0:
        raise BusinessError("quota_warning_threshold must be greater than 0")
    required = {"webhook": ("webhook_url",), "bark": ("bark_url",), "gotify": ("gotify_url", "gotify_token")}
    for field in required.get(body.notify_type, ()):
        if not getattr(body, field).strip():
            raise BusinessError(f"{field} is required for {body.notify_type} notifications")
    for field in ("webhook_url", "bark_url", "gotify_url"):
        if getattr(body, field).strip():
            _check_url(field, getattr(body, field).strip())
    if body.notification_email.strip() and not is_email(body.notification_email.strip()):
        raise BusinessError("notification_email is not a valid email address")
    if not 0 <= body.gotify_priority <= 10:
        raise BusinessError("gotify_priority must be between 0 and 10")
    values = body.model_dump()
    for key, value in values.items():
        if isinstance(value, str):
            values[key] = value.strip()
    return values


@router.put("/user/setting")
async def update_setting(body: SettingUpdate, caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Stores the notification preferences as JSON in ``users.setting``; keys this route does not
    own (written by newer consoles) are kept. The row is locked so concurrent saves don't mix."""
    values = _validate_setting(body)
    async with runtime.db.session() as session, session.begin():
        raw = await session.scalar(select(User.setting).where(User.id == caller.id).with_for_update())
        merged = {**parse_setting(raw), **values}
        await session.execute(
            update(User).where(User.id == caller.id).values(setting=json.dumps(merged, ensure_ascii=False))
        )
    runtime.relay.accounts.users_changed()
    return ok(message="settings saved")


# ----- groups and models --------------------------------------------------------------------------


@router.get("/user/groups")
async def public_groups(runtime: RuntimeDep) -> dict[str, Any]:
    """Without a session new-api computes this for "no user": the groups anyone may use."""
    return ok(usable_groups(runtime, None))


@router.get("/user/self/groups")
async def self_groups(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    return ok(usable_groups(runtime, caller.user.group or "default"))


async def _models(runtime: Runtime, caller_group: str, group: str | None) -> list[str]:
    channels = runtime.relay.channels
    if channels.stale:
        await channels.reload()
    usable = usable_groups(runtime, caller_group)
    if group:
        if group not in usable:
            raise BusinessError(f"group {group} is not available to you")
        return channels.index.models_for_group(group)
    names: set[str] = set()
    for name in usable:
        names.update(channels.index.models_for_group(name))
    return sorted(names)


@router.get("/user/models")
async def user_models(caller: CurrentUser, runtime: RuntimeDep) -> dict[str, Any]:
    """Every model the caller can reach through any group usable by them (new-api's union)."""
    return ok(await _models(runtime, caller.user.group or "default", None))


@router.get("/user/self/models")
async def self_models(caller: CurrentUser, runtime: RuntimeDep, group: str = "") -> dict[str, Any]:
    return ok(await _models(runtime, caller.user.group or "default", group.strip() or None))
