"""The official `openai` SDK pointed at Tollway: its own calls work unchanged, errors arrive as SDK
exceptions. A live server over real HTTP, a fake upstream behind it."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import Live
from tests.fakes.upstream import FakeUpstream
from tests.seed import create_channel, create_token, create_user

pytestmark = pytest.mark.db
MESSAGES = [{"role": "user", "content": "Say hello"}]


async def sdk(live: Live, upstream: FakeUpstream, **token: object) -> openai.AsyncOpenAI:
    db = live.runtime.db
    user_id = await create_user(db)
    _, key = await create_token(db, user_id, **token)  # type: ignore[arg-type]
    await create_channel(db, upstream.base_url)
    live.refresh()
    return openai.AsyncOpenAI(api_key=key, base_url=f"{live.base_url}/v1", max_retries=0)


async def test_sdk_chat_stream_embeddings_models(live: Live, upstream: FakeUpstream) -> None:
    client = await sdk(live, upstream)
    async with client:
        chat = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert chat.choices[0].message.content == "Hello from the fake upstream."
        assert chat.usage is not None and chat.usage.total_tokens == 15

        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == "Hello from the fake upstream."

        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5

        embeddings = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(embeddings.data) == 2 and len(embeddings.data[0].embedding) == 8

        models = [model.id async for model in client.models.list()]
        assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= set(models)
        model = await client.models.retrieve("gpt-4o")
        assert model.id == "gpt-4o"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("no-such-model")

    logs = await live.logs()
    assert len(logs) == 4  # chat, stream, stream with usage, embeddings: one row each


async def test_sdk_sees_errors_as_exceptions(live: Live, upstream: FakeUpstream) -> None:
    client = await sdk(live, upstream, model_limits="gpt-4o")
    async with client:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert "request id" in str(denied.value)

        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o", messages=[])

        upstream.set_mode("status_429")
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

        upstream.set_mode("status_500")
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]

    bad = openai.AsyncOpenAI(api_key="sk-not-a-real-key", base_url=f"{live.base_url}/v1", max_retries=0)
    async with bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
