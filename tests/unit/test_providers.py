"""Provider adapters: URLs, headers, bodies, usage and errors, against recorded-looking payloads."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from tollway.providers.azure import AzureOpenAI
from tollway.providers.base import Provider, RelayRequest, Usage
from tollway.providers.openai_compatible import CustomEndpoint, OpenAICompatible
from tollway.providers.registry import ChannelType, ProviderRegistry
from tollway.relay.channel import ChannelSnapshot

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def channel(**kw: Any) -> ChannelSnapshot:
    fields: dict[str, Any] = {"id": 1, "type": 1, "name": "c", "base_url": "https://api.example.com"}
    fields["keys"] = ("sk-upstream",)
    return ChannelSnapshot(**(fields | kw))


def request(payload: dict[str, Any] | None = None, **kw: Any) -> RelayRequest:
    data = CHAT if payload is None else payload
    body = json.dumps(data).encode()  # the client's own spacing, unlike orjson's
    fields: dict[str, Any] = {"method": "POST", "path": "/v1/chat/completions", "query": ""}
    fields |= {"body": body, "json": data, "content_type": "application/json", "model": data.get("model", "")}
    return RelayRequest(**(fields | kw))


def sent_json(body: bytes | None) -> Any:
    assert body is not None
    return orjson.loads(body)


oai = OpenAICompatible()


# URLs


@pytest.mark.parametrize(
    ("base_url", "path", "query", "url"),
    [
        (
            "https://api.example.com",
            "/v1/chat/completions",
            "",
            "https://api.example.com/v1/chat/completions",
        ),
        (
            "https://api.example.com/v1",
            "/v1/chat/completions",
            "",
            "https://api.example.com/v1/chat/completions",
        ),
        ("https://openrouter.ai/api", "/v1/embeddings", "", "https://openrouter.ai/api/v1/embeddings"),
        ("https://h/v1", "/v1/models", "limit=5&x=1", "https://h/v1/models?limit=5&x=1"),
        ("https://h/v1", "/v1beta/models", "", "https://h/v1/v1beta/models"),  # only a whole /v1 segment
        ("http://vllm:8000", "/v1/responses", "a=b", "http://vllm:8000/v1/responses?a=b"),
    ],
)
def test_url(base_url: str, path: str, query: str, url: str) -> None:
    req = request(path=path, query=query)
    assert oai.build_request(channel(base_url=base_url), "k", req).url == url


def test_empty_base_url_uses_the_types_default() -> None:
    req = request()
    assert OpenAICompatible("https://api.openai.com").build_request(channel(base_url=""), "k", req).url == (
        "https://api.openai.com/v1/chat/completions"
    )


def test_custom_channel_base_url_is_the_full_endpoint() -> None:
    custom = CustomEndpoint()
    ch = channel(base_url="https://gw.example.com/deploy/{model}/chat", model_mapping={"gpt-4o-mini": "m2"})
    assert (
        custom.build_request(ch, "k", request(query="x=1")).url == "https://gw.example.com/deploy/m2/chat?x=1"
    )
    origin_only = channel(base_url="https://gw.example.com")
    assert (
        custom.build_request(origin_only, "k", request()).url == "https://gw.example.com/v1/chat/completions"
    )


# Headers


def test_headers() -> None:
    req = request(
        stream=True,
        headers={
            "authorization": "Bearer sk-client",
            "OpenAI-Beta": "assistants=v2",
            "X-Api-Key": "sk-client",
        },
    )
    headers = oai.build_request(channel(openai_organization="org-1"), "sk-upstream", req).headers
    assert headers == {
        "OpenAI-Beta": "assistants=v2",
        "Authorization": "Bearer sk-upstream",
        "OpenAI-Organization": "org-1",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
    }


def test_headers_without_org_stream_or_body() -> None:
    req = RelayRequest("GET", "/v1/models", "", b"", None, "", "")
    up = oai.build_request(channel(), "sk-upstream", req)
    assert up.headers == {"Authorization": "Bearer sk-upstream"}
    assert up.body is None


# Bodies


def test_body_passes_through_as_the_same_bytes() -> None:
    req = request(stream=True, ask_upstream_usage=False)
    assert oai.build_request(channel(model_mapping={"other": "x"}), "k", req).body is req.body


def test_mapping_reencodes_without_touching_the_callers_dict() -> None:
    payload = copy.deepcopy(CHAT)
    req = request(payload)
    body = oai.build_request(channel(model_mapping={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}), "k", req).body
    assert sent_json(body) == {**CHAT, "model": "gpt-4o-mini-2024-07-18"}
    assert payload == CHAT
    assert req.json is payload


def test_param_override_overwrites_top_level_keys_last() -> None:
    ch = channel(param_override={"temperature": 0.2, "model": "forced"}, model_mapping={"gpt-4o-mini": "m"})
    req = request({**CHAT, "temperature": 1})
    assert sent_json(oai.build_request(ch, "k", req).body) == {**CHAT, "temperature": 0.2, "model": "forced"}


def test_stream_options_injected_preserving_other_keys() -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": True}}
    req = request(copy.deepcopy(payload), stream=True, ask_upstream_usage=True)
    sent = sent_json(oai.build_request(channel(), "k", req).body)
    assert sent["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert req.json == payload


def test_stream_options_added_when_absent() -> None:
    req = request({**CHAT, "stream": True}, stream=True, ask_upstream_usage=True)
    assert sent_json(oai.build_request(channel(), "k", req).body)["stream_options"] == {"include_usage": True}


def test_stream_options_already_set_is_not_reencoded() -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    req = request(payload, stream=True, ask_upstream_usage=True)
    assert oai.build_request(channel(), "k", req).body is req.body


@pytest.mark.parametrize(("stream", "ask"), [(False, True), (True, False)])
def test_stream_options_only_for_streams_that_ask(stream: bool, ask: bool) -> None:
    req = request(stream=stream, ask_upstream_usage=ask)
    assert oai.build_request(channel(), "k", req).body is req.body


def test_stream_options_never_sent_to_upstreams_that_reject_it() -> None:
    mistral = ProviderRegistry("2024-12-01-preview").get(ChannelType.MISTRAL)
    assert mistral is not None
    req = request({**CHAT, "stream": True}, stream=True, ask_upstream_usage=True)
    assert mistral.build_request(channel(), "k", req).body is req.body


def test_multipart_passes_through_untouched() -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--b--\r\n'
    req = RelayRequest(
        "POST", "/v1/audio/transcriptions", "", body, None, "multipart/form-data; boundary=b", "whisper-1"
    )
    ch = channel(model_mapping={"whisper-1": "whisper-large"}, param_override={"x": 1})
    up = oai.build_request(ch, "k", req)
    assert up.body is body
    assert up.headers["Content-Type"] == "multipart/form-data; boundary=b"


# Azure


azure = AzureOpenAI("2024-10-21")


@pytest.mark.parametrize(
    ("path", "query", "other", "url"),
    [
        ("/v1/chat/completions", "", "", "/openai/deployments/gpt-35-turbo/chat/completions?api-version=2024-10-21"),
        ("/v1/embeddings", "", "2025-01-01", "/openai/deployments/gpt-35-turbo/embeddings?api-version=2025-01-01"),
        ("/v1/audio/speech", "a=1&api-version=x", "", "/openai/deployments/gpt-35-turbo/audio/speech?api-version=2024-10-21&a=1"),
        ("/v1/responses", "", "preview", "/openai/v1/responses?api-version=preview"),
    ],
)  # fmt: skip
def test_azure_url(path: str, query: str, other: str, url: str) -> None:
    ch = channel(type=3, base_url="https://res.openai.azure.com", other=other)
    req = request({"model": "gpt-3.5-turbo"}, path=path, query=query)
    assert azure.build_request(ch, "k", req).url == "https://res.openai.azure.com" + url


def test_azure_deployment_uses_the_mapped_model_and_key_header() -> None:
    ch = channel(type=3, model_mapping={"gpt-4o": "gpt-4.1"}, openai_organization="org-1")
    req = request({"model": "gpt-4o"}, headers={"Authorization": "Bearer sk-client"})
    up = azure.build_request(ch, "azure-key", req)
    assert "/openai/deployments/gpt-41/chat/completions?" in up.url
    assert up.headers == {"api-key": "azure-key", "Content-Type": "application/json"}
    assert sent_json(up.body)["model"] == "gpt-4.1"


def test_azure_default_version() -> None:
    assert (
        AzureOpenAI().build_request(channel(), "k", request()).url.endswith("?api-version=2024-12-01-preview")
    )


# Usage


def test_usage_chat() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0},
        },
    }
    assert oai.usage_from_response(body) == Usage(1200, 300, 1024, 192)


def test_usage_deepseek_cache_hits() -> None:
    usage = {
        "prompt_tokens": 80,
        "completion_tokens": 20,
        "total_tokens": 100,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 16,
    }
    assert oai.usage_from_response({"usage": usage}) == Usage(80, 20, 64, 0)


def test_usage_responses_api() -> None:
    usage = {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 256},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 40},
        "total_tokens": 380,
    }
    assert oai.usage_from_response({"object": "response", "usage": usage}) == Usage(328, 52, 256, 40)


def test_usage_embeddings() -> None:
    body = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert oai.usage_from_response(body) == Usage(8, 0)
    assert oai.usage_from_response({"usage": {"total_tokens": 12}}) == Usage(12, 0)  # Jina-style rerank


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"usage": None},
        {"usage": "12"},
        {"usage": []},
        {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}},
        {"usage": {"prompt_tokens": None, "completion_tokens": "n/a", "prompt_tokens_details": None}},
        "not a dict",
    ],
)
def test_usage_absent_or_odd(body: Any) -> None:
    assert oai.usage_from_response(body) is None


def test_usage_coerces_odd_numbers() -> None:
    usage = {"prompt_tokens": "10", "completion_tokens": 5.0, "prompt_tokens_details": {"cached_tokens": -3}}
    assert oai.usage_from_response({"usage": usage}) == Usage(10, 5, 0, 0)
    assert oai.usage_from_response({"usage": {"prompt_tokens": True, "completion_tokens": 2}}) == Usage(0, 2)


def test_usage_from_stream_events() -> None:
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}], "usage": None}
    final = {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    done = {
        "type": "response.completed",
        "response": {"id": "resp_1", "status": "completed", "usage": {"input_tokens": 7, "output_tokens": 3}},
    }
    created = {"type": "response.created", "response": {"id": "resp_1", "usage": None}}
    assert oai.usage_from_event(chunk) is None
    assert oai.usage_from_event(final) == Usage(9, 2)
    assert oai.usage_from_event(done) == Usage(7, 3)
    assert oai.usage_from_event(created) is None
    assert oai.usage_from_event({"type": "response.output_text.delta", "delta": "x"}) is None


# Errors


def test_error_openai_body() -> None:
    error = {
        "message": "Incorrect API key provided: sk-abc***.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    failure = oai.parse_error(401, orjson.dumps({"error": error}))
    assert (failure.status, failure.message, failure.type) == (401, error["message"], "invalid_request_error")
    assert (failure.code, failure.param, failure.body) == ("invalid_api_key", None, error)


def test_error_openai_body_without_type() -> None:
    failure = oai.parse_error(429, b'{"error": {"message": "Rate limit reached", "code": 429}}')
    assert (failure.type, failure.code, failure.message) == ("upstream_error", 429, "Rate limit reached")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model overloaded"}', "model overloaded"),
        (b'{"error": {"message": ""}, "message": "fallback"}', "fallback"),
        (b'{"message": "Invalid token", "code": 40001}', "Invalid token"),
        (b'{"msg": "quota exceeded"}', "quota exceeded"),
        (b'{"error_msg": "Open api qps request limit reached", "error_code": 18}', "Open api qps request limit reached"),
        (b'{"header": {"code": 10013, "message": "input content audit failed"}}', "input content audit failed"),
        (b'{"response": {"error": {"message": "nested"}}}', "nested"),
        (b'{"detail": "Not Found"}', "bad response status code 502"),
        (b"<html><body><h1>502 Bad Gateway</h1>" + b"x" * 5000 + b"</body></html>", "bad response status code 502"),
        (b"", "bad response status code 502"),
        (b"null", "bad response status code 502"),
    ],
)  # fmt: skip
def test_error_fallbacks(body: bytes, message: str) -> None:
    failure = oai.parse_error(502, body)
    assert failure.message == message
    assert (failure.type, failure.code, failure.param, failure.status) == (
        "upstream_error",
        "bad_response_status_code",
        "502",
        502,
    )


def test_error_from_a_list_wrapped_openai_body_keeps_it() -> None:
    body = b'[{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]'
    failure = oai.parse_error(503, body)
    assert (failure.message, failure.type, failure.code) == (
        "The model is overloaded.",
        "upstream_error",
        503,
    )
    assert failure.body == {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}


def test_error_message_is_clipped() -> None:
    failure = oai.parse_error(500, orjson.dumps({"error": {"message": "boom " * 1000}}))
    assert len(failure.message) <= 501
    assert failure.body is not None
    assert len(failure.body["message"]) <= 501
    assert len(oai.parse_error(500, orjson.dumps({"msg": "y" * 9000})).message) <= 501


# Registry


def test_registry() -> None:
    registry = ProviderRegistry("2025-01-01")
    openai = registry.get(ChannelType.OPENAI)
    azure_provider = registry.get(3)
    assert isinstance(openai, OpenAICompatible)
    assert isinstance(azure_provider, AzureOpenAI)
    assert azure_provider.default_api_version == "2025-01-01"
    assert isinstance(registry.get(8), CustomEndpoint)
    for t in (4, 20, 25, 40, 42, 43, 47, 48):
        assert type(registry.get(t)) is OpenAICompatible
    for t in (2, 5, 11, 14, 15, 16, 17, 18, 23, 24, 33, 34, 36, 41):
        assert registry.get(t) is None, t
    assert isinstance(registry.get(999), OpenAICompatible)  # new-api relays unknown types as OpenAI
    assert registry.get(1) is openai  # shared, built once


def test_registry_default_base_urls() -> None:
    registry = ProviderRegistry("2025-01-01")
    no_url = channel(base_url="")
    deepseek = registry.get(ChannelType.DEEPSEEK)
    assert deepseek is not None
    assert (
        deepseek.build_request(no_url, "k", request()).url == "https://api.deepseek.com/v1/chat/completions"
    )


def test_adapters_satisfy_the_protocol() -> None:
    providers: list[Provider] = [OpenAICompatible(), AzureOpenAI(), CustomEndpoint()]
    assert all(hasattr(p, "parse_error") for p in providers)
