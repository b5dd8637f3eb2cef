"""The fake OpenAI upstream used by the gateway's tests: a real server, driven over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fakes.upstream import FAILURE_KINDS, FakeUpstream, UpstreamConfig

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def client(up: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=up.base_url, timeout=5) as http:
        yield http


def sse(text: str) -> list[Any]:
    """The data of each SSE event; ``[DONE]`` stays a string."""
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


async def stream_chat(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    return await client.post(CHAT, json={**HELLO, "stream": True, **extra})


# ---------------------------------------------------------------- healthy answers
async def test_non_stream_chat_echoes_model_and_reports_usage(
    up: FakeUpstream, client: httpx.AsyncClient
) -> None:
    resp = await client.post(CHAT, json={**HELLO, "model": "my-model"})

    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "my-model"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from the fake upstream.",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


async def test_content_usage_and_cached_tokens_are_configurable(
    up: FakeUpstream, client: httpx.AsyncClient
) -> None:
    up.configure(content="Bonjour", prompt_tokens=100, completion_tokens=7, cached_tokens=64)

    body = (await client.post(CHAT, json=HELLO)).json()

    assert body["choices"][0]["message"]["content"] == "Bonjour"
    assert body["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "total_tokens": 107,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    with pytest.raises(AttributeError):
        up.configure(no_such_knob=1)


async def test_stream_without_include_usage_has_no_usage_chunk(client: httpx.AsyncClient) -> None:
    resp = await stream_chat(client)

    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["transfer-encoding"] == "chunked"
    events = sse(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        == "Hello from the fake upstream."
    )
    assert len(chunks) == 1 + 5 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


async def test_stream_with_include_usage_ends_with_a_usage_only_chunk(client: httpx.AsyncClient) -> None:
    resp = await stream_chat(client, stream_options={"include_usage": True})

    events = sse(resp.text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in events[:-2])


async def test_stream_pieces_and_long_stream(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.configure(chunks=["a", "b", "c"])
    events = sse((await stream_chat(client)).text)
    assert [e["choices"][0]["delta"].get("content") for e in events[1:-2]] == ["a", "b", "c"]

    up.long_stream(2000)
    assert not isinstance(up.config.pieces(), list)  # generated lazily
    events = sse((await stream_chat(client)).text)
    assert len(events) == 1 + 2000 + 1 + 1


async def test_ttft_and_chunk_delay(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.configure(ttft=0.2, chunk_delay=0.02)
    started = time.monotonic()
    async with client.stream("POST", CHAT, json={**HELLO, "stream": True}) as resp:
        headers_at = time.monotonic() - started
        lines = [line async for line in resp.aiter_lines() if line]
    elapsed = time.monotonic() - started

    assert headers_at < 0.15  # headers first, then the delay before the first chunk
    assert elapsed >= 0.2 + 6 * 0.02
    assert lines[-1] == "data: [DONE]"


# ---------------------------------------------------------------- failure modes
@pytest.mark.parametrize(
    ("kind", "status", "type_", "code"),
    [
        ("status_500", 500, "server_error", None),
        ("status_429", 429, "requests", "rate_limit_exceeded"),
        ("status_401_invalid_key", 401, "invalid_request_error", "invalid_api_key"),
        ("status_403", 403, "request_forbidden", "unsupported_country_region_territory"),
        ("status_400", 400, "invalid_request_error", "invalid_value"),
        ("insufficient_quota", 429, "insufficient_quota", "insufficient_quota"),
    ],
)
async def test_error_kinds_answer_the_openai_error_shape(
    up: FakeUpstream, client: httpx.AsyncClient, kind: str, status: int, type_: str, code: str | None
) -> None:
    up.fail_next(kind)

    resp = await client.post(CHAT, json=HELLO)

    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    assert error["message"]
    assert (await client.post(CHAT, json=HELLO)).status_code == 200


async def test_fail_next_counts_and_set_mode_lasts_until_reset(
    up: FakeUpstream, client: httpx.AsyncClient
) -> None:
    up.fail_next("status_500", times=2)
    up.fail_next("status_429")
    statuses = [(await client.post(CHAT, json=HELLO)).status_code for _ in range(4)]
    assert statuses == [500, 500, 429, 200]

    up.set_mode("status_403")
    up.fail_next("status_500")
    statuses = [(await client.post(CHAT, json=HELLO)).status_code for _ in range(3)]
    assert statuses == [500, 403, 403]
    up.reset()
    assert (await client.post(CHAT, json=HELLO)).status_code == 200

    with pytest.raises(ValueError, match="unknown failure kind"):
        up.fail_next("status_418")


async def test_failures_can_target_one_path(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.set_mode("status_500", path="/v1/embeddings")
    up.fail_next("status_429", path="/openai/deployments/*")

    assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 500
    assert (await client.post(CHAT, json=HELLO)).status_code == 200
    assert (await client.post("/openai/deployments/d1/chat/completions", json=HELLO)).status_code == 429
    up.set_mode(None, path="/v1/embeddings")
    assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200


async def test_respond_with_a_custom_answer(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.respond_with(418, {"error": {"message": "teapot"}}, headers={"Retry-After": "3"}, times=2)

    for _ in range(2):
        resp = await client.post(CHAT, json=HELLO)
        assert resp.status_code == 418
        assert resp.json() == {"error": {"message": "teapot"}}
        assert resp.headers["retry-after"] == "3"
    assert (await client.post(CHAT, json=HELLO)).status_code == 200


async def test_invalid_json_and_empty_200(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.fail_next("invalid_json")
    resp = await client.post(CHAT, json=HELLO)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)

    up.fail_next("empty_200", times=2)
    resp = await client.post(CHAT, json=HELLO)
    assert (resp.status_code, resp.content) == (200, b"")
    resp = await stream_chat(client)
    assert (resp.status_code, resp.content) == (200, b"")
    assert resp.headers["content-type"].startswith("text/event-stream")


async def test_no_usage_drops_usage_even_when_asked(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.set_mode("no_usage")

    assert "usage" not in (await client.post(CHAT, json=HELLO)).json()
    events = sse((await stream_chat(client, stream_options={"include_usage": True})).text)
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert "usage" not in (await client.post("/v1/responses", json={"model": "m", "input": "x"})).json()


async def test_reset_mid_stream_aborts_the_connection_without_done(
    up: FakeUpstream, client: httpx.AsyncClient
) -> None:
    up.fail_next("reset_mid_stream")
    lines: list[str] = []

    with pytest.raises(httpx.TransportError):
        async with client.stream("POST", CHAT, json={**HELLO, "stream": True}) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                lines.append(line)

    assert any(line.startswith("data: {") for line in lines)
    assert "data: [DONE]" not in lines
    assert (await client.post(CHAT, json=HELLO)).status_code == 200  # the server carries on


async def test_reset_mid_stream_cuts_a_non_stream_body(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    up.fail_next("reset_mid_stream")

    with pytest.raises(httpx.TransportError):
        await client.post(CHAT, json=HELLO)


@pytest.mark.parametrize("kind", ["hang", "hang_headers"])
async def test_hang_times_the_client_out_and_still_stops_promptly(kind: str) -> None:
    up = FakeUpstream()
    await up.start()
    try:
        up.set_mode(kind)
        async with httpx.AsyncClient(base_url=up.base_url, timeout=0.3) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(CHAT, json=HELLO)
            assert up.count(CHAT) == 1  # the request was accepted and read
    finally:
        started = time.monotonic()
        await up.stop()
    assert time.monotonic() - started < 1.0


async def test_slow_stream_stalls_between_chunks_and_stop_interrupts_it() -> None:
    async with FakeUpstream() as up, httpx.AsyncClient(base_url=up.base_url, timeout=0.3) as http:
        up.set_mode("slow_stream")  # 2 s between chunks by default
        async with http.stream("POST", CHAT, json={**HELLO, "stream": True}) as resp:
            events = (line async for line in resp.aiter_lines() if line)
            assert (await anext(events)).startswith("data: {")
            with pytest.raises(httpx.ReadTimeout):
                await anext(events)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0


async def test_stop_interrupts_a_stream_in_flight() -> None:
    up = await FakeUpstream(chunk_delay=5).start()
    async with (
        httpx.AsyncClient(base_url=up.base_url, timeout=5) as http,
        http.stream("POST", CHAT, json={**HELLO, "stream": True}) as resp,
    ):
        lines = resp.aiter_lines()
        await anext(lines)
        started = time.monotonic()
        await up.stop()
        with pytest.raises(httpx.TransportError):
            async for _ in lines:
                pass
    assert time.monotonic() - started < 1.0


# ---------------------------------------------------------------- recording and other routes
async def test_every_request_is_recorded(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    await client.post(CHAT, json=HELLO, headers={"Authorization": "Bearer sk-test", "X-Custom": "1"})
    await client.get("/v1/models")
    resp = await client.post("/no/such/route?x=1", content=b"raw")

    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert len(up.requests) == 3
    first = up.requests[0]
    assert (first.method, first.path, first.model, first.stream) == ("POST", CHAT, "gpt-4o-mini", False)
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-custom"] == "1"
    assert first.json == HELLO
    assert json.loads(first.body) == HELLO
    assert (up.last.path, up.last.query, up.last.json, up.last.body) == (
        "/no/such/route",
        {"x": "1"},
        None,
        b"raw",
    )
    assert (up.count(CHAT), up.count("/v1/*"), up.count()) == (1, 2, 3)


async def test_azure_route_records_deployment_and_api_version(
    up: FakeUpstream, client: httpx.AsyncClient
) -> None:
    resp = await client.post(
        "/openai/deployments/gpt4o-prod/chat/completions",
        params={"api-version": "2024-10-21"},
        json={"messages": HELLO["messages"]},
        headers={"api-key": "azure-key"},
    )

    assert resp.status_code == 200
    assert resp.json()["model"] == "gpt4o-prod"  # no model in the body: the deployment
    assert (up.last.deployment, up.last.api_version) == ("gpt4o-prod", "2024-10-21")
    assert up.last.headers["api-key"] == "azure-key"


async def test_other_openai_routes(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    completion = (await client.post("/v1/completions", json={"model": "m", "prompt": "hi"})).json()
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == up.config.content
    events = sse(
        (await client.post("/v1/completions", json={"model": "m", "prompt": "x", "stream": True})).text
    )
    assert events[-1] == "[DONE]" and events[0]["object"] == "text_completion"

    embeddings = (await client.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]})).json()
    assert [d["index"] for d in embeddings["data"]] == [0, 1]
    assert embeddings["usage"] == {"prompt_tokens": 10, "total_tokens": 10}
    b64 = (await client.post("/v1/embeddings", json={"input": "a", "encoding_format": "base64"})).json()
    assert len(base64.b64decode(b64["data"][0]["embedding"])) == 4 * up.config.embedding_dim

    moderation = (await client.post("/v1/moderations", json={"input": ["a", "b"]})).json()
    assert [r["flagged"] for r in moderation["results"]] == [False, False]
    images = (await client.post("/v1/images/generations", json={"prompt": "cat", "n": 2})).json()
    assert len(images["data"]) == 2 and images["data"][0]["url"]
    rerank = (
        await client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"], "top_n": 2})
    ).json()
    assert [r["index"] for r in rerank["results"]] == [0, 1]
    response = (await client.post("/v1/responses", json={"model": "gpt-4.1", "input": "hi"})).json()
    assert (response["object"], response["model"], response["status"]) == ("response", "gpt-4.1", "completed")
    assert response["usage"]["input_tokens"] == 10
    assert response["usage"]["output_tokens"] == 5
    assert response["usage"]["total_tokens"] == 15
    assert response["output"][0]["content"][0]["text"] == up.config.content
    models = (await client.get("/v1/models")).json()
    assert "gpt-4o-mini" in [m["id"] for m in models["data"]]


async def test_audio_routes(up: FakeUpstream, client: httpx.AsyncClient) -> None:
    speech = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert speech.headers["content-type"] == "audio/mpeg"
    assert speech.content.startswith(b"ID3")

    files = {"file": ("a.mp3", b"\x00\x01audio", "audio/mpeg")}
    for route in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        resp = await client.post(route, data={"model": "whisper-1"}, files=files)
        assert resp.json() == {"text": up.config.content}
        assert up.last.form == {"model": "whisper-1", "file": b"\x00\x01audio"}
        assert up.last.json is None and b"whisper-1" in up.last.body
    resp = await client.post(
        "/v1/audio/transcriptions", data={"model": "whisper-1", "response_format": "text"}, files=files
    )
    assert resp.text == up.config.content


# ---------------------------------------------------------------- thread mode and several instances
def test_thread_mode_serves_sync_clients_and_stops_cleanly() -> None:
    with FakeUpstream.in_thread(content="from a thread") as up:
        with httpx.Client(base_url=up.base_url, timeout=5) as http:
            body = http.post(CHAT, json=HELLO).json()
            assert body["choices"][0]["message"]["content"] == "from a thread"
            up.fail_next("status_429")
            assert http.post(CHAT, json=HELLO).status_code == 429
            events = sse(http.post(CHAT, json={**HELLO, "stream": True}).text)
            assert events[-1] == "[DONE]"
        assert up.count(CHAT) == 3
        thread = up._thread
        base_url = up.base_url
    assert thread is not None and not thread.is_alive()
    with httpx.Client(timeout=1) as http, pytest.raises(httpx.ConnectError):
        http.get(base_url + "/v1/models")


def test_thread_mode_with_the_openai_sdk() -> None:
    openai = pytest.importorskip("openai")
    with FakeUpstream.in_thread(UpstreamConfig(chunks=["Hi", "!"])) as up:
        with openai.OpenAI(base_url=up.api_base, api_key="sk-test", max_retries=0) as sdk:
            chat = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO["messages"])
            assert chat.usage is not None and chat.usage.total_tokens == 15
            stream = sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=HELLO["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi!"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        assert up.last.headers["authorization"] == "Bearer sk-test"


async def test_several_instances_run_side_by_side() -> None:
    async with FakeUpstream() as a, FakeUpstream(content="from b") as b, FakeUpstream() as c:
        assert len({a.port, b.port, c.port}) == 3
        a.set_mode("status_500")
        async with httpx.AsyncClient(timeout=5) as http:
            answers = await asyncio.gather(*(http.post(u.base_url + CHAT, json=HELLO) for u in (a, b, c)))
        assert [r.status_code for r in answers] == [500, 200, 200]
        assert answers[1].json()["choices"][0]["message"]["content"] == "from b"
        assert (a.count(), b.count(), c.count()) == (1, 1, 1)


def test_failure_kind_names() -> None:
    assert {
        "status_500",
        "status_429",
        "status_401_invalid_key",
        "status_403",
        "status_400",
        "insufficient_quota",
        "hang",
        "hang_headers",
        "reset_mid_stream",
        "invalid_json",
        "no_usage",
        "slow_stream",
        "empty_200",
    } == FAILURE_KINDS
