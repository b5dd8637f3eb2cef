"""Read-only relay answers: ``/v1/models`` and the OpenAI-legacy ``/dashboard/billing/*`` routes."""

from __future__ import annotations

import time
from typing import Any

from tollway.billing.balances import LeaseBalanceStore
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.errors import NotFound
from tollway.options import DISPLAY_IN_CURRENCY_ENABLED, DISPLAY_TOKEN_STAT_ENABLED, QUOTA_PER_UNIT, Options
from tollway.relay.auth import Caller
from tollway.relay.channel_cache import ChannelCache

MODEL_CREATED = 1626777600  # new-api's fixed `created` for every model object
UNLIMITED_USD = 100_000_000


def _owner(model: str) -> str:
    lowered = model.lower()
    for prefix, owner in (
        (("gpt-", "o1", "o3", "o4", "text-", "dall-e", "whisper", "tts", "chatgpt"), "openai"),
        (("claude",), "anthropic"),
        (("gemini", "imagen"), "google"),
        (("deepseek",), "deepseek"),
        (("qwen",), "alibaba"),
        (("mistral", "codestral"), "mistral"),
    ):
        if lowered.startswith(prefix):
            return owner
    return "custom"


def model_object(model: str) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": _owner(model),
        "permission": [
            {
                "id": "modelperm-LwHkVFn8AcMItP432fKKDIKJ",
                "object": "model_permission",
                "created": MODEL_CREATED,
                "allow_create_engine": True,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
        "root": model,
        "parent": None,
    }


def visible_models(caller: Caller, channels: ChannelCache) -> list[str]:
    """The token's allow-list when it has one, else every model its group can reach."""
    if caller.token.model_limits is not None:
        return sorted(caller.token.model_limits)
    return channels.index.models_for_group(caller.group)


def list_models(caller: Caller, channels: ChannelCache) -> dict[str, Any]:
    return {
        "object": "list",
        "success": True,
        "data": [model_object(m) for m in visible_models(caller, channels)],
    }


def retrieve_model(caller: Caller, channels: ChannelCache, model: str) -> dict[str, Any]:
    if model not in visible_models(caller, channels):
        raise NotFound(f"The model '{model}' does not exist", param="model", code="model_not_found")
    return model_object(model)


def _money(quota: float, options: Options) -> float:
    if options.get(DISPLAY_IN_CURRENCY_ENABLED):
        return quota / (options.get(QUOTA_PER_UNIT) or 1)
    return quota


def billing_subscription(caller: Caller, balances: LeaseBalanceStore, options: Options) -> dict[str, Any]:
    token = caller.token
    if options.get(DISPLAY_TOKEN_STAT_ENABLED):
        if token.unlimited:
            amount: float = UNLIMITED_USD
        else:
            remaining = balances.estimate(ACCOUNT_TOKEN, token.id, token.remain_quota)
            amount = _money(remaining, options)
    else:
        amount = _money(balances.estimate(ACCOUNT_USER, caller.user.id, caller.user.quota), options)
    expires = token.expired_time if token.expired_time > 0 else 0
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": amount,
        "hard_limit_usd": amount,
        "system_hard_limit_usd": amount,
        "access_until": expires,
    }


def billing_usage(caller: Caller, used_quota: int, options: Options) -> dict[str, Any]:
    return {
        "object": "list",
        "total_usage": _money(used_quota, options) * 100,
        "generated_at": int(time.time()),
    }
