"""Email codes: registration codes (``/api/verification``) and password resets
(``/api/reset_password``, ``/api/user/reset``).

Codes live in the ``verification_codes`` table as SHA-256 hashes, so any node can check a code
another node sent. A code is valid for 10 minutes and for at most 5 wrong guesses; a new code for
the same address and purpose replaces the old one; using a code deletes it in the transaction of
the change it authorises, so a code works once even under parallel requests.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import string
import time
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway import options as opt
from tollway.api.deps import RuntimeDep
from tollway.api.envelope import ok
from tollway.api.users_self import is_email
from tollway.auth.passwords import hash_password
from tollway.db.models import User, VerificationCode
from tollway.db.models.verification import PURPOSE_REGISTER, PURPOSE_RESET
from tollway.errors import BusinessError
from tollway.ops.mailer import Mailer, MailerError
from tollway.ops.ratelimit import critical_rate_limit
from tollway.runtime import Runtime

router = APIRouter()

CODE_TTL = 600
MAX_ATTEMPTS = 5
CODE_LENGTH = 6
RESET_TOKEN_LENGTH = 32
RESET_PASSWORD_LENGTH = 12
_ALPHANUMERIC = string.digits + string.ascii_letters


def normalize_email(email: str) -> str:
    return email.strip().lower()


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


async def issue_code(runtime: Runtime, email: str, purpose: str, code: str) -> None:
    """Store ``code`` for (email, purpose), replacing earlier ones; expired codes are swept too."""
    now = int(time.time())
    address = normalize_email(email)
    async with runtime.db.session() as session, session.begin():
        await session.execute(delete(VerificationCode).where(VerificationCode.expires_at < now))
        await session.execute(
            delete(VerificationCode).where(
                VerificationCode.email == address, VerificationCode.purpose == purpose
            )
        )
        await session.execute(
            insert(VerificationCode).values(
                email=address, purpose=purpose, code_hash=_hash(code), expires_at=now + CODE_TTL, attempts=0
            )
        )


async def withdraw_code(runtime: Runtime, email: str, purpose: str) -> None:
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            delete(VerificationCode).where(
                VerificationCode.email == normalize_email(email), VerificationCode.purpose == purpose
            )
        )


def _live_code(email: str, purpose: str, code: str) -> tuple[Any, ...]:
    return (
        VerificationCode.email == normalize_email(email),
        VerificationCode.purpose == purpose,
        VerificationCode.code_hash == _hash(code),
        VerificationCode.expires_at >= int(time.time()),
        VerificationCode.attempts < MAX_ATTEMPTS,
    )


async def code_matches(session: AsyncSession, email: str, purpose: str, code: str) -> bool:
    """A look without using the code up (to refuse a wrong code before any costly work)."""
    found = await session.scalar(
        select(VerificationCode.id).where(*_live_code(email, purpose, code)).limit(1)
    )
    return found is not None


async def consume_code(session: AsyncSession, email: str, purpose: str, code: str) -> bool:
    """Delete the matching live code inside the caller's transaction; True when there was one.
    Only one of several parallel consumers can delete the row."""
    used = await session.execute(
        delete(VerificationCode)
        .where(*_live_code(email, purpose, code))
        .execution_options(synchronize_session=False)
    )
    return bool(used.rowcount == 1)  # type: ignore[attr-defined]


async def count_failure(runtime: Runtime, email: str, purpose: str) -> None:
    """A wrong guess, counted in a transaction of its own (the caller's one rolls back)."""
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(VerificationCode)
            .where(VerificationCode.email == normalize_email(email), VerificationCode.purpose == purpose)
            .values(attempts=VerificationCode.attempts + 1)
        )


def email_owner_filter(email: str) -> Any:
    return func.lower(User.email) == normalize_email(email)


async def _send(runtime: Runtime, email: str, purpose: str, subject: str, body: str) -> None:
    try:
        await Mailer.from_options(runtime.options).send(email.strip(), subject, body)
    except MailerError as exc:
        await withdraw_code(runtime, email, purpose)
        raise BusinessError(str(exc)) from None


def _checked_email(email: str) -> str:
    address = email.strip()
    if not address or not is_email(address):
        raise BusinessError("a valid email address is required")
    return address


@router.get("/verification", dependencies=[Depends(critical_rate_limit)])
async def send_verification(runtime: RuntimeDep, email: str = "") -> dict[str, Any]:
    """A 6-digit registration code; refused for an address an account (even a deleted one) uses."""
    address = _checked_email(email)
    async with runtime.db.session() as session:
        taken = await session.scalar(select(User.id).where(email_owner_filter(address)).limit(1))
    if taken is not None:
        raise BusinessError("this email address is already in use")
    code = _random(string.digits, CODE_LENGTH)
    await issue_code(runtime, address, PURPOSE_REGISTER, code)
    name = html.escape(runtime.options.get(opt.SYSTEM_NAME))
    body = (
        f"<p>Hello,</p><p>You are registering on {name}.</p>"
        f"<p>Your verification code is <strong>{code}</strong>. It is valid for {CODE_TTL // 60} minutes.</p>"
        "<p>If you did not ask for it, ignore this email.</p>"
    )
    await _send(
        runtime, address, PURPOSE_REGISTER, f"{runtime.options.get(opt.SYSTEM_NAME)} email verification", body
    )
    return ok(message="verification code sent")


@router.get("/reset_password", dependencies=[Depends(critical_rate_limit)])
async def send_reset_link(request: Request, runtime: RuntimeDep, email: str = "") -> dict[str, Any]:
    """Emails a reset link to the account with this address. The answer is the same whether or not
    an account uses it, so the route cannot be used to find out who has an account."""
    address = _checked_email(email)
    mailer = Mailer.from_options(runtime.options)
    if not mailer.configured:
        raise BusinessError("email is not configured on this site")
    async with runtime.db.session() as session:
        owner = await session.scalar(
            select(User.id).where(email_owner_filter(address), User.deleted_at.is_(None)).limit(1)
        )
    if owner is not None:
        token = _random(_ALPHANUMERIC, RESET_TOKEN_LENGTH)
        await issue_code(runtime, address, PURPOSE_RESET, token)
        base = runtime.options.get(opt.SERVER_ADDRESS).strip().rstrip("/") or str(request.base_url).rstrip(
            "/"
        )
        link = f"{base}/user/reset?{urlencode({'email': address, 'token': token})}"
        name = html.escape(runtime.options.get(opt.SYSTEM_NAME))
        body = (
            f"<p>Hello,</p><p>Someone asked to reset the password of your {name} account.</p>"
            f'<p><a href="{html.escape(link)}">Reset the password</a> (valid for {CODE_TTL // 60} minutes)</p>'
            f"<p>If the link does not open, copy this address into your browser:<br>{html.escape(link)}</p>"
            "<p>If you did not ask for it, ignore this email.</p>"
        )
        await _send(
            runtime, address, PURPOSE_RESET, f"{runtime.options.get(opt.SYSTEM_NAME)} password reset", body
        )
    return ok(message="if an account uses this address, a reset link was sent to it")


class ResetRequest(BaseModel):
    email: str = Field(default="", max_length=255)
    token: str = Field(default="", max_length=64)


@router.post("/user/reset", dependencies=[Depends(critical_rate_limit)])
async def reset_password(body: ResetRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Checks the emailed token and gives the account a new random password, returned once."""
    address = _checked_email(body.email)
    if not body.token.strip():
        raise BusinessError("the reset token is required")
    async with runtime.db.session() as session:
        plausible = await code_matches(session, address, PURPOSE_RESET, body.token)
    if plausible:  # the slow hash only for a token that matches
        password = _random(_ALPHANUMERIC, RESET_PASSWORD_LENGTH)
        hashed = await hash_password(password)
        async with runtime.db.session() as session, session.begin():
            if await consume_code(session, address, PURPOSE_RESET, body.token):
                owner = await session.scalar(
                    select(User.id)
                    .where(email_owner_filter(address), User.deleted_at.is_(None))
                    .order_by(User.id)
                    .limit(1)
                )
                if owner is not None:
                    await session.execute(update(User).where(User.id == owner).values(password=hashed))
                    return ok(password, "password reset: use the new password to log in")
    await count_failure(runtime, address, PURPOSE_RESET)
    raise BusinessError("the reset link is invalid or has expired")
