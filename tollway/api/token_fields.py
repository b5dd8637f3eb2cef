"""Tokens as the management API sees them: the request body, its validation, and the JSON shape.

Kept apart from the routes (``tollway/api/tokens.py``) so each stays small. The JSON matches
new-api's Token object (reference §4.2) with the key masked, as newer new-api lists show it.
The redemption routes share the bounds (ids, quota, times) and :func:`take_write_lock`.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, Field
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.auth.keys import mask_hint
from tollway.billing.pricing import GROUP_RATIO
from tollway.db.models import Token, User
from tollway.db.models.token import TOKEN_DISABLED, TOKEN_ENABLED, TOKEN_EXHAUSTED, TOKEN_EXPIRED
from tollway.errors import BusinessError
from tollway.options import USER_USABLE_GROUPS, Options

MAX_NAME = 50
MAX_LIST_FIELD = 1024  # model_limits and allow_ips columns
MAX_GROUP = 64
MAX_QUOTA = 10**15  # 2 billion USD at 500 000 quota per USD: far above any real balance
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
NEVER_EXPIRES = -1
MAX_ID = 2_147_483_647  # ids are 32-bit integers: a larger one is bad input, not a database error

DbId = Annotated[int, Field(ge=0, le=MAX_ID)]
PathId = Annotated[int, Path(ge=0, le=MAX_ID)]


class TokenBody(BaseModel):
    """``POST``/``PUT /api/token/``: new-api's Token JSON. Unknown fields are ignored, like Gin;
    ``key``, ``used_quota`` and the times a client echoes back are never taken from the body."""

    id: DbId = 0
    name: str = ""
    status: int = 0
    expired_time: int = NEVER_EXPIRES
    remain_quota: int = 0
    unlimited_quota: bool = False
    model_limits_enabled: bool = False
    model_limits: str | None = ""
    allow_ips: str | None = ""
    group: str | None = ""


@dataclass(frozen=True)
class TokenValues:
    """The validated, normalised columns a create or a full update writes."""

    name: str
    expired_time: int
    remain_quota: int
    unlimited_quota: bool
    model_limits_enabled: bool
    model_limits: str
    allow_ips: str
    group: str

    def columns(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expired_time": self.expired_time,
            "remain_quota": self.remain_quota,
            "unlimited_quota": self.unlimited_quota,
            "model_limits_enabled": self.model_limits_enabled,
            "model_limits": self.model_limits,
            "allow_ips": self.allow_ips,
            "group": self.group,
        }


def _name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise BusinessError("the token name must not be empty")
    if len(name) > MAX_NAME:
        raise BusinessError(f"the token name must be at most {MAX_NAME} characters")
    return name


def check_expiry(value: int, now: int, *, past_allowed: bool = False) -> int:
    """-1 (never) or a unix time in the future. An update may keep a past expiry unchanged (so an
    expired token can still be renamed); ``past_allowed`` defers that comparison to the caller."""
    if value == NEVER_EXPIRES:
        return value
    if value <= (0 if past_allowed else now):
        raise BusinessError("expired_time must be -1 (never) or a unix time in the future")
    if value > MAX_TIMESTAMP:
        raise BusinessError("expired_time is too far in the future")
    return value


def _quota(value: int) -> int:
    if value < 0:
        raise BusinessError("remain_quota must not be negative")
    if value > MAX_QUOTA:
        raise BusinessError(f"remain_quota must be at most {MAX_QUOTA}")
    return value


def _model_limits(raw: str | None) -> str:
    models = [m.strip() for m in (raw or "").split(",") if m.strip()]
    joined = ",".join(dict.fromkeys(models))
    if len(joined) > MAX_LIST_FIELD:
        raise BusinessError(f"model_limits must be at most {MAX_LIST_FIELD} characters")
    return joined


def _allow_ips(raw: str | None) -> str:
    """IPs and CIDR ranges, one per line or comma separated; each must parse (the relay would
    otherwise ignore a typo and the owner would think the token is locked down)."""
    entries = [e.strip() for e in (raw or "").replace(",", "\n").split("\n") if e.strip()]
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise BusinessError(f"allow_ips: {entry[:64]!r} is not an IP address or CIDR range") from None
    joined = "\n".join(dict.fromkeys(entries))
    if len(joined) > MAX_LIST_FIELD:
        raise BusinessError(f"allow_ips must be at most {MAX_LIST_FIELD} characters")
    return joined


def check_group(group: str, user: User, options: Options) -> str:
    """A token group must be one the relay will accept for this user: none (the user's own), the
    user's group, or a group users may choose (``UserUsableGroups``) that has a ratio."""
    group = group.strip()
    if not group or group == user.group:
        return group
    if len(group) > MAX_GROUP:
        raise BusinessError(f"the group name must be at most {MAX_GROUP} characters")
    if group not in options.get(USER_USABLE_GROUPS) or group not in options.get(GROUP_RATIO):
        raise BusinessError(f"group {group!r} is not available to you")
    return group


def validate_body(body: TokenBody, user: User, options: Options, *, update: bool = False) -> TokenValues:
    """Everything a create or a full update checks; raises :class:`BusinessError`. An update
    checks a changed expiry against the clock itself (see :func:`check_expiry`)."""
    return TokenValues(
        name=_name(body.name),
        expired_time=check_expiry(body.expired_time, int(time.time()), past_allowed=update),
        remain_quota=_quota(body.remain_quota),
        unlimited_quota=body.unlimited_quota,
        model_limits_enabled=body.model_limits_enabled,
        model_limits=_model_limits(body.model_limits),
        allow_ips=_allow_ips(body.allow_ips),
        group=check_group(body.group or "", user, options),
    )


def check_status(status: int) -> int:
    if status not in (TOKEN_ENABLED, TOKEN_DISABLED):
        raise BusinessError("status must be 1 (enabled) or 2 (disabled)")
    return status


def shown_remain(row: Token, leased: int) -> int:
    """A limited token's balance is its column plus what workers hold in leases (exact)."""
    return int(row.remain_quota or 0) + (0 if row.unlimited_quota else leased)


def refuse_enabling(row: Token, leased: int, now: int) -> None:
    """new-api refuses to enable a token that would be refused at once by the relay."""
    if row.expired_time != NEVER_EXPIRES and row.expired_time < now:
        raise BusinessError(
            "this token has expired and cannot be enabled: set a later expired_time or -1 (never) first"
        )
    if not row.unlimited_quota and shown_remain(row, leased) <= 0:
        raise BusinessError(
            "this token's quota is used up and it cannot be enabled: raise remain_quota "
            "or make it unlimited first"
        )


def effective_status(row: Token, leased: int, now: int) -> int:
    """The status the relay acts on: an enabled token past its expiry shows 3, a limited one
    without quota shows 4 (new-api flips the row itself on first use; the relay here does not)."""
    if row.status != TOKEN_ENABLED:
        return int(row.status)
    if row.expired_time != NEVER_EXPIRES and row.expired_time < now:
        return TOKEN_EXPIRED
    if not row.unlimited_quota and shown_remain(row, leased) <= 0:
        return TOKEN_EXHAUSTED
    return TOKEN_ENABLED


def masked_key(row: Token) -> str:
    """``abcd**********wxyz``: new-api lists keys without the ``sk-`` prefix."""
    return mask_hint(row.key_hint or "").removeprefix("sk-")


def token_json(row: Token, leased: int = 0, *, now: int | None = None) -> dict[str, Any]:
    now = int(time.time()) if now is None else now
    return {
        "id": row.id,
        "user_id": row.user_id,
        "key": masked_key(row),
        "status": effective_status(row, leased, now),
        "name": row.name,
        "created_time": row.created_time,
        "accessed_time": row.accessed_time,
        "expired_time": row.expired_time,
        "remain_quota": shown_remain(row, leased),
        "unlimited_quota": bool(row.unlimited_quota),
        "model_limits_enabled": bool(row.model_limits_enabled),
        "model_limits": row.model_limits or "",
        "allow_ips": row.allow_ips,
        "used_quota": row.used_quota,
        "group": row.group or "",
        "DeletedAt": row.deleted_at.isoformat() if row.deleted_at else None,
    }


async def take_write_lock(session: AsyncSession, dialect: str, model: type[Any], *where: Any) -> None:
    """Make the transaction a writer before it reads. SQLite ignores ``FOR UPDATE`` and its driver
    begins a transaction only at the first write, so a no-op UPDATE comes first: it waits for
    (busy timeout) and takes the database's write lock, and the reads that follow are current and
    stay so until commit. Other databases lock rows with ``SELECT … FOR UPDATE`` instead."""
    if dialect == "sqlite":
        await session.execute(
            update(model)
            .where(*where)
            .values(updated_at=model.updated_at)  # an explicit value: no onupdate bump
            .execution_options(synchronize_session=False)
        )


def ids_of(ids: Sequence[int]) -> list[int]:
    """Distinct ids in the order given."""
    return list(dict.fromkeys(ids))
