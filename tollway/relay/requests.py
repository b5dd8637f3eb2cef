"""What each relay route accepts: shallow validation of the client's body, the model it names, and
its prompt tokens, counted only if asked for. Unknown fields pass through untouched."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tollway.errors import InvalidRequest
from tollway.providers.base import RelayRequest
from tollway.relay import tokenizer

PromptCounter = Callable[[str, dict[str, Any]], int]
_MULTIPART_MODEL = re.compile(rb'name="model"\r\n(?:[^\r\n]*\r\n)*?\r\n([^\r\n]*)\r\n')


def _chat(model: str, body: dict[str, Any]) -> int:
    return tokenizer.count_chat_prompt(model, body)


def _completion(model: str, body: dict[str, Any]) -> int:
    return tokenizer.count_completion_prompt(model, body.get("prompt"))


def _embedding(model: str, body: dict[str, Any]) -> int:
    return tokenizer.count_embedding_input(model, body.get("input"))


def _text_field(field: str) -> PromptCounter:
    def count(model: str, body: dict[str, Any]) -> int:
        value = body.get(field)
        return tokenizer.count_text(model, value) if isinstance(value, str) else 0

    return count


def _characters(field: str) -> PromptCounter:
    """Text-to-speech is billed by input characters, as new-api does."""

    def count(_model: str, body: dict[str, Any]) -> int:
        value = body.get(field)
        return len(value) if isinstance(value, str) else 0

    return count


def _rerank(model: str, body: dict[str, Any]) -> int:
    total = tokenizer.count_embedding_input(model, body.get("query"))
    documents = body.get("documents")
    if isinstance(documents, list):
        for document in documents:
            text = document.get("text") if isinstance(document, dict) else document
            total += tokenizer.count_embedding_input(model, text)
    return total


def _responses(model: str, body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, str):
        return tokenizer.count_text(model, value)
    if isinstance(value, list):
        messages = [item for item in value if isinstance(item, dict)]
        return tokenizer.count_chat_prompt(model, {"messages": messages})
    return 0


def _nothing(_model: str, _body: dict[str, Any]) -> int:
    return 0


class PromptTokens:
    """A request's prompt tokens, counted on first use and remembered.

    Most requests never ask: the upstream's usage is billed, and the reservation needs the prompt
    only when the client sets ``max_tokens``. Counting is the costliest step of a request's own
    work for long prompts, and the tokenizer's tables are loaded only by the first count.
    """

    __slots__ = ("_body", "_count", "_model", "_tokens", "upper_bound")

    def __init__(
        self, count: PromptCounter, model: str, body: dict[str, Any], upper_bound: int | None = None
    ) -> None:
        self._count: PromptCounter | None = count
        self._model = model
        self._body: dict[str, Any] | None = body
        self._tokens = 0
        self.upper_bound = upper_bound  # at least the count, when known without counting

    @classmethod
    def known(cls, tokens: int) -> PromptTokens:
        """A count known without counting (multipart bodies: 0)."""
        prompt = cls(_nothing, "", {})
        prompt._count, prompt._body, prompt._tokens, prompt.upper_bound = None, None, tokens, tokens
        return prompt

    @property
    def counted(self) -> bool:
        return self._count is None

    @property
    def model(self) -> str:
        return self._model

    def __call__(self) -> int:
        if self._count is not None and self._body is not None:
            self._tokens = self._count(self._model, self._body)
            self._count = self._body = None
        return self._tokens


@dataclass(frozen=True)
class RouteSpec:
    """One relay route: how its body is read and how its prompt is counted."""

    name: str
    upstream_path: str
    count_prompt: PromptCounter
    requires_messages: bool = False
    default_model: str | None = None
    multipart: bool = False


CHAT = RouteSpec("chat", "/v1/chat/completions", _chat, requires_messages=True)
COMPLETIONS = RouteSpec("completions", "/v1/completions", _completion)
EMBEDDINGS = RouteSpec("embeddings", "/v1/embeddings", _embedding)
MODERATIONS = RouteSpec("moderations", "/v1/moderations", _embedding, default_model="text-moderation-latest")
IMAGES = RouteSpec("images", "/v1/images/generations", _text_field("prompt"), default_model="dall-e-2")
IMAGE_EDITS = RouteSpec("image_edits", "/v1/images/edits", _nothing, default_model="dall-e-2", multipart=True)
SPEECH = RouteSpec("speech", "/v1/audio/speech", _characters("input"), default_model="tts-1")
TRANSCRIPTIONS = RouteSpec(
    "transcriptions", "/v1/audio/transcriptions", _nothing, default_model="whisper-1", multipart=True
)
TRANSLATIONS = RouteSpec(
    "translations", "/v1/audio/translations", _nothing, default_model="whisper-1", multipart=True
)
RERANK = RouteSpec("rerank", "/v1/rerank", _rerank)
RESPONSES = RouteSpec("responses", "/v1/responses", _responses)


def parse_relay_request(
    spec: RouteSpec,
    *,
    method: str,
    body: bytes,
    content_type: str,
    query: str,
    path_model: str | None = None,
    ask_upstream_usage: bool = True,
) -> tuple[RelayRequest, PromptTokens]:
    """Validate the client's body and build the :class:`RelayRequest` and its (lazy) prompt count.

    Raises :class:`InvalidRequest` (400) for a body the upstream must never see: not a JSON object,
    no non-empty string ``model`` (where the route has no default), or chat ``messages`` that is
    not a non-empty array.
    """
    if spec.multipart:
        form_model = _multipart_model(body) or spec.default_model or ""
        request = RelayRequest(method, spec.upstream_path, query, body, None, content_type, form_model)
        return request, PromptTokens.known(0)
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not valid JSON", code="invalid_request_body") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("the request body must be a JSON object", code="invalid_request_body")
    body_out = body
    model = parsed.get("model")
    if path_model and not model:
        parsed["model"] = model = path_model
        body_out = orjson.dumps(parsed)
    elif not model and spec.default_model and "model" not in parsed:
        parsed["model"] = model = spec.default_model
        body_out = orjson.dumps(parsed)
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model is required: a non-empty string", param="model", code="invalid_model")
    if spec.requires_messages:
        messages = parsed.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest(
                "messages must be a non-empty array", param="messages", code="invalid_messages"
            )
    stream = parsed.get("stream") is True
    options = parsed.get("stream_options")
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    request = RelayRequest(
        method=method,
        path=spec.upstream_path,
        query=query,
        body=body_out,
        json=parsed,
        content_type="application/json",
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        ask_upstream_usage=stream and ask_upstream_usage and spec in (CHAT, COMPLETIONS),
    )
    return request, PromptTokens(spec.count_prompt, model, parsed, prompt_upper_bound(body))


def prompt_upper_bound(body: bytes) -> int | None:
    """More tokens than any route counts in ``body``, found without counting; None when unsure.

    A token is at least one byte of text; the counted text (tools re-serialized as JSON included)
    is at most three times the body's bytes; per-message overheads are fewer than the JSON
    punctuation around each message; a media part costs at most
    :data:`~tollway.relay.tokenizer.MAX_PART_TOKENS` and has a ``"type"`` key. A body with
    ``\\u`` escapes could spell that key otherwise, so it gets no bound.
    """
    if b"\\u" in body:
        return None
    return 3 * len(body) + 100 + tokenizer.MAX_PART_TOKENS * body.count(b'"type"')


def requested_max_tokens(request: RelayRequest) -> int | None:
    """``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` when the client set one."""
    if request.json is None:
        return None
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = request.json.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _multipart_model(body: bytes) -> str | None:
    match = _MULTIPART_MODEL.search(body[:65536])
    return match.group(1).decode(errors="replace").strip() if match else None
