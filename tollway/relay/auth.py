"""Token authentication for the relay: every credential form new-api accepts, and every check.

Forms (reference §1.3): ``Authorization: Bearer sk-…`` (or the bare key), ``x-api-key`` on
Anthropic paths and model lists, ``mj-api-secret``, ``?key=`` / ``x-goog-api-key`` on Gemini paths.
``sk-KEY-CHANNELID`` pins a channel, for tokens of administrators only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from tollway.auth.keys import hash_key, mask_hint
from tollway.billing.balances import LeaseBalanceStore
from tollway.billing.pricing import PriceTableCache
from tollway.db.models.lease import ACCOUNT_TOKEN
from tollway.db.models.token import TOKEN_DISABLED, TOKEN_ENABLED, TOKEN_EXHAUSTED, TOKEN_EXPIRED
from tollway.db.models.user import ROLE_ADMIN, USER_ENABLED
from tollway.errors import Forbidden, Unauthorized
from tollway.options import USER_USABLE_GROUPS, Options
from tollway.relay.accounts import AccountCache, TokenRecord, UserRecord
from tollway.relay.incoming import Incoming

_GEMINI_PREFIXES = ("/v1beta/models", "/v1/models/", "/v1beta/openai/models")


@dataclass(frozen=True, slots=True)
class Credentials:
    key: str
    channel_pin: int | None


@dataclass(frozen=True, slots=True)
class Caller:
    token: TokenRecord
    user: UserRecord
    group: str
    pin: int | None

    def check_model(self, model: str) -> None:
        limits = self.token.model_limits
        if limits is not None and model not in limits:
            raise Forbidden(f"this token may not use model {model}", code="model_not_allowed")


def extract_credentials(path: str, headers: dict[str, str], query: str) -> Credentials | None:
    raw = ""
    if "x-api-key" in headers and (path.startswith("/v1/messages") or path.startswith("/v1/models")):
        raw = headers["x-api-key"]
    if not raw:
        raw = headers.get("authorization", "")
        if raw[:7].lower() == "bearer ":
            raw = raw[7:]
    raw = raw.strip()
    if not raw or raw == "midjourney-proxy":
        raw = headers.get("mj-api-secret", "").strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
    if not raw and path.startswith(_GEMINI_PREFIXES):
        raw = headers.get("x-goog-api-key", "") or (parse_qs(query).get("key") or [""])[0]
    if not raw:
        return None
    key, _, rest = raw.removeprefix("sk-").partition("-")
    pin: int | None = None
    if rest:
        try:
            pin = int(rest.split("-", 1)[0])
        except ValueError:
            pin = None
    return Credentials(key, pin)


async def authenticate(
    incoming: Incoming,
    accounts: AccountCache,
    balances: LeaseBalanceStore,
    options: Options,
    prices: PriceTableCache,
    *,
    read_only: bool = False,
) -> Caller:
    """Who is calling, or an :class:`Unauthorized` / :class:`Forbidden` error in OpenAI's shape.

    ``read_only`` (a key reading its own logs) accepts expired and exhausted keys: their owners
    want to see what happened. Disabled and deleted keys are refused either way."""
    credentials = extract_credentials(incoming.path, incoming.headers, incoming.query)
    if credentials is None:
        raise Unauthorized("no API key provided (send Authorization: Bearer sk-…)", code="missing_api_key")
    token = await accounts.token(hash_key(credentials.key))
    if token is None:
        raise Unauthorized("invalid API key", code="invalid_api_key")
    _check_token(token, balances, read_only=read_only)
    user = await accounts.user(token.user_id)
    if user is None:
        raise Unauthorized("the owner of this API key no longer exists", code="invalid_api_key")
    if user.status != USER_ENABLED:
        raise Forbidden("this user is disabled", code="user_disabled")
    if not token.ip_allowed(incoming.client_ip):
        raise Forbidden(f"this API key may not be used from {incoming.client_ip}", code="ip_not_allowed")
    group = token.group or user.group
    if token.group and token.group != user.group:
        usable = options.get(USER_USABLE_GROUPS)
        if token.group not in usable or token.group not in prices.get(options).group_ratios:
            raise Forbidden(f"group {token.group} is not available to this user", code="group_not_allowed")
    if credentials.channel_pin is not None and user.role < ROLE_ADMIN:
        raise Forbidden(
            "only administrators may choose a channel with sk-KEY-CHANNELID", code="channel_pin_forbidden"
        )
    return Caller(token=token, user=user, group=group, pin=credentials.channel_pin)


def _check_token(token: TokenRecord, balances: LeaseBalanceStore, *, read_only: bool) -> None:
    masked = mask_hint(token.key_hint) if token.key_hint else "sk-***"
    if read_only:
        if token.status == TOKEN_DISABLED:
            raise Unauthorized(f"this API key is disabled [{masked}]", code="token_disabled")
        return
    if token.status == TOKEN_EXHAUSTED:
        raise Unauthorized(f"this API key's quota is used up [{masked}]", code="token_exhausted")
    if token.status == TOKEN_EXPIRED or (token.expired_time != -1 and token.expired_time < time.time()):
        raise Unauthorized(f"this API key has expired [{masked}]", code="token_expired")
    if token.status == TOKEN_DISABLED or token.status != TOKEN_ENABLED:
        raise Unauthorized(f"this API key is disabled [{masked}]", code="token_disabled")
    if not token.unlimited and token.remain_quota <= 0 and balances.available(ACCOUNT_TOKEN, token.id) <= 0:
        raise Unauthorized(f"this API key's quota is used up [{masked}]", code="token_exhausted")
