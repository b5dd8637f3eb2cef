"""What one relay request became: its cost, its log row (consume or error) and its charge."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollway.billing.pricing import Price, text_quota
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR
from tollway.errors import TollwayError
from tollway.ops.masking import mask_sensitive
from tollway.providers.base import RelayRequest, Usage
from tollway.relay.auth import Caller
from tollway.relay.channel import ChannelSnapshot
from tollway.relay.incoming import Incoming
from tollway.relay.requests import PromptTokens
from tollway.relay.tokenizer import CompletionCounter
from tollway.usage.records import Charge, LogEntry


@dataclass(slots=True)
class Outcome:
    incoming: Incoming
    caller: Caller
    request: RelayRequest
    prompt: PromptTokens  # counted only if asked for: see PromptTokens
    started: float
    price: Price | None = None
    tried: list[int] = field(default_factory=list)
    first_byte: float | None = None
    upstream_model: str = ""
    route: str = ""  # the RouteSpec's name, for metrics

    @property
    def prompt_tokens(self) -> int:
        return self.prompt()

    def _base_entry(self, log_type: int) -> LogEntry:
        caller = self.caller
        return LogEntry(
            user_id=caller.user.id,
            created_at=int(time.time()),
            type=log_type,
            username=caller.user.username,
            token_name=caller.token.name,
            model_name=self.request.model,
            token_id=caller.token.id,
            group=caller.group,
            is_stream=self.request.stream,
            use_time=int(time.monotonic() - self.started),
            ip=self.incoming.client_ip if caller.user.record_ip else "",
            request_id=self.incoming.request_id,
        )

    def _admin_info(self) -> dict[str, Any]:
        return {"use_channel": [str(channel_id) for channel_id in self.tried]}

    def error_entry(self, error: TollwayError, channels: dict[int, ChannelSnapshot]) -> LogEntry:
        entry = self._base_entry(LOG_ERROR)
        last = channels.get(self.tried[-1]) if self.tried else None
        entry.channel_id = last.id if last else 0
        entry.content = mask_sensitive(error.message)
        entry.prompt_tokens = 0
        other: dict[str, Any] = {
            "request_path": self.incoming.path,
            "error_type": error.type,
            "error_code": error.code,
            "status_code": error.status,
            "admin_info": self._admin_info(),
        }
        if last is not None:
            other.update(channel_id=last.id, channel_name=last.name, channel_type=last.type)
        entry.other = orjson.dumps(other).decode()
        return entry


def billing_for(
    outcome: Outcome, channel: ChannelSnapshot, usage: Usage, *, stream: bool = False
) -> tuple[int, LogEntry, Charge]:
    """The cost of an answered request, its consume log row and its charge."""
    price = outcome.price
    assert price is not None
    empty = usage.prompt_tokens + usage.completion_tokens == 0 and price.model_price is None
    cost = (
        0 if empty else text_quota(price, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    )
    entry = outcome._base_entry(LOG_CONSUME)
    entry.quota = cost
    entry.prompt_tokens = usage.prompt_tokens
    entry.completion_tokens = usage.completion_tokens
    entry.channel_id = channel.id
    entry.is_stream = stream
    if price.model_price is not None:
        entry.content = f"model price {price.model_price}, group ratio {price.group_ratio}"
    else:
        entry.content = (
            f"model ratio {price.model_ratio}, completion ratio {price.completion_ratio}, "
            f"group ratio {price.group_ratio}"
        )
    if empty:
        entry.content += " (no tokens reported: the upstream may have timed out)"
    other: dict[str, Any] = {
        "model_ratio": price.model_ratio,
        "group_ratio": price.group_ratio,
        "completion_ratio": price.completion_ratio,
        "model_price": price.model_price if price.model_price is not None else -1,
        "cache_tokens": usage.cached_tokens,
        "cache_ratio": price.cache_ratio,
        "frt": int((outcome.first_byte - outcome.started) * 1000) if outcome.first_byte else -1,
        "request_path": outcome.incoming.path,
        "admin_info": outcome._admin_info(),
    }
    if usage.reasoning_tokens:
        other["reasoning_tokens"] = usage.reasoning_tokens
    if outcome.upstream_model and outcome.upstream_model != outcome.request.model:
        other["is_model_mapped"] = True
        other["upstream_model_name"] = outcome.upstream_model
    entry.other = orjson.dumps(other).decode()
    charge = Charge(
        user_id=outcome.caller.user.id,
        token_id=outcome.caller.token.id,
        channel_id=channel.id,
        quota=cost,
        token_limited=not outcome.caller.token.unlimited,
    )
    return cost, entry, charge


def completion_usage(outcome: Outcome, parsed: Any) -> Usage:
    """Usage counted locally when the upstream reported none (prompt counted before the call)."""
    counter = CompletionCounter(outcome.request.model)
    if isinstance(parsed, dict):
        for choice in parsed.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                for key in ("content", "reasoning_content"):
                    value = message.get(key)
                    if isinstance(value, str):
                        counter.feed(value)
                for call in message.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        counter.add_tool_call(
                            str(function.get("name") or ""), str(function.get("arguments") or "")
                        )
            text = choice.get("text")
            if isinstance(text, str):
                counter.feed(text)
    return Usage(prompt_tokens=outcome.prompt_tokens, completion_tokens=counter.tokens)
