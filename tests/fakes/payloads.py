"""OpenAI-shaped response bodies for the fake upstream (pure functions, no I/O)."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CREATED = 1_700_000_000
DEFAULT_CONTENT = "Hello from the fake upstream."
FAKE_AUDIO = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" * 64

# kind -> (status, type, code, param, message)
ERRORS: dict[str, tuple[int, str, str | None, str | None, str]] = {
    "status_500": (500, "server_error", None, None, "The server had an error while processing your request."),
    "status_429": (429, "requests", "rate_limit_exceeded", None, "Rate limit reached for requests."),
    "status_401_invalid_key": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "Incorrect API key provided: sk-fake****. You can find your API key at https://example.invalid.",
    ),
    "status_403": (
        403,
        "request_forbidden",
        "unsupported_country_region_territory",
        None,
        "Country, region, or territory not supported.",
    ),
    "status_400": (
        400,
        "invalid_request_error",
        "invalid_value",
        "messages",
        "Invalid value for 'messages'.",
    ),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        None,
        "You exceeded your current quota, please check your plan and billing details.",
    ),
}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def failure_error(kind: str) -> tuple[int, dict[str, Any]]:
    """Status and body of one of the error failure kinds."""
    status, type_, code, param, message = ERRORS[kind]
    return status, error_body(message, type_, code, param)


@dataclass
class UpstreamConfig:
    """What a healthy fake upstream answers; every field can be changed while it runs.

    ``ttft`` is the delay before the first stream chunk (after the headers) or before a whole
    non-stream answer; ``chunk_delay`` is the pause between stream chunks; ``slow_chunk_delay``
    is that pause in ``slow_stream`` mode. ``long_stream_chunks`` makes streams produce that many
    content chunks lazily (for memory tests).
    """

    content: str = DEFAULT_CONTENT
    chunks: list[str] | None = None  # stream pieces; None = ``content`` split before each space
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int | None = None  # adds usage.prompt_tokens_details.cached_tokens
    ttft: float = 0.0
    head_delay: float = 0.0  # seconds before a stream's status line and headers
    chunk_delay: float = 0.0
    slow_chunk_delay: float = 2.0
    long_stream_chunks: int | None = None
    embedding_dim: int = 8
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"])

    def pieces(self) -> Iterator[str]:
        """The content pieces of a stream, generated lazily."""
        if self.long_stream_chunks is not None:
            return ("x" for _ in range(self.long_stream_chunks))
        if self.chunks is not None:
            return iter(self.chunks)
        return (p for p in re.split(r"(?=\s)", self.content) if p)

    def usage(self) -> dict[str, Any]:
        """Chat / completions usage."""
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


def chat_completion(cfg: UpstreamConfig, model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": cfg.content, "refusal": None}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": cfg.usage(),
    }


def text_completion(cfg: UpstreamConfig, model: str) -> dict[str, Any]:
    choice = {"index": 0, "text": cfg.content, "logprobs": None, "finish_reason": "stop"}
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [choice],
        "usage": cfg.usage(),
    }


def stream_events(cfg: UpstreamConfig, model: str, *, chat: bool, usage: bool) -> Iterator[dict[str, Any]]:
    """Chunk objects of one streamed answer (chat.completion.chunk or text_completion), lazily."""
    obj, id_ = ("chat.completion.chunk", "chatcmpl-fake") if chat else ("text_completion", "cmpl-fake")

    def event(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = {"id": id_, "object": obj, "created": CREATED, "model": model, "choices": choices}
        if chat:
            body["system_fingerprint"] = "fp_fake"
        if usage:
            body["usage"] = None
        body.update(extra)
        return body

    def choice(piece: str | None, finish: str | None = None) -> list[dict[str, Any]]:
        if not chat:
            return [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}]
        delta = {} if piece is None else {"content": piece}
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    if chat:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for piece in cfg.pieces():
        yield event(choice(piece))
    yield event(choice(None, "stop"))
    if usage:
        yield event([], usage=cfg.usage())


def embeddings(cfg: UpstreamConfig, body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input", "")
    count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
    vector = [round(0.01 * (i + 1), 4) for i in range(cfg.embedding_dim)]
    value: Any = vector
    if body.get("encoding_format") == "base64":
        value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    data = [{"object": "embedding", "index": i, "embedding": value} for i in range(count)]
    usage = {"prompt_tokens": cfg.prompt_tokens, "total_tokens": cfg.prompt_tokens}
    return {"object": "list", "model": body.get("model", ""), "data": data, "usage": usage}


def moderations(body: dict[str, Any]) -> dict[str, Any]:
    inputs = body.get("input", "")
    count = len(inputs) if isinstance(inputs, list) else 1
    result = {"flagged": False, "categories": {"violence": False}, "category_scores": {"violence": 0.001}}
    return {
        "id": "modr-fake",
        "model": body.get("model", "omni-moderation-latest"),
        "results": [result] * count,
    }


def images(body: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"revised_prompt": body.get("prompt", "")}
    if body.get("response_format") == "b64_json":
        item["b64_json"] = base64.b64encode(b"\x89PNG fake").decode()
    else:
        item["url"] = "https://fake-upstream.invalid/image.png"
    return {"created": CREATED, "data": [item] * int(body.get("n") or 1)}


def rerank(cfg: UpstreamConfig, body: dict[str, Any]) -> dict[str, Any]:
    docs = body.get("documents") or []
    results = [
        {"index": i, "relevance_score": round(1.0 / (i + 1), 4), "document": {"text": str(d)}}
        for i, d in enumerate(docs)
    ][: body.get("top_n") or None]
    usage = {"prompt_tokens": cfg.prompt_tokens, "total_tokens": cfg.prompt_tokens}
    return {"id": "rerank-fake", "model": body.get("model", ""), "results": results, "usage": usage}


def response_object(cfg: UpstreamConfig, model: str) -> dict[str, Any]:
    """A minimal, completed Responses API object."""
    text = {"type": "output_text", "text": cfg.content, "annotations": []}
    message = {
        "type": "message",
        "id": "msg_fake",
        "status": "completed",
        "role": "assistant",
        "content": [text],
    }
    usage: dict[str, Any] = {
        "input_tokens": cfg.prompt_tokens,
        "output_tokens": cfg.completion_tokens,
        "total_tokens": cfg.prompt_tokens + cfg.completion_tokens,
        "input_tokens_details": {"cached_tokens": cfg.cached_tokens or 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "model": model,
        "output": [message],
        "usage": usage,
    }


def models(cfg: UpstreamConfig) -> dict[str, Any]:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fake"} for m in cfg.models]
    return {"object": "list", "data": data}
