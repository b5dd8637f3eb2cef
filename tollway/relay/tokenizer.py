"""Token counting for requests and answers, following new-api's rules.

The gateway has no internet access, but tiktoken's own loader (``tiktoken.get_encoding``)
downloads its token tables from ``openaipublic.blob.core.windows.net`` on first use. The
``bpe-openai`` wheel ships the same tables (``bpe_openai/data/*.tiktoken.gz``, byte-identical
once gunzipped: the SHA-256 that tiktoken expects is checked on load), so we build
``tiktoken.Encoding`` objects from those files instead.

Two details keep this cheap and offline:

* ``bpe_openai`` is never imported, only located with ``importlib.util.find_spec``: importing it
  eagerly parses all of its vocabularies (about 0.4 s and 66 MB).
* The pattern strings and special tokens come from tiktoken itself: the constructors in
  ``tiktoken_ext.openai_public`` are run as copies whose globals hold only that module's string
  constants and ``_offline_bpe`` in place of ``load_tiktoken_bpe``. The module is not patched, and
  any other name the constructor might use raises ``NameError`` instead of reaching the network.

Each encoding is loaded once per process, when first needed (about 0.3 s for ``o200k_base``,
0.15 s for ``cl100k_base``; :func:`load_for_model` does it off the event loop). Most requests need
none: the upstream reports usage, and the reservation counts the prompt only when the client sets
``max_tokens``. A worker that never counts never holds the tables (about 63 MB for both).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import gzip
import hashlib
import importlib.util
import itertools
import threading
import types
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import tiktoken
from tiktoken_ext import openai_public

__all__ = [
    "ENCODING_NAMES",
    "MAX_BUFFERED_CHARS",
    "MAX_PART_TOKENS",
    "O200K_MODEL_PREFIXES",
    "CompletionCounter",
    "count_chat_prompt",
    "count_completion_prompt",
    "count_embedding_input",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "load_encoding",
    "load_for_model",
    "preload",
]

ENCODING_NAMES: Final = ("cl100k_base", "o200k_base")
O200K_MODEL_PREFIXES: Final = ("gpt-4o", "chatgpt-4o", "o1", "o3", "o4", "gpt-4.1", "gpt-4.5", "gpt-5")

_LEGACY_CHAT_MODEL: Final = "gpt-3.5-turbo-0301"
_REPLY_PRIMER_TOKENS: Final = 3
_TOOLS_OVERHEAD_TOKENS: Final = 8
_IMAGE_LOW_TOKENS: Final = 85
_IMAGE_TOKENS: Final = 255
_FIXED_PART_TOKENS: Final[Mapping[str, int]] = types.MappingProxyType({"input_audio": 100, "file": 5000})
MAX_PART_TOKENS: Final = max(_IMAGE_TOKENS, _IMAGE_LOW_TOKENS, *_FIXED_PART_TOKENS.values())

_FLUSH_AT: Final = 2048
_MAX_CARRY: Final = 2048
# An answer is held as text up to this many characters (about 128k tokens of English, beyond the
# longest answers models give) before the first encoding: the upstream's usage at the end of a
# stream usually makes counting moot, and the tokenizer's tables (23-47 MB) are then never loaded.
# Held text is joined as it comes (see _JOIN_PIECES): about a byte per character, bounded.
HOLD_CHARS: Final = 512 * 1024
_JOIN_PIECES: Final = 64
MAX_BUFFERED_CHARS: Final = HOLD_CHARS + _MAX_CARRY
"""Upper bound of :attr:`CompletionCounter.buffered_chars` after any ``feed``."""

_NOT_A_CUT: Final = frozenset({"Mn", "Mc", "Me", "Nd", "Nl", "No", "Cn"})


# ----- loading ------------------------------------------------------------------------------


def _data_dir() -> Path:
    """Directory of the token tables shipped by bpe-openai (the package is not imported)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bpe-openai package, which ships the token tables, is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _offline_bpe(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stand-in for ``tiktoken.load.load_tiktoken_bpe`` reading bpe-openai's copy of ``url``."""
    path = _data_dir() / f"{url.rpartition('/')[2]}.gz"
    data = gzip.decompress(path.read_bytes())
    if expected_hash is not None and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"{path} does not match the SHA-256 tiktoken expects for {url}")
    pairs = (line.split() for line in data.splitlines() if line)
    return {base64.b64decode(token): int(rank) for token, rank in pairs}


def _encoding_spec(name: str) -> dict[str, Any]:
    """Keyword arguments of ``tiktoken.Encoding`` for ``name``, built by tiktoken's constructor."""
    constructor = openai_public.ENCODING_CONSTRUCTORS[name]
    namespace: dict[str, object] = {k: v for k, v in vars(openai_public).items() if isinstance(v, str)}
    namespace |= {"__builtins__": {}, "load_tiktoken_bpe": _offline_bpe}
    offline = types.FunctionType(constructor.__code__, namespace, constructor.__name__)
    spec: dict[str, Any] = offline()
    return spec


_loaded: dict[str, tiktoken.Encoding] = {}
_loading = threading.Lock()


def load_encoding(name: str) -> tiktoken.Encoding:
    """The encoding ``name`` (one of :data:`ENCODING_NAMES`), loaded once per process."""
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    if name not in ENCODING_NAMES:
        raise ValueError(f"unsupported encoding {name!r}; expected one of {ENCODING_NAMES}")
    with _loading:  # a thread (load_for_model) and the event loop may both ask for it first
        encoding = _loaded.get(name)
        if encoding is None:
            encoding = tiktoken.Encoding(**_encoding_spec(name))
            # tiktoken keeps the bytes → rank dict only to pickle the encoding; the Rust core has
            # its own copy. Dropping ours saves ~35 MB per encoding in every worker.
            encoding._mergeable_ranks = {}
            gc.collect()
            _loaded[name] = encoding
    return encoding


def preload() -> None:
    """Load every encoding now (about 0.45 s in total) rather than when first needed."""
    for name in ENCODING_NAMES:
        load_encoding(name)


async def load_for_model(model: str) -> None:
    """Make sure ``model``'s encoding is loaded, loading it in a thread if it is not: an async
    caller about to count calls this first, so the event loop never stalls on the first load."""
    if encoding_name_for_model(model) not in _loaded:
        await asyncio.to_thread(encoding_for_model, model)


def encoding_name_for_model(model: str) -> str:
    """``o200k_base`` for the GPT-4o / o-series / GPT-4.1+ families, else ``cl100k_base``."""
    return "o200k_base" if model.startswith(O200K_MODEL_PREFIXES) else "cl100k_base"


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The (cached) encoding used to count tokens for ``model``."""
    return load_encoding(encoding_name_for_model(model))


# ----- helpers ------------------------------------------------------------------------------


def _n(enc: tiktoken.Encoding, text: str) -> int:
    """Tokens of ``text``, without special-token checks."""
    return len(enc.encode_ordinary(text)) if text else 0


def _json_text(value: object) -> str:
    """JSON of ``value``, or its ``str()`` when orjson refuses it (huge ints, deep nesting)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        try:
            return str(value)
        except (RecursionError, ValueError):
            return ""


def _value_tokens(enc: tiktoken.Encoding, value: object) -> int:
    """Tokens of a string, of nothing for ``None``, or of the JSON text of anything else."""
    if isinstance(value, str):
        return _n(enc, value)
    if value is None:
        return 0
    return _n(enc, _json_text(value))


# ----- prompts ------------------------------------------------------------------------------


def count_text(model: str, text: str) -> int:
    """Tokens of ``text`` for ``model``; special-token strings count as plain text."""
    return _n(encoding_for_model(model), text)


def count_chat_prompt(model: str, body: Mapping[str, Any]) -> int:
    """Prompt tokens of an OpenAI chat completions request body (new-api's estimate)."""
    if not isinstance(body, Mapping):
        return 0
    enc = encoding_for_model(model)
    per_message, per_name = (4, -1) if model == _LEGACY_CHAT_MODEL else (3, 1)
    total = _REPLY_PRIMER_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        total += sum(_message_tokens(enc, message, per_message, per_name) for message in messages)
    tools = body.get("tools")
    if tools:
        total += _TOOLS_OVERHEAD_TOKENS + _n(enc, _json_text(tools))
    return total


def _message_tokens(enc: tiktoken.Encoding, message: object, per_message: int, per_name: int) -> int:
    """Tokens of one chat message: overhead, role, content, name and calls."""
    if not isinstance(message, dict):
        return per_message + _value_tokens(enc, message)
    role = message.get("role")
    total = per_message + (
        _role_tokens(enc.name, role) if isinstance(role, str) else _value_tokens(enc, role)
    )
    total += _content_tokens(enc, message.get("content"))
    if "name" in message:
        total += per_name + _value_tokens(enc, message["name"])
    if "tool_calls" in message:
        total += _tool_calls_tokens(enc, message["tool_calls"])
    if "function_call" in message:
        total += _call_tokens(enc, message["function_call"])
    return total


@functools.lru_cache(maxsize=64)
def _role_tokens(encoding: str, role: str) -> int:
    """Tokens of a role name: a handful of values, counted once instead of on every message."""
    return _n(load_encoding(encoding), role)


def _tool_calls_tokens(enc: tiktoken.Encoding, tool_calls: object) -> int:
    """Tokens of an assistant message's ``tool_calls``."""
    if not isinstance(tool_calls, list):
        return _value_tokens(enc, tool_calls)
    calls = (call.get("function") if isinstance(call, dict) else call for call in tool_calls)
    return sum(_call_tokens(enc, function) for function in calls)


def _call_tokens(enc: tiktoken.Encoding, function: object) -> int:
    """Tokens of a function call's name and arguments."""
    if isinstance(function, dict):
        return _value_tokens(enc, function.get("name")) + _value_tokens(enc, function.get("arguments"))
    return _value_tokens(enc, function)


def _content_tokens(enc: tiktoken.Encoding, content: object) -> int:
    """Tokens of a message's ``content``: a string or a list of parts."""
    if isinstance(content, str):
        return _n(enc, content)
    if isinstance(content, list):
        return sum(_part_tokens(enc, part) for part in content)
    return _value_tokens(enc, content)


def _part_tokens(enc: tiktoken.Encoding, part: object) -> int:
    """Tokens of one content part: text, a flat cost for media, else the part's JSON."""
    if not isinstance(part, dict):
        return _value_tokens(enc, part)
    kind = part.get("type")
    if kind == "text":
        return _value_tokens(enc, part.get("text"))
    if kind == "image_url":
        image = part.get("image_url")
        detail = image.get("detail") if isinstance(image, dict) else None
        return _IMAGE_LOW_TOKENS if detail == "low" else _IMAGE_TOKENS
    if isinstance(kind, str) and kind in _FIXED_PART_TOKENS:
        return _FIXED_PART_TOKENS[kind]
    return _n(enc, _json_text(part))


def _input_tokens(enc: tiktoken.Encoding, value: object, nested: bool = False) -> int:
    """Tokens of a prompt or input: a string, token ids, or a list of strings or token-id lists."""
    if isinstance(value, str):
        return _n(enc, value)
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        if all(map(isinstance, value, itertools.repeat(int))):
            return len(value)
        if not nested:
            return sum(_input_tokens(enc, item, nested=True) for item in value)
    return _value_tokens(enc, value)


def count_completion_prompt(model: str, prompt: object) -> int:
    """Tokens of a legacy completions ``prompt`` (string, strings, token ids or lists of ids)."""
    return _input_tokens(encoding_for_model(model), prompt)


def count_embedding_input(model: str, inputs: object) -> int:
    """Tokens of an embeddings ``input`` (string, strings, token ids or lists of ids)."""
    return _input_tokens(encoding_for_model(model), inputs)


# ----- streamed answers ---------------------------------------------------------------------


def _is_cut(prev: str, char: str) -> bool:
    """Whether both encodings always start a new pre-token at ``char`` when it follows ``prev``.

    A letter run ends before anything but a letter, digit, mark or apostrophe (o200k attaches
    ``'s``, ``'ll``...); a digit group ends before any non-digit. Characters unknown to Python's
    Unicode database are never treated as a cut, since tiktoken's regex may know them as letters.
    """
    if prev.isalpha():
        if char.isalnum() or char == "'":
            return False
    elif "0" <= prev <= "9":
        if char.isnumeric():
            return False
    else:
        return False
    return char.isascii() or unicodedata.category(char) not in _NOT_A_CUT


def _last_cut(text: str, stop: int) -> int:
    """Last index above ``stop`` where ``_is_cut`` holds, else 0."""
    for i in range(len(text) - 1, stop, -1):
        if _is_cut(text[i - 1], text[i]):
            return i
    return 0


class CompletionCounter:
    """Counts the tokens of a streamed answer in bounded memory, without upstream usage.

    Fragments are buffered; past 2 KB the buffer is encoded up to its last cut point (see
    ``_is_cut``: e.g. a letter followed by a space or punctuation) among the final 2 KB and only
    the rest is kept. Both encodings start a new pre-token at a cut point and BPE never merges
    across pre-tokens, so the total equals encoding the whole answer at once. Without any cut
    point in the last 2 KB (a long run of bare digits, say) the buffer is encoded as is, which
    may move the count by a token or two per 2 KB of such text.
    """

    __slots__ = ("_blocks", "_buffered", "_counted", "_enc", "_flush_at", "_model", "_pieces")

    def __init__(self, model: str) -> None:
        self._model = model
        self._enc: tiktoken.Encoding | None = None  # loaded when the first text is encoded
        self._pieces: list[str] = []
        # Held text, joined every _JOIN_PIECES fragments: a string object per few-character
        # fragment would cost some 60 bytes each while the answer is held.
        self._blocks: list[str] = []
        self._buffered = 0
        self._flush_at = HOLD_CHARS
        self._counted = 0

    def feed(self, text: str) -> None:
        """Add a fragment of answer text."""
        if not text:
            return
        pieces = self._pieces
        pieces.append(text)
        self._buffered += len(text)
        if self._buffered >= self._flush_at:
            self._flush()
        elif len(pieces) >= _JOIN_PIECES:
            self._blocks.append("".join(pieces))
            pieces.clear()

    def add_tool_call(self, name: str, arguments: str) -> None:
        """Count a tool call's name and arguments (pass whole strings: fragments may overcount)."""
        enc = self._encoding()
        self._counted += _n(enc, name) + _n(enc, arguments)

    @property
    def tokens(self) -> int:
        """Tokens so far, including the text still buffered."""
        text = self._joined()
        return self._counted + (_n(self._encoding(), text) if text else 0)

    @property
    def buffered_chars(self) -> int:
        """Characters held and not yet encoded; below :data:`MAX_BUFFERED_CHARS` after ``feed``."""
        return self._buffered

    def _encoding(self) -> tiktoken.Encoding:
        if self._enc is None:
            self._enc = encoding_for_model(self._model)
        return self._enc

    def _joined(self) -> str:
        """The buffered text as one string (kept as the only piece)."""
        text = "".join(self._blocks + self._pieces) if self._blocks else "".join(self._pieces)
        self._blocks = []
        self._pieces = [text] if text else []
        return text

    def _flush(self) -> None:
        """Encode the buffer up to its last cut point and keep the rest."""
        text = self._joined()
        cut = _last_cut(text, max(0, len(text) - _MAX_CARRY)) or len(text)
        self._counted += _n(self._encoding(), text[:cut])
        rest = text[cut:]
        self._pieces = [rest] if rest else []
        self._buffered = len(rest)
        self._flush_at = len(rest) + _FLUSH_AT
