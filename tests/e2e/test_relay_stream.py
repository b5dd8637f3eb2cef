"""Streaming: pass-through, usage chunks, broken and abandoned streams, each charged exactly once."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_relay_basic import CHAT, balances
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user
from tollway.db.models.log import LOG_CONSUME, LOG_ERROR, Log
from tollway.relay import front

pytestmark = pytest.mark.db
STREAM = {**CHAT, "stream": True}


async def prepare(live: Live, upstream: FakeUpstream) -> tuple[int, int, str]:
    db = live.runtime.db
    user_id = await create_user(db, quota=10_000_000)
    token_id, key = await create_token(db, user_id, unlimited=False, remain_quota=5_000_000)
    await create_channel(db, upstream.base_url)
    live.refresh()
    return user_id, token_id, key


def events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


async def test_stream_passes_through_and_hides_the_usage_chunk(live: Live, upstream: FakeUpstream) -> None:
    _user_id, _token_id, key = await prepare(live, upstream)
    upstream.configure(prompt_tokens=100, completion_tokens=40)
    response = await live.client.post(
        "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response.text)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert all(chunk["choices"] for chunk in chunks)  # the usage-only chunk was hidden
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        == "Hello from the fake upstream."
    )
    assert upstream.last.json is not None and upstream.last.json["stream_options"] == {"include_usage": True}
    logs = await live.logs()
    assert [(log.type, log.prompt_tokens, log.completion_tokens, log.is_stream) for log in logs] == [
        (LOG_CONSUME, 100, 40, True)
    ]
    assert logs[0].quota == round((100 + 40 * 4) * 0.075)


async def test_stream_usage_is_forwarded_when_asked_and_synthesized_when_missing(
    live: Live, upstream: FakeUpstream
) -> None:
    _, _, key = await prepare(live, upstream)
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    response = await live.client.post(
        "/v1/chat/completions", json=asked, headers={"Authorization": f"Bearer {key}"}
    )
    last = orjson.loads(events(response.text)[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5

    upstream.set_mode("no_usage")
    response = await live.client.post(
        "/v1/chat/completions", json=asked, headers={"Authorization": f"Bearer {key}"}
    )
    synthesized = orjson.loads(events(response.text)[-2])
    assert synthesized["choices"] == []
    assert synthesized["usage"]["completion_tokens"] > 0
    logs = await live.logs()
    assert logs[-1].completion_tokens == synthesized["usage"]["completion_tokens"]
    assert logs[-1].prompt_tokens == synthesized["usage"]["prompt_tokens"] > 0


async def test_stream_broken_by_the_upstream_is_charged_for_what_was_delivered(
    live: Live, upstream: FakeUpstream
) -> None:
    user_id, token_id, key = await prepare(live, upstream)
    before = await balances(live, user_id, token_id)
    upstream.set_mode("reset_mid_stream")
    async with live.client.stream(
        "POST", "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        received = b""
        try:
            async for part in response.aiter_bytes():
                received += part
        except httpx.HTTPError:
            pass
    assert b"data: " in received and b"[DONE]" not in received
    logs = await live.logs()
    assert [log.type for log in logs] == [LOG_CONSUME]
    assert logs[0].completion_tokens > 0
    after = await balances(live, user_id, token_id)
    assert before[0] - after[0] == logs[0].quota == after[1]


async def test_abandoned_stream_is_charged_once_for_the_delivered_part(
    live: Live, upstream: FakeUpstream
) -> None:
    user_id, token_id, key = await prepare(live, upstream)
    upstream.configure(chunk_delay=0.05, chunks=[f"word{i} " for i in range(200)])
    before = await balances(live, user_id, token_id)
    async with live.client.stream(
        "POST", "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        seen = 0
        async for _ in response.aiter_lines():
            seen += 1
            if seen >= 6:
                break  # the client goes away mid-answer
    for _ in range(100):
        logs = await live.logs()
        if logs:
            break
        await asyncio.sleep(0.05)
    assert [log.type for log in logs] == [LOG_CONSUME]
    assert 0 < logs[0].completion_tokens < 200
    await asyncio.sleep(0.3)
    assert len(await live.logs()) == 1  # and only once
    after = await balances(live, user_id, token_id)
    assert before[0] - after[0] == logs[0].quota
    assert before[2] - after[2] == logs[0].quota


async def test_stream_failing_before_any_event_is_free(live: Live, upstream: FakeUpstream) -> None:
    user_id, token_id, key = await prepare(live, upstream)
    before = await balances(live, user_id, token_id)
    upstream.set_mode("empty_200")
    await live.set_option("RetryTimes", "0")
    await live.client.post("/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"})
    logs = await live.logs()
    assert [log.type for log in logs] == [LOG_ERROR]
    assert await balances(live, user_id, token_id) == before


async def leave_early(live: Live, key: str) -> list[Log]:
    """Stream with a client that gives up after 0.15 s; the logs once the request was settled
    (and a while longer, so that a second row would show)."""
    with pytest.raises(httpx.TimeoutException):
        await live.client.post(
            "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"}, timeout=0.15
        )
    for _ in range(60):
        if await live.logs():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    return await live.logs()


async def test_client_leaving_before_the_first_byte_is_free_and_logged_once(
    live: Live, upstream: FakeUpstream
) -> None:
    user_id, token_id, key = await prepare(live, upstream)
    before = await balances(live, user_id, token_id)
    upstream.configure(ttft=0.4)
    logs = await leave_early(live, key)
    assert len(logs) == 1
    assert logs[0].type in (LOG_ERROR, LOG_CONSUME)
    after = await balances(live, user_id, token_id)
    assert before[0] - after[0] == logs[0].quota


async def test_a_client_gone_before_the_upstream_answered_is_not_charged(
    live: Live, upstream: FakeUpstream
) -> None:
    """The client leaves while the upstream has not even sent its headers: when they come, the
    stream is cut at once, the reservation refunded, and the request logged once as an error."""
    user_id, token_id, key = await prepare(live, upstream)
    before = await balances(live, user_id, token_id)
    upstream.configure(head_delay=0.4)
    assert [log.type for log in await leave_early(live, key)] == [LOG_ERROR]
    assert await balances(live, user_id, token_id) == before


async def test_the_first_chunk_is_never_held_back(live: Live, upstream: FakeUpstream) -> None:
    """When the first chunk comes with the headers, both leave in one write, and a first chunk
    that comes later is sent as soon as it comes: the first event reaches the client long before
    the next one is due."""
    _user_id, _token_id, key = await prepare(live, upstream)
    upstream.configure(chunk_delay=0.5, chunks=["one ", "two ", "three"])
    started = time.monotonic()
    first = None
    async with live.client.stream(
        "POST", "/v1/chat/completions", json=STREAM, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                first = time.monotonic() - started
                break
    assert first is not None and first < 0.15


async def test_under_uvicorn_answers_are_written_directly_and_the_connection_is_reused(
    live: Live, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast writer applies to uvicorn's cycle (an uvicorn release that changed it would fail
    here), and a connection goes on serving after answers written that way."""
    _user_id, _token_id, key = await prepare(live, upstream)
    taken: list[bool] = []
    original = front.DirectWriter.of

    def spy(send: object) -> front.DirectWriter | None:
        writer = original(send)
        taken.append(writer is not None)
        return writer

    monkeypatch.setattr(front.DirectWriter, "of", staticmethod(spy))
    host, port = live.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for body in (STREAM, CHAT, STREAM, CHAT):  # one keep-alive connection for all four
            payload = orjson.dumps(body)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"x-oneapi-request-id: " in head
            if body is STREAM:
                assert b"transfer-encoding: chunked" in head
                answer = await reader.readuntil(b"\r\n0\r\n\r\n")
                assert b"data: [DONE]" in answer
            else:
                length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                answer = await reader.readexactly(length)
                assert orjson.loads(answer)["choices"][0]["message"]["content"]
    finally:
        writer.close()
    assert taken == [True, True, True, True]
