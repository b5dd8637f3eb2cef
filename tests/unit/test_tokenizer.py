"""Token counting: real encodings from bpe-openai's tables, new-api's counting rules."""

from __future__ import annotations

import ast
import inspect
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tollway.relay import tokenizer
from tollway.relay.tokenizer import (
    MAX_BUFFERED_CHARS,
    CompletionCounter,
    count_chat_prompt,
    count_completion_prompt,
    count_embedding_input,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
    load_encoding,
)

MODELS = ("gpt-4", "gpt-4o")  # one model per encoding


def counter_of(model: str) -> Callable[[str], int]:
    enc = encoding_for_model(model)
    return lambda text: len(enc.encode_ordinary(text))


# ----- encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hello", "great"),
    [
        ("cl100k_base", [15339, 1917], [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", [24912, 2375], [83, 8251, 2488, 382, 2212, 0]),
    ],
)
def test_known_token_ids(name: str, hello: list[int], great: list[int]) -> None:
    enc = load_encoding(name)
    assert enc.encode_ordinary("hello world") == hello
    assert enc.encode_ordinary("tiktoken is great!") == great
    assert enc.decode(great) == "tiktoken is great!"


@pytest.mark.parametrize(
    ("name", "ranks", "special"),
    [
        ("cl100k_base", 100_256, {"<|endoftext|>": 100_257, "<|endofprompt|>": 100_276}),
        ("o200k_base", 199_998, {"<|endoftext|>": 199_999, "<|endofprompt|>": 200_018}),
    ],
)
def test_encoding_tables(name: str, ranks: int, special: dict[str, int]) -> None:
    enc = load_encoding(name)
    assert enc.name == name
    assert enc.n_vocab == max(special.values()) + 1
    assert enc.max_token_value == max(special.values())
    assert enc.encode("<|endoftext|>", allowed_special="all") == [special["<|endoftext|>"]]
    assert enc.decode_single_token_bytes(ranks - 1)  # the last ordinary rank exists


def test_encodings_are_cached() -> None:
    assert load_encoding("o200k_base") is load_encoding("o200k_base")
    assert encoding_for_model("gpt-4o-mini") is load_encoding("o200k_base")


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported encoding"):
        load_encoding("p50k_base")


def test_table_hash_is_checked() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        tokenizer._offline_bpe("https://example.invalid/cl100k_base.tiktoken", expected_hash="0" * 64)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("claude-3-5-sonnet", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_encoding_choice(model: str, name: str) -> None:
    assert encoding_name_for_model(model) == name


# ----- text and prompts ---------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_count_text(model: str) -> None:
    assert count_text(model, "hello world") == 2
    assert count_text(model, "") == 0
    assert count_text(model, "<|endoftext|>") == 7  # special tokens count as plain text
    assert count_text(model, "lone \ud800 surrogate") > 0


@pytest.mark.parametrize("model", MODELS)
def test_chat_string_content(model: str) -> None:
    n = counter_of(model)
    system, user = "You are a helpful assistant.", "What is the capital of France?"
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    expected = 3 + (3 + n("system") + n(system)) + (3 + n("user") + n(user))
    assert count_chat_prompt(model, body) == expected


@pytest.mark.parametrize("model", MODELS)
def test_chat_content_parts(model: str) -> None:
    n = counter_of(model)
    unknown = {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}
    parts: list[Any] = [
        {"type": "text", "text": "Describe these."},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": "https://example.com/c.png"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
        unknown,
    ]
    body = {"messages": [{"role": "user", "content": parts}]}
    unknown_tokens = n(orjson.dumps(unknown).decode())
    expected = 3 + 3 + n("user") + n("Describe these.") + 85 + 255 + 255 + 255 + 100 + 5000 + unknown_tokens
    assert count_chat_prompt(model, body) == expected


@pytest.mark.parametrize("model", MODELS)
def test_chat_name_key(model: str) -> None:
    n = counter_of(model)
    plain = {"messages": [{"role": "user", "content": "Hi there"}]}
    named = {"messages": [{"role": "user", "content": "Hi there", "name": "alice"}]}
    assert count_chat_prompt(model, named) == count_chat_prompt(model, plain) + 1 + n("alice")


def test_chat_legacy_0301_variant() -> None:
    n = counter_of("gpt-3.5-turbo-0301")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "bob"},
    ]
    text = n("system") + n("Be brief.") + n("user") + n("Hi") + n("bob")
    assert count_chat_prompt("gpt-3.5-turbo-0301", {"messages": messages}) == 3 + 4 + 4 - 1 + text
    assert count_chat_prompt("gpt-3.5-turbo-0613", {"messages": messages}) == 3 + 3 + 3 + 1 + text
    assert count_chat_prompt("gpt-3.5-turbo-0301", {"messages": messages[:1]}) == 3 + 4 + n("system") + n(
        "Be brief."
    )


@pytest.mark.parametrize("model", MODELS)
def test_chat_tools_and_tool_calls(model: str) -> None:
    n = counter_of(model)
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
    ]
    without_tools = (
        3
        + (3 + n("user") + n("Weather in Paris?"))
        + (3 + n("assistant") + n("get_weather") + n('{"city":"Paris"}'))
        + (3 + n("tool") + n("18 C, cloudy"))
    )
    assert count_chat_prompt(model, {"messages": messages}) == without_tools
    with_tools = without_tools + 8 + n(orjson.dumps(tools).decode())
    assert count_chat_prompt(model, {"messages": messages, "tools": tools}) == with_tools


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": None},
        {"messages": "hello"},
        {"messages": ["just a string", 42, None]},
        {"messages": [{"role": None, "content": 12}]},
        {"messages": [{"role": "user", "content": [None, 3, "bare string", ["nested"]]}]},
        {"messages": [{"role": "user", "content": [{"type": ["unhashable"]}, {"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": {"odd": 1}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": None}]}]},
        {"messages": [{"role": "user", "content": {"type": "text", "text": "dict content"}}]},
        {"messages": [{"role": "user", "content": [{"type": "x", "n": 10**40}]}]},
        {"messages": [{"role": "user", "content": _deep(1200)}]},
        {"messages": [{"role": "assistant", "tool_calls": "bad"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [None, {"function": None}, {"function": {"arguments": {}}}],
                }
            ]
        },
        {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]},
        {"messages": [{"role": "user", "content": "x", "name": None}]},
        {"messages": [], "tools": "not a list"},
        {"messages": [], "tools": [{"n": 10**40}]},
    ],
)
def test_chat_odd_shapes_never_raise(body: dict[str, Any]) -> None:
    for model in MODELS:
        assert count_chat_prompt(model, body) >= 3


def test_chat_non_mapping_body() -> None:
    assert count_chat_prompt("gpt-4o", ["not", "a", "body"]) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [count_completion_prompt, count_embedding_input])
@pytest.mark.parametrize("model", MODELS)
def test_prompt_and_embedding_inputs(count: Callable[[str, object], int], model: str) -> None:
    n = counter_of(model)
    assert count(model, "hello world") == 2
    assert count(model, ["hello world", "good morning"]) == 2 + n("good morning")
    assert count(model, [1, 2, 3, 4]) == 4
    assert count(model, [[1, 2, 3], [4, 5], []]) == 5
    assert count(model, []) == 0
    assert count(model, "") == 0
    assert count(model, None) == 0
    assert count(model, ["text", [7, 8]]) == n("text") + 2
    assert count(model, [[["deep"]]]) == n('[["deep"]]')


# ----- streamed answers ---------------------------------------------------------------------

PROSE = (
    "the of and to in is you that it he was for on are as with his they I at be this have from or one "
    "had by word but not what all were we when your can said there use an each which she do how their "
    "if will up other about out many then them these so some her would make like him into time has look "
    "Paris API JSON HTTP gateway tokenizer naïve café résumé façade Ångström Straße Ωmega "
    "don't it's we'll THEY'RE you've I'm she'd"
)
WORDS = PROSE.split()
SNIPPETS = (
    "3.14159",
    "1,000,000",
    "2024-06-01",
    "0xDEADBEEF",
    "e\u0301te\u0301",
    "👍🏽",
    "🚀",
    "这是一个测试，我们正在计算令牌。",
    "東京は日本の首都です。",
    "Привет, мир!",
    "مرحبا بالعالم",
    "https://example.com/path?q=1&r=two",
    "`inline_code()`",
    "**bold**",
    "(parenthesised)",
    "snake_case_name",
    "--flag=value",
)
CODE = 'def square(x: int) -> int:\n    """Square."""\n    return x ** 2  # comment\n\n'


def corpus(size: int, seed: int = 7) -> str:
    """Multi-paragraph text mixing prose, numbers, code, CJK, emoji and odd whitespace."""
    rng = random.Random(seed)
    paragraphs: list[str] = []
    length = 0
    while length < size:
        kind = rng.random()
        if kind < 0.1:
            block = "```python\n" + CODE * rng.randint(1, 3) + "```"
        elif kind < 0.2:
            block = "\n".join(
                f"- {rng.choice(WORDS)} {rng.choice(SNIPPETS)}" for _ in range(rng.randint(2, 6))
            )
        else:
            tokens = [rng.choice(SNIPPETS) if rng.random() < 0.08 else rng.choice(WORDS) for _ in range(80)]
            sentence = " ".join(tokens)
            block = sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", "...", ":"])
        paragraphs.append(block + rng.choice(["\n\n", "\r\n\r\n", "\n \n", "\n\t"]))
        length += len(paragraphs[-1])
    return "".join(paragraphs)


def chunks(text: str, seed: int, largest: int) -> Iterator[str]:
    rng = random.Random(seed)
    i = 0
    while i < len(text):
        size = rng.randint(1, largest)
        yield text[i : i + size]
        i += size


# Cut points are chosen so that both encodings split there anyway: natural text counts exactly.
NATURAL_TEXT_TOLERANCE = 0
# Text without any cut point in 2 KB is cut blindly: at most about one token per cut.
BLIND_CUT_TOLERANCE = 0.002


@pytest.mark.parametrize("model", MODELS)
def test_stream_counter_matches_whole_text(model: str) -> None:
    text = corpus(200_000)
    assert len(text) >= 200_000
    counter = CompletionCounter(model)
    for piece in chunks(text, seed=1, largest=40):
        counter.feed(piece)
    assert abs(counter.tokens - count_text(model, text)) <= NATURAL_TEXT_TOLERANCE


@pytest.mark.parametrize("model", MODELS)
def test_stream_counter_blind_cuts_stay_close(model: str) -> None:
    rng = random.Random(3)
    digits = "".join(rng.choices("0123456789", k=100_000))
    counter = CompletionCounter(model)
    for piece in chunks(digits, seed=2, largest=300):
        counter.feed(piece)
    whole = count_text(model, digits)
    assert 0 <= counter.tokens - whole <= BLIND_CUT_TOLERANCE * whole


@pytest.mark.parametrize("model", MODELS)
def test_stream_counter_memory_is_bounded(model: str) -> None:
    text = corpus(200_000, seed=11)
    counter = CompletionCounter(model)
    fed = 0
    largest = 0
    while fed < 5_000_000:
        for piece in chunks(text, seed=fed, largest=400):
            counter.feed(piece)
            largest = max(largest, counter.buffered_chars)
        fed += len(text)
    assert largest < MAX_BUFFERED_CHARS
    assert counter.tokens == count_text(model, text) * (fed // len(text))


@pytest.mark.parametrize("text", ["a" * 1_000_000, "7" * 1_000_000, "x" * 10 + corpus(50_000)])
def test_stream_counter_bounded_on_single_huge_feed(text: str) -> None:
    counter = CompletionCounter("gpt-4o")
    counter.feed(text)
    assert counter.buffered_chars < MAX_BUFFERED_CHARS
    counter.feed("tail")
    assert counter.buffered_chars < MAX_BUFFERED_CHARS


@pytest.mark.parametrize("model", MODELS)
def test_stream_counter_tool_calls_and_repeat_reads(model: str) -> None:
    n = counter_of(model)
    counter = CompletionCounter(model)
    assert counter.tokens == 0
    counter.feed("Let me check")
    counter.feed(" the weather.")
    assert counter.tokens == counter.tokens == n("Let me check the weather.")
    counter.add_tool_call("get_weather", '{"city": "Paris"}')
    counter.feed(" Done")
    expected = n("Let me check the weather. Done") + n("get_weather") + n('{"city": "Paris"}')
    assert counter.tokens == expected
    counter.feed("")
    assert counter.tokens == expected


@pytest.mark.parametrize(
    ("prev", "char", "cut"),
    [
        ("a", " ", True),
        ("a", ".", True),
        ("a", "\n", True),
        ("字", "，", True),
        ("1", "a", True),
        ("1", " ", True),
        ("a", "b", False),
        ("a", "1", False),
        ("a", "'", False),
        ("e", "\u0301", False),
        ("1", "2", False),
        ("1", "\u0663", False),
        (" ", "a", False),
        (".", " ", False),
        ("a", "\U000e0080", False),  # unassigned: tiktoken's regex may know it as a letter
    ],
)
def test_cut_points(prev: str, char: str, cut: bool) -> None:
    assert tokenizer._is_cut(prev, char) is cut


# ----- offline loading ----------------------------------------------------------------------


def test_module_never_uses_tiktoken_download_paths() -> None:
    tree = ast.parse(inspect.getsource(tokenizer))
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    forbidden = {"get_encoding", "encoding_for_model", "load_tiktoken_bpe", "read_file_cached"}
    assert not attributes & forbidden
    assert "bpe_openai" not in names


def test_loading_is_offline(tmp_path: Path) -> None:
    """A fresh process loads and counts with an empty tiktoken cache and every socket refused."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    script = textwrap.dedent(
        """
        import sys

        def refuse_network(event, args):
            if event.startswith(("socket.", "urllib.")):
                raise RuntimeError(f"network access: {event}")

        sys.addaudithook(refuse_network)

        import tiktoken.registry
        from tollway.relay.tokenizer import count_chat_prompt, count_text, preload

        preload()
        assert count_text("gpt-4", "hello world") == 2
        assert count_text("gpt-4o", "hello world") == 2
        assert count_chat_prompt("gpt-4o", {"messages": [{"role": "user", "content": "hi"}]}) > 0
        assert tiktoken.registry.ENCODINGS == {}, "tiktoken.get_encoding was used"
        assert "bpe_openai" not in sys.modules, "bpe_openai was imported"
        print("ok")
        """
    )
    env = {"TIKTOKEN_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "你好，世界" * 50 + "😀" * 40}]},
        {"model": "gpt-4", "messages": [{"role": "user", "name": "a", "content": ""}] * 30},
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "x"}},
                        {"type": "file", "file": {"file_id": "f"}},
                        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                    ],
                }
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"a": [1, 2, {"b": None}]}}}
            ],
        },
    ],
)
def test_prompt_upper_bound_is_never_below_the_count(body: dict[str, object]) -> None:
    from tollway.relay.requests import CHAT, parse_relay_request

    raw = orjson.dumps(body)
    _, prompt = parse_relay_request(CHAT, method="POST", body=raw, content_type="application/json", query="")
    assert prompt.upper_bound is not None
    assert prompt() <= prompt.upper_bound
    if b'"type"' in raw:  # "typ\u0065" is the same key: such a body gets no bound at all
        escaped = raw.replace(b'"type"', b'"typ\\u0065"')
        assert (
            parse_relay_request(CHAT, method="POST", body=escaped, content_type="", query="")[1].upper_bound
            is None
        )
