"""Talking to a channel's upstream from the management API: a test request through the provider
(as the relay would send it), its model list, and its balance.

Everything goes through the relay's pooled HTTP client, bounded by :data:`PROBE_TIMEOUT`. Upstream
text shown to the admin is masked (addresses, keys), as in the relay's logs.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from tollway.errors import BusinessError
from tollway.ops.masking import mask_sensitive
from tollway.providers.azure import AzureOpenAI
from tollway.providers.base import RelayRequest, UpstreamRequest, Usage
from tollway.providers.openai_compatible import OpenAICompatible
from tollway.providers.registry import ChannelType
from tollway.relay.channel import ChannelSnapshot
from tollway.relay.health import FailureKind, classify
from tollway.relay.upstream import UpstreamTimeout
from tollway.runtime import Runtime

PROBE_TIMEOUT = 60.0  # seconds for one upstream call, headers and body
MAX_BODY = 4 << 20  # model lists of big aggregators run to a few hundred KB
DEFAULT_TEST_MODEL = "gpt-4o-mini"
TEST_MAX_TOKENS = 10
MAX_BALANCE = 1e10  # channels.balance is NUMERIC(14, 4)
UNTESTABLE = frozenset({ChannelType.MIDJOURNEY, ChannelType.MIDJOURNEY_PLUS, ChannelType.SUNO})
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")  # OpenAI refuses max_tokens for these
_EMBEDDING_PREFIXES = ("text-embedding", "bge-", "m3e", "embed-")


class ProbeError(Exception):
    """No answer: timeout or connection failure (already masked)."""


async def call(runtime: Runtime, request: UpstreamRequest) -> tuple[int, bytes]:
    """Send one request; returns the status and (at most :data:`MAX_BODY` of) the body."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            response = await runtime.relay.upstream.send(request)
            try:
                body = await response.read_limited(MAX_BODY)
            finally:
                response.release()
    except (TimeoutError, UpstreamTimeout):
        raise ProbeError("the upstream did not answer in time") from None
    except OSError as exc:
        raise ProbeError(
            mask_sensitive(f"could not reach the upstream: {type(exc).__name__} {exc}")
        ) from None
    return response.status, body


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# ----- channel tests --------------------------------------------------------------------------


def pick_probe_model(channel: ChannelSnapshot, requested: str) -> str:
    """new-api's choice: the query's model, else the channel's test model, else its first model."""
    return requested.strip() or channel.test_model or next(iter(channel.models), "") or DEFAULT_TEST_MODEL


def probe_request(model: str) -> RelayRequest:
    """A chat "hi" capped at 10 tokens, or an embeddings request for embedding models."""
    lowered = model.lower()
    payload: dict[str, Any]
    if "embedding" in lowered or lowered.startswith(_EMBEDDING_PREFIXES):
        path, payload = "/v1/embeddings", {"model": model, "input": ["hi"]}
    else:
        limit = "max_completion_tokens" if lowered.startswith(_REASONING_PREFIXES) else "max_tokens"
        path = "/v1/chat/completions"
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], limit: TEST_MAX_TOKENS}
    body = json.dumps(payload).encode()
    return RelayRequest("POST", path, "", body, payload, "application/json", model)


@dataclass(frozen=True)
class ProbeOutcome:
    success: bool
    message: str
    model: str
    elapsed_ms: int = 0
    sent: bool = False  # a request reached (or tried to reach) the upstream
    kind: FailureKind = FailureKind.NONE  # how a failure counts for channel health
    usage: Usage | None = None


async def probe_channel(runtime: Runtime, channel: ChannelSnapshot, requested_model: str) -> ProbeOutcome:
    """One real request through the channel's provider with its first key."""
    model = pick_probe_model(channel, requested_model)
    if channel.type in UNTESTABLE:
        return ProbeOutcome(False, f"channels of type {channel.type} cannot be tested", model)
    provider = runtime.relay.engine.providers.get(channel.type)
    if provider is None:
        return ProbeOutcome(False, f"Tollway does not speak the upstream of type {channel.type} yet", model)
    if not channel.keys:
        return ProbeOutcome(False, "the channel has no key", model)
    upstream = provider.build_request(channel, channel.keys[0], probe_request(model))
    started = time.monotonic()
    try:
        status, body = await call(runtime, upstream)
    except ProbeError as exc:
        elapsed = int((time.monotonic() - started) * 1000)
        return ProbeOutcome(False, str(exc), model, elapsed, True, FailureKind.SOFT)
    elapsed = int((time.monotonic() - started) * 1000)
    data = _json(body)
    if 200 <= status < 300 and isinstance(data, dict) and "error" not in data:
        return ProbeOutcome(True, "", model, elapsed, True, usage=provider.usage_from_response(data))
    if 200 <= status < 300:
        status = 500  # a 2xx that is not an answer counts as an upstream fault
    failure = provider.parse_error(status, body)
    kind = classify(
        failure,
        status=status,
        timed_out=False,
        connection_error=False,
        channel_type=channel.type,
        keywords=runtime.relay.health.keywords(),
    )
    message = mask_sensitive(f"status {status}: {failure.message}")
    return ProbeOutcome(False, message, model, elapsed, True, kind)


# ----- model lists and balances ---------------------------------------------------------------


def endpoint(base: str, path: str) -> str:
    """``base`` + ``path``; a base URL pasted with ``/v1`` does not double it."""
    base = base.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        path = path[3:]
    return base + path


def openai_access(runtime: Runtime, channel: ChannelSnapshot) -> tuple[dict[str, str], str]:
    """Auth headers and base URL for an OpenAI-style upstream, or a refusal for other dialects."""
    provider = runtime.relay.engine.providers.get(channel.type)
    if not isinstance(provider, OpenAICompatible) or isinstance(provider, AzureOpenAI):
        raise BusinessError(f"not supported for channels of type {channel.type}")
    base = channel.base_url or provider.default_base_url
    if not base:
        raise BusinessError("the channel has no base URL")
    return provider.auth_headers(channel, next(iter(channel.keys), "")), base


async def upstream_models(runtime: Runtime, channel: ChannelSnapshot) -> list[str]:
    """The ids of ``GET <base_url>/v1/models``."""
    headers, base = openai_access(runtime, channel)
    try:
        status, body = await call(
            runtime, UpstreamRequest("GET", endpoint(base, "/v1/models"), headers, None)
        )
    except ProbeError as exc:
        raise BusinessError(str(exc)) from None
    data = _json(body)
    if status != 200:
        failure = OpenAICompatible().parse_error(status, body)
        raise BusinessError(mask_sensitive(f"the upstream answered {status}: {failure.message}"))
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise BusinessError("the upstream's model list is not in OpenAI's format")
    ids = (item.get("id") for item in items if isinstance(item, dict))
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


async def _get_json(runtime: Runtime, url: str, headers: dict[str, str]) -> Any:
    """The JSON of a 200 answer; None for anything else (the caller tries the next way)."""
    try:
        status, body = await call(runtime, UpstreamRequest("GET", url, headers, None))
    except ProbeError:
        return None
    return _json(body) if status == 200 else None


def _credits_url(base: str) -> str:
    base = base.rstrip("/").removesuffix("/v1")
    return base + ("/v1/credits" if base.endswith("/api") else "/api/v1/credits")


async def _openai_billing(runtime: Runtime, base: str, headers: dict[str, str]) -> float | None:
    """OpenAI's legacy billing: ``hard_limit_usd`` minus the usage (in cents) of the period."""
    subscription = await _get_json(runtime, endpoint(base, "/v1/dashboard/billing/subscription"), headers)
    limit = _number(subscription.get("hard_limit_usd")) if isinstance(subscription, dict) else None
    if limit is None:
        return None
    assert isinstance(subscription, dict)
    today = date.today()
    start = today.replace(day=1) if subscription.get("has_payment_method") else today - timedelta(days=100)
    path = f"/v1/dashboard/billing/usage?start_date={start.isoformat()}&end_date={today.isoformat()}"
    usage = await _get_json(runtime, endpoint(base, path), headers)
    total = _number(usage.get("total_usage")) if isinstance(usage, dict) else None
    return None if total is None else limit - total / 100


async def _openrouter_credits(runtime: Runtime, base: str, headers: dict[str, str]) -> float | None:
    answer = await _get_json(runtime, _credits_url(base), headers)
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        return None
    credits, used = _number(data.get("total_credits")), _number(data.get("total_usage"))
    return None if credits is None or used is None else credits - used


async def upstream_balance(runtime: Runtime, channel: ChannelSnapshot) -> float:
    """The balance in USD: OpenAI's billing endpoints first, then OpenRouter's credits."""
    headers, base = openai_access(runtime, channel)
    for way in (_openai_billing, _openrouter_credits):
        balance = await way(runtime, base, headers)
        if balance is not None:
            if abs(balance) >= MAX_BALANCE:
                raise BusinessError(f"the upstream reported an implausible balance ({balance:g} USD)")
            return round(balance, 4)
    raise BusinessError(
        "this upstream reports no balance: it answers neither OpenAI's /v1/dashboard/billing "
        "endpoints nor OpenRouter's /api/v1/credits"
    )
