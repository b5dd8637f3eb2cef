"""The OpenAI dialect: OpenAI itself and every upstream that speaks its ``/v1`` API.

DeepSeek, vLLM, Ollama, OpenRouter, xAI… take the client's request as it is, so the hot path
forwards the client's bytes untouched and re-encodes JSON only when the channel must change the
body (model mapping, ``param_override``, ``stream_options``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from tollway.providers.base import RelayRequest, UpstreamFailure, UpstreamRequest, Usage
from tollway.relay.channel import ChannelSnapshot

MAX_MESSAGE_CHARS = 500  # upstream text kept in an error message (HTML pages, stack traces…)

# Never forwarded: the client's credentials, and headers the adapter sets itself.
_CREDENTIALS = {"authorization", "api-key", "x-api-key", "openai-organization"}
_OWN_HEADERS = frozenset(_CREDENTIALS | {"content-type", "content-length", "accept", "host"})


def as_count(value: object) -> int:
    """A token count from whatever an upstream sent (int, float, numeric string); 0 otherwise."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value > 0 else 0
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value > 0 else 0
    if isinstance(value, str):
        try:
            return as_count(float(value))
        except ValueError:
            return 0
    return 0


def _detail(usage: dict[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return as_count(details.get(field)) if isinstance(details, dict) else 0


def parse_usage(usage: object) -> Usage | None:
    """OpenAI's ``usage`` in any of its shapes: chat/completions, embeddings, Responses API, DeepSeek."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = as_count(usage.get("prompt_tokens"))
        completion = as_count(usage.get("completion_tokens"))
    else:  # Responses API
        prompt = as_count(usage.get("input_tokens"))
        completion = as_count(usage.get("output_tokens"))
    if not prompt and not completion:
        # Embeddings and rerank upstreams (Jina…) may report only a total: it is all input.
        prompt = as_count(usage.get("total_tokens"))
    cached = (
        _detail(usage, "prompt_tokens_details", "cached_tokens")
        or _detail(usage, "input_tokens_details", "cached_tokens")
        or as_count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
    )
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens") or _detail(
        usage, "output_tokens_details", "reasoning_tokens"
    )
    if not (prompt or completion or cached or reasoning):
        return None
    return Usage(prompt, completion, cached, reasoning)


def clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "…"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _at(data: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _fallback_message(data: dict[str, Any]) -> str | None:
    """new-api's search order for a message in a non-OpenAI error body."""
    return (
        _text(data.get("error"))
        or _text(_at(data, "error", "message"))
        or _text(data.get("message"))
        or _text(data.get("msg"))
        or _text(data.get("err"))
        or _text(data.get("error_msg"))
        or _text(_at(data, "header", "message"))
        or _text(_at(data, "response", "error", "message"))
    )


def _code(value: object) -> str | int | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return clip(str(value))


def _encode(data: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:  # integers beyond 64 bits, very deep nesting
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class OpenAICompatible:
    """Provider for upstreams that speak OpenAI's API under ``<base_url>/v1``.

    ``default_base_url`` serves channels saved without a base URL (new-api fills in the vendor's
    address per channel type). ``stream_options`` is False for upstreams that reject the field
    (Mistral answers 422); they report stream usage unasked.
    """

    __slots__ = ("default_base_url", "stream_options")

    def __init__(self, default_base_url: str = "", *, stream_options: bool = True) -> None:
        self.default_base_url = default_base_url.rstrip("/")
        self.stream_options = stream_options

    # Requests

    def build_request(self, channel: ChannelSnapshot, key: str, request: RelayRequest) -> UpstreamRequest:
        body = self.build_body(channel, request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _OWN_HEADERS}
        headers.update(self.auth_headers(channel, key))
        if body is not None:
            headers["Content-Type"] = request.content_type or "application/json"
        if request.stream:
            headers["Accept"] = "text/event-stream"
        return UpstreamRequest(request.method, self.build_url(channel, request), headers, body)

    def build_url(self, channel: ChannelSnapshot, request: RelayRequest) -> str:
        base = channel.base_url or self.default_base_url
        path = request.path
        # Operators paste ".../v1" as the base URL; the client's path carries "/v1" too.
        if base.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
            path = path[3:]
        return f"{base}{path}?{request.query}" if request.query else base + path

    def auth_headers(self, channel: ChannelSnapshot, key: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {key}"}
        if channel.openai_organization:
            headers["OpenAI-Organization"] = channel.openai_organization
        return headers

    def build_body(self, channel: ChannelSnapshot, request: RelayRequest) -> bytes | None:
        """The client's bytes, unless the channel must change the JSON (then a re-encoded copy)."""
        data = request.json
        if data is None:  # multipart, binary or bodiless: never touched
            return request.body or None
        upstream_model = channel.upstream_model(request.model)
        mapped = upstream_model != request.model
        add_usage = (
            request.ask_upstream_usage
            and request.stream
            and self.stream_options
            and _at(data, "stream_options", "include_usage") is not True
        )
        if not (mapped or add_usage or channel.param_override):
            return request.body
        out = dict(data)  # top-level copy: every change below replaces a top-level key
        if mapped:
            out["model"] = upstream_model
        if add_usage:
            options = out.get("stream_options")
            out["stream_options"] = (
                {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
            )
        if channel.param_override:  # last, as in new-api: the operator's word is final
            out.update(channel.param_override)
        return _encode(out)

    # Answers

    def usage_from_response(self, body: dict[str, Any]) -> Usage | None:
        return parse_usage(body.get("usage")) if isinstance(body, dict) else None

    def usage_from_event(self, event: dict[str, Any]) -> Usage | None:
        if not isinstance(event, dict):
            return None
        usage = event.get("usage")
        if usage is not None:  # chat/completions chunk (the last one, with include_usage)
            return parse_usage(usage)
        response = event.get("response")  # Responses API: response.completed / incomplete / failed
        return parse_usage(response.get("usage")) if isinstance(response, dict) else None

    def parse_error(self, status: int, body: bytes) -> UpstreamFailure:
        try:
            data: object = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            data = None  # HTML error page, proxy text: none of it reaches the client
        if isinstance(data, list) and data:  # Google-style bodies wrap the error in a list
            data = data[0]
        if not isinstance(data, dict):
            return _bad_status(status, None)
        error = data.get("error")
        if isinstance(error, dict) and (message := _text(error.get("message"))):
            kept = error if len(message) <= MAX_MESSAGE_CHARS else {**error, "message": clip(message)}
            param = error.get("param")
            return UpstreamFailure(
                status=status,
                message=clip(message),
                type=_text(error.get("type")) or "upstream_error",
                code=_code(error.get("code")),
                param=None if param is None else clip(str(param)),
                body=kept,
            )
        return _bad_status(status, _fallback_message(data))


def _bad_status(status: int, message: str | None) -> UpstreamFailure:
    return UpstreamFailure(
        status=status,
        message=clip(message) if message else f"bad response status code {status}",
        code="bad_response_status_code",
        param=str(status),
    )


class CustomEndpoint(OpenAICompatible):
    """new-api's "Custom" channel: the base URL is the full endpoint, ``{model}`` filled in.

    A base URL that is only an origin (no path) would be useless that way, so it gets the client's
    path like any OpenAI upstream.
    """

    __slots__ = ()

    def build_url(self, channel: ChannelSnapshot, request: RelayRequest) -> str:
        base = channel.base_url
        scheme_end = base.find("://")
        if scheme_end < 0 or "/" not in base[scheme_end + 3 :]:
            return super().build_url(channel, request)
        url = base.replace("{model}", channel.upstream_model(request.model))
        if request.query:
            url += ("&" if "?" in url else "?") + request.query
        return url
