"""The SSE relay: byte-exact pass-through, usage capture, hiding and synthesis, counting, bounds."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tollway.providers.base import Usage
from tollway.relay.streaming import _TOOL_BUFFER_CHARS, TOOL_CALL_TOKENS, StreamRelay, StreamTooLarge

PROMPT = 11


class WordCounter:
    """Fake token counter: one token per whitespace-separated word; tool calls are recorded."""

    def __init__(self) -> None:
        self.words = 0
        self.fed: list[str] = []
        self.calls: list[tuple[str, str]] = []

    def feed(self, text: str) -> None:
        self.fed.append(text)
        self.words += len(text.split())

    def add_tool_call(self, name: str, arguments: str) -> None:
        self.calls.append((name, arguments))
        self.words += len(name.split()) + len(arguments.split())

    @property
    def tokens(self) -> int:
        return self.words


def usage_of(event: dict[str, Any]) -> Usage | None:
    usage = event.get("usage")
    if usage is None and isinstance(event.get("response"), dict):
        usage = event["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage:
        return Usage(prompt_tokens=usage["input_tokens"], completion_tokens=usage["output_tokens"])
    return Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])


def relay(wants: bool = False, counter: Any = None, **kw: Any) -> StreamRelay:
    return StreamRelay(
        usage_of=usage_of,
        counter=counter if counter is not None else WordCounter(),
        client_wants_usage=wants,
        prompt_tokens=PROMPT,
        model="gpt-4o-mini",
        **kw,
    )


def sse(obj: dict[str, Any], eol: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + eol + eol


def chat_chunk(delta: dict[str, Any], finish: str | None = None, usage: bool = True) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-B9x",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = None
    return chunk


USAGE_CHUNK = {
    "id": "chatcmpl-B9x",
    "object": "chat.completion.chunk",
    "created": 1735000000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
    "choices": [],
    "usage": {"prompt_tokens": 19, "completion_tokens": 7, "total_tokens": 26},
}
WORDS = ["Bonjour", " café", " é", " et", " 你好", "，世界", " ok"]


def openai_stream(with_usage: bool = True, eol: bytes = b"\n") -> list[bytes]:
    """A recorded-style OpenAI chat stream with ``stream_options.include_usage`` set upstream."""
    events = [sse(chat_chunk({"role": "assistant", "content": "", "refusal": None}, usage=with_usage), eol)]
    events += [sse(chat_chunk({"content": w}, usage=with_usage), eol) for w in WORDS]
    events.append(sse(chat_chunk({}, finish="stop", usage=with_usage), eol))
    if with_usage:
        events.append(sse(USAGE_CHUNK, eol))
    events.append(b"data: [DONE]" + eol + eol)
    return events


def splits(data: bytes, rng: random.Random) -> Iterator[bytes]:
    i = 0
    while i < len(data):
        step = rng.choice((1, 1, 2, 3, 7, 50, 400))
        yield data[i : i + step]
        i += step


def run(r: StreamRelay, data: bytes, seed: int = 0) -> bytes:
    out = b"".join(r.feed(piece) for piece in splits(data, random.Random(seed)))
    return out + r.finish()


def data_events(out: bytes) -> list[bytes]:
    return [
        e[len(b"data: ") :] for e in out.replace(b"\r\n", b"\n").split(b"\n\n") if e.startswith(b"data: ")
    ]


# ----- pass-through ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_usage_asked_is_forwarded_byte_exact(seed: int) -> None:
    stream = b"".join(openai_stream())
    r = relay(wants=True)
    assert run(r, stream, seed) == stream
    assert r.usage == Usage(prompt_tokens=19, completion_tokens=7)
    assert r.final_usage() == r.usage
    assert r.saw_done and r.first_event_seen
    assert r.events == len(openai_stream())
    assert (r.last_id, r.last_created, r.last_model) == ("chatcmpl-B9x", 1735000000, "gpt-4o-mini-2024-07-18")


@pytest.mark.parametrize("seed", range(20))
def test_usage_not_asked_hides_only_the_usage_chunk(seed: int) -> None:
    events = openai_stream()
    r = relay(wants=False)
    out = run(r, b"".join(events), seed)
    assert out == b"".join(e for e in events if e != sse(USAGE_CHUNK))
    assert b'"usage":null' in out  # chunks with a null usage pass untouched
    assert r.usage == Usage(prompt_tokens=19, completion_tokens=7)
    assert r.events == len(events) - 1


def test_single_bytes_and_utf8_split_everywhere() -> None:
    stream = b"".join(openai_stream())
    for wants in (True, False):
        r = relay(wants=wants)
        out = b"".join(r.feed(stream[i : i + 1]) for i in range(len(stream))) + r.finish()
        assert out.decode("utf-8").count("你好") == 1
        assert (out == stream) is wants
    r = relay()
    cut = stream.index("你".encode()) + 1  # inside the 3-byte sequence
    assert r.feed(stream[:cut]) + r.feed(stream[cut:]) + r.finish() == stream.replace(sse(USAGE_CHUNK), b"")


def test_events_are_released_as_soon_as_complete() -> None:
    r = relay()
    first, second = openai_stream()[:2]
    assert r.feed(first[:-1]) == b""  # blank line not there yet
    assert not r.first_event_seen
    assert r.feed(first[-1:] + second[:10]) == first
    assert r.first_event_seen
    assert r.buffered_bytes() == 10
    assert r.feed(second[10:]) == second
    assert r.buffered_bytes() == 0


def test_crlf_line_endings() -> None:
    events = openai_stream(eol=b"\r\n")
    stream = b"".join(events)
    for seed in range(10):
        r = relay(wants=False)
        assert run(r, stream, seed) == b"".join(e for e in events if e != sse(USAGE_CHUNK, b"\r\n"))
        assert r.saw_done and r.usage is not None


def test_keep_alive_comments_and_event_fields_are_forwarded() -> None:
    stream = (
        b": keep-alive\n\n"
        + b": OPENROUTER PROCESSING\r\n\r\n"
        + b"id: 1\nretry: 3000\n"
        + sse(chat_chunk({"content": "hi there"}))
        + b": keep-alive\n\n"
        + b"data: [DONE]\n\n"
    )
    r = relay()
    assert run(r, stream, 3) == stream
    assert r.events == 2
    assert r.final_usage() == Usage(prompt_tokens=PROMPT, completion_tokens=2)


def test_comment_alone_does_not_count_as_first_event() -> None:
    r = relay()
    assert r.feed(b": keep-alive\n\n") == b": keep-alive\n\n"
    assert not r.first_event_seen and r.events == 0


# ----- usage synthesis and counting -----------------------------------------------------------


def test_synthesized_usage_chunk_before_done() -> None:
    counter = WordCounter()
    r = relay(wants=True, counter=counter)
    stream = b"".join(openai_stream(with_usage=False))
    out = run(r, stream, 5)
    *rest, synth, done = data_events(out)
    assert out.startswith(stream[: -len(b"data: [DONE]\n\n")])
    assert done == b"[DONE]"
    chunk = orjson.loads(synth)
    completion = sum(len(w.split()) for w in WORDS)  # the fake counts words per fragment
    assert counter.words == completion == 7
    assert chunk == {
        "id": "chatcmpl-B9x",
        "object": "chat.completion.chunk",
        "created": 1735000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {
            "prompt_tokens": PROMPT,
            "completion_tokens": completion,
            "total_tokens": PROMPT + completion,
        },
    }
    assert r.usage is None
    assert r.final_usage() == Usage(prompt_tokens=PROMPT, completion_tokens=completion)
    assert r.events == len(rest) + 2


def test_synthesized_chunk_defaults_and_crlf() -> None:
    r = relay(wants=True)
    out = r.feed(b"data: [DONE]\r\n\r\n")
    synth, done = out.split(b"\r\n\r\n")[:2]
    chunk = orjson.loads(synth[len(b"data: ") :])
    assert done == b"data: [DONE]" and out.endswith(b"\r\n\r\n")
    assert chunk["id"] == "chatcmpl-tollway" and chunk["model"] == "gpt-4o-mini"
    assert isinstance(chunk["created"], int) and chunk["usage"]["total_tokens"] == PROMPT
    assert r.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"  # only once


def test_no_synthesis_when_not_asked_or_upstream_reported() -> None:
    stream = b"".join(openai_stream(with_usage=False))
    assert run(relay(wants=False), stream) == stream
    stream = b"".join(openai_stream(with_usage=True))
    assert run(relay(wants=True), stream) == stream


def test_upstream_usage_wins_over_counting() -> None:
    counter = WordCounter()
    r = relay(counter=counter)
    run(r, b"".join(openai_stream()))
    assert counter.words == 0  # content chunks carry "usage": null: kept unparsed, then made moot
    assert r.final_usage() == Usage(prompt_tokens=19, completion_tokens=7)


def test_zero_upstream_usage_falls_back_to_counting() -> None:
    zero = {**USAGE_CHUNK, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
    r = relay()
    run(r, sse(chat_chunk({"content": "two words"})) + sse(zero) + b"data: [DONE]\n\n")
    assert r.final_usage() == Usage(prompt_tokens=PROMPT, completion_tokens=2)


def test_reasoning_is_counted() -> None:
    counter = WordCounter()
    r = relay(counter=counter)
    run(
        r,
        sse(chat_chunk({"reasoning_content": "think hard", "content": None}))
        + sse(chat_chunk({"reasoning": "more"})),
    )
    r.final_usage()  # no usage from the upstream: the kept events are counted now
    assert counter.fed == ["think hard", "more"]


def tool_delta(index: int, name: str | None = None, args: str = "") -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": args}
    call: dict[str, Any] = {"index": index, "function": function}
    if name is not None:
        call |= {"id": f"call_{index}", "type": "function"}
        function["name"] = name
    return {"tool_calls": [call]}


def test_tool_calls_counted_whole_plus_seven_per_parallel_call() -> None:
    counter = WordCounter()
    r = relay(wants=True, counter=counter)
    chunks = [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk(tool_delta(0, "get_weather")),
        chat_chunk(tool_delta(0, args='{"city": ')),
        chat_chunk(tool_delta(0, args='"Paris"}')),
        chat_chunk(tool_delta(1, "get_time")),
        chat_chunk(tool_delta(1, args='{"tz": "CET"}')),
        chat_chunk({}, finish="tool_calls"),
    ]
    out = run(r, b"".join(map(sse, chunks)) + b"data: [DONE]\n\n", 9)
    assert counter.calls == [("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')]
    expected = 1 + 2 + 1 + 2 + 2 * TOOL_CALL_TOKENS
    assert r.final_usage() == Usage(prompt_tokens=PROMPT, completion_tokens=expected)
    assert orjson.loads(data_events(out)[-2])["usage"]["completion_tokens"] == expected


def test_tool_calls_in_one_chunk_and_unfinished_stream() -> None:
    counter = WordCounter()
    r = relay(counter=counter)
    both = {"tool_calls": tool_delta(0, "a", "{}")["tool_calls"] + tool_delta(1, "b", "{}")["tool_calls"]}
    run(r, sse(chat_chunk(both)) + sse(chat_chunk(tool_delta(1, args=" x"))))
    assert r.final_usage().completion_tokens == 2 + 3 + 2 * TOOL_CALL_TOKENS
    assert sorted(counter.calls) == [("a", "{}"), ("b", "{} x")]


def test_huge_tool_arguments_stay_bounded() -> None:
    counter = WordCounter()
    r = relay(counter=counter)
    r.feed(sse(chat_chunk(tool_delta(0, "write"))))
    for _ in range(2000):
        r.feed(sse(chat_chunk(tool_delta(0, args="word " * 20))))
    # Flushed along the way: at most the kept events (64 KiB of SSE) and the tool buffer are not.
    assert sum(len(a) for _, a in counter.calls) >= 200_000 - 64 * 1024 - _TOOL_BUFFER_CHARS
    assert r.final_usage().completion_tokens == 1 + 2000 * 20 + TOOL_CALL_TOKENS


def test_legacy_completions_stream() -> None:
    def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [choice],
        }

    counter = WordCounter()
    stream = (
        b"".join(sse(chunk(t)) for t in ("Once", " upon", " a time"))
        + sse(chunk("", "length"))
        + b"data: [DONE]\n\n"
    )
    r = relay(wants=True, counter=counter)
    out = run(r, stream, 1)
    synth = orjson.loads(data_events(out)[-2])
    assert out.startswith(stream[: -len(b"data: [DONE]\n\n")])
    assert counter.fed == ["Once", " upon", " a time"]
    assert synth["object"] == "text_completion" and synth["id"] == "cmpl-1"
    assert synth["usage"]["completion_tokens"] == 4


def test_responses_api_stream() -> None:
    def event(kind: str, **fields: Any) -> bytes:
        return b"event: " + kind.encode() + b"\n" + sse({"type": kind, **fields})

    usage = {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}
    stream = (
        event("response.created", response={"id": "resp_1", "status": "in_progress", "usage": None})
        + event("response.output_item.added", output_index=0, item={"type": "message", "content": []})
        + event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta="Hello")
        + event(
            "response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=" world"
        )
        + event("response.output_text.done", item_id="msg_1", text="Hello world")
        + event("response.completed", response={"id": "resp_1", "status": "completed", "usage": usage})
    )
    counter = WordCounter()
    for wants in (False, True):
        r = relay(wants=wants, counter=counter)
        assert run(r, stream, 2) == stream
        assert not r.saw_done  # the Responses API ends without [DONE]
        assert r.usage == Usage(prompt_tokens=9, completion_tokens=3)
    assert counter.fed == []  # the upstream's usage made counting moot: the deltas were never parsed
    without_usage = stream.replace(
        b'"usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}', b'"usage":null'
    )
    assert without_usage != stream
    r = relay(wants=False, counter=counter)
    assert run(r, without_usage, 2) == without_usage
    assert r.usage is None
    assert r.final_usage().completion_tokens == 2
    assert counter.fed == ["Hello", " world"]


# ----- ends, limits, memory -------------------------------------------------------------------


def test_stream_without_done() -> None:
    r = relay(wants=True)
    body = b"".join(openai_stream(with_usage=False)[:-1])
    last = sse(chat_chunk({"content": " tail"}))
    assert r.feed(body + last[:-2]) == body
    assert r.buffered_bytes() == len(last) - 2
    assert r.finish() == last  # completed, not [DONE]: the engine decides
    assert not r.saw_done and r.buffered_bytes() == 0
    assert r.final_usage().completion_tokens == 8
    assert r.finish() == b""


def test_finish_completes_done_without_blank_line_and_drops_a_cut_event() -> None:
    r = relay()
    assert r.feed(b"data: [DONE]") == b""
    assert r.finish() == b"data: [DONE]\n\n"
    assert r.saw_done
    r = relay()
    assert r.feed(sse(chat_chunk({"content": "ab"}))[:40]) == b""
    assert r.finish() == b""
    assert not r.saw_done and r.events == 0


def test_oversize_event_raises() -> None:
    r = relay(max_event_bytes=1000)
    r.feed(b"data: " + b"x" * 900)
    with pytest.raises(StreamTooLarge) as info:
        r.feed(b"x" * 200)
    assert info.value.limit == 1000
    with pytest.raises(StreamTooLarge):
        relay(max_event_bytes=1000).feed(sse(chat_chunk({"content": "y" * 2000})))
    small = sse(chat_chunk({"content": "fits"}))
    assert relay(max_event_bytes=len(small)).feed(small) == small


def test_memory_stays_bounded_over_100k_chunks() -> None:
    r = relay()
    chunk = sse(chat_chunk({"content": " é你"}))
    a, b = chunk[: len(chunk) // 2 + 1], chunk[len(chunk) // 2 + 1 :]
    high = 0
    for _ in range(50_000):
        assert r.feed(chunk) == chunk
        r.feed(a)
        high = max(high, r.buffered_bytes())
        r.feed(b)
    assert high < 64 * 1024
    assert r.buffered_bytes() == 0
    assert r.final_usage().completion_tokens == 100_000


def test_real_completion_counter() -> None:
    from tollway.relay.tokenizer import CompletionCounter, count_text

    counter = CompletionCounter("gpt-4o-mini")
    r = relay(wants=True, counter=counter)
    out = run(r, b"".join(openai_stream(with_usage=False)), 4)
    expected = count_text("gpt-4o-mini", "".join(WORDS))
    assert r.final_usage() == Usage(prompt_tokens=PROMPT, completion_tokens=expected)
    assert orjson.loads(data_events(out)[-2])["usage"]["completion_tokens"] == expected


def test_usage_with_choices_is_never_hidden() -> None:
    last = chat_chunk({"content": "end"}, finish="stop") | {"usage": USAGE_CHUNK["usage"]}
    stream = sse(last) + b"data: [DONE]\n\n"
    r = relay(wants=False)
    assert run(r, stream) == stream
    assert r.usage == Usage(prompt_tokens=19, completion_tokens=7)


def test_mixed_line_endings() -> None:
    stream = b'data: {"choices":[{"delta":{"content":"a b"}}]}\r\n\n' + b"data: [DONE]\n\r\n"
    r = relay()
    assert run(r, stream, 7) == stream
    assert r.saw_done and r.events == 2 and r.final_usage().completion_tokens == 2


def test_odd_shapes_pass_through_without_errors() -> None:
    odd: list[dict[str, Any]] = [
        {"type": {"x": 1}, "delta": "d"},
        {"choices": [{"index": [1], "delta": {"tool_calls": [{"index": {}, "function": {"name": 3}}]}}]},
        {"choices": "none", "usage": 5, "text": 1},
    ]
    stream = b"".join(map(sse, odd)) + b'data: ["content"]\n\n' + b"data: {not json, text}\n\n"
    r = relay(wants=False)
    assert run(r, stream) == stream
    assert r.events == 5 and r.usage is None


def test_usage_null_chunks_are_not_parsed_and_quoted_usage_is_not_mistaken() -> None:
    counter = WordCounter()
    r = relay(counter=counter)
    quoting = chat_chunk({"content": 'say "usage": null and "usage": {"total_tokens": 9}'})
    out = run(r, sse(chat_chunk({"content": "plain words"})) + sse(quoting) + b"data: [DONE]\n\n")
    assert len(data_events(out)) == 3  # everything forwarded
    assert r.usage is None  # the quoted text is no usage report
    assert r.final_usage().completion_tokens == 2 + 7  # counted when needed: both chunks, by word
