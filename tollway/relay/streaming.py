"""Server-sent-events relay between an upstream's byte stream and the client, without I/O.

The engine reads upstream chunks, hands them to :meth:`StreamRelay.feed` and writes what it
returns; :meth:`StreamRelay.finish` is called when the upstream ends. Design:

* **Pass-through.** Bytes are cut into events at their terminating blank line (``\\n\\n`` or
  ``\\r\\n\\r\\n``, mixed endings allowed) and each event is forwarded byte-for-byte as soon as it is
  complete, comments and ``event:``/``id:``/``retry:`` lines included. Only the current incomplete
  event is held back, so memory is bounded by the largest single event (``max_event_bytes``, else
  :class:`StreamTooLarge`). Cuts happen at ``\\n`` only, so splits inside UTF-8 sequences are safe.
* **Usage.** The latest non-None ``usage_of(event)`` wins. A usage-only chunk (empty ``choices``,
  non-null ``usage``) is hidden from a client that did not ask for usage; a client that asked gets
  a synthesized usage chunk before ``[DONE]`` when the upstream sent none.
* **Counting.** Without upstream usage the answer is counted as it passes: chat deltas (content,
  reasoning, tool calls), legacy ``choices[*].text`` and Responses API deltas are fed to a
  :class:`TokenCounter`, which itself holds bounded state. Tool calls are buffered per call (at
  most ``_TOOL_BUFFER_CHARS`` in all) and given whole to ``add_tool_call``.
* **Cost.** An event whose bytes hold none of ``"delta"``, ``"content"``, ``"text"``, ``"usage``
  (which also matches Gemini's ``usageMetadata``), ``"arguments"``, ``"reasoning`` is never parsed:
  a few ``bytes.find`` scans (~0.1 µs each), no JSON. Events that mention ``"usage`` are parsed at
  once. Content events are only needed for counting, which the upstream's usage (asked for on
  every stream) makes unnecessary: they are kept unparsed (at most ``_DEFERRED_BYTES``, then parsed
  and counted in order) and parsed only when the answer must be counted after all; once a non-zero
  usage arrived they are not kept. A typical stream of ten content chunks and a usage chunk then
  costs one JSON parse instead of eleven.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from tollway.providers.base import Usage

__all__ = ["StreamRelay", "StreamTooLarge", "TokenCounter"]

DEFAULT_MAX_EVENT_BYTES: Final = 10 * 1024 * 1024
TOOL_CALL_TOKENS: Final = 7
"""new-api adds this many tokens per parallel tool call to a counted answer."""

_DELTA_KINDS: Final = "output_text refusal reasoning_text reasoning_summary_text function_call_arguments"
_DELTA_TYPES: Final = frozenset(f"response.{kind}.delta" for kind in _DELTA_KINDS.split())
_TOOL_BUFFER_CHARS: Final = 64 * 1024
_DEFERRED_BYTES: Final = 64 * 1024
_MAX_TOOL_CALLS: Final = 1024


class StreamTooLarge(Exception):
    """One upstream event exceeded ``max_event_bytes`` (the engine maps this to an error)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"upstream stream event of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class TokenCounter(Protocol):
    """Counts the completion tokens of an answer fed in fragments."""

    def feed(self, text: str) -> None:
        """Add a fragment of answer text."""
        ...

    def add_tool_call(self, name: str, arguments: str) -> None:
        """Count one whole tool call."""
        ...

    @property
    def tokens(self) -> int:
        """Tokens counted so far."""
        ...


def _payload(ev: bytes | bytearray) -> bytes | bytearray:
    """The data of an event: its ``data:`` lines joined with newlines (leading space removed)."""
    nl = ev.find(b"\n")
    if ev.startswith(b"data:") and nl >= len(ev) - 3:  # one line, then the blank line
        return ev[5:nl]  # JSON ignores the optional leading space and a trailing "\r"
    parts = [line[5:] for line in ev.splitlines() if line.startswith(b"data:")]
    return b"\n".join(p[1:] if p.startswith(b" ") else p for p in parts)


def _loads(data: bytes | bytearray) -> object:
    """Parsed JSON of ``data``, or None when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


_USAGE_NULL: Final = re.compile(rb'"usage"\s*:\s*null\b')


def _usage_is_null(ev: bytes | bytearray) -> bool:
    """The event's only ``"usage`` is ``"usage": null``: what OpenAI puts in every chunk but the
    last when usage is asked for. Such a chunk is a content chunk like any other (its parsing can
    be deferred); an answer quoting the word shows as a second ``"usage`` and is parsed."""
    if ev.count(b'"usage') != 1:
        return False
    return ev.find(b'"usage":null') >= 0 or _USAGE_NULL.search(ev) is not None


def _is_usage_only(chunk: dict[str, Any]) -> bool:
    """Non-null ``usage``, empty ``choices``: no choice, so no ``finish_reason`` that must be kept."""
    choices = chunk.get("choices")
    return chunk.get("usage") is not None and isinstance(choices, list) and not choices


class StreamRelay:
    """Forwards one SSE stream, captures or counts its usage, hides or synthesizes the usage chunk.

    ``events`` counts data events sent to the client (``[DONE]`` and a synthesized usage chunk
    included); ``first_event_seen`` turns True with the first one (for the first-response time).
    """

    def __init__(
        self,
        *,
        usage_of: Callable[[dict[str, Any]], Usage | None],
        counter: TokenCounter,
        client_wants_usage: bool,
        prompt_tokens: int | Callable[[], int],
        model: str,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._usage_of = usage_of
        self._counter = counter
        self._wants_usage = client_wants_usage
        self._prompt_tokens = prompt_tokens  # a callable is asked only if usage must be counted
        self._model = model
        self._max = max_event_bytes
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for "\n" in _buf
        self._tools: dict[tuple[int, int], tuple[str, list[str]]] = {}  # (choice, call) -> name, args
        self._tool_chars = 0
        self._tool_indices: dict[int, set[int]] = {}
        self._parallel = 0
        self._last_object = "chat.completion.chunk"
        self._deferred: list[bytes] = []  # content events not parsed yet, in stream order
        self._deferred_bytes = 0
        self.usage: Usage | None = None
        self.saw_done = False
        self.events = 0
        self.first_event_seen = False
        self.last_id: str | None = None
        self.last_created: int | None = None
        self.last_model: str | None = None

    def feed(self, data: bytes) -> bytes:
        """Take upstream bytes; return the bytes to send to the client now."""
        if not data:
            return b""
        held = bool(self._buf)
        buf: bytes | bytearray = data
        scan = 0
        if held:
            self._buf += data
            buf, scan = self._buf, self._scan
        n, find = len(buf), buf.find
        out: list[bytes | bytearray] = []
        start = emit = 0
        while (k := find(b"\n", scan)) >= 0:
            c = buf[k + 1] if k + 1 < n else -1
            if c == 10:
                end = k + 2
            elif c == 13 and k + 2 < n and buf[k + 2] == 10:
                end = k + 3
            elif c == -1 or (c == 13 and k + 2 >= n):  # may still become a blank line
                scan = k
                break
            else:
                scan = k + 1
                continue
            if end - start > self._max:
                raise StreamTooLarge(end - start, self._max)
            repl = self._on_event(buf if start == 0 and end == n else buf[start:end])
            if repl is not None:
                out += (buf[emit:start], repl)
                emit = end
            start = scan = end
        else:
            scan = n
        if n - start > self._max:
            raise StreamTooLarge(n - start, self._max)
        if out:
            out.append(buf[emit:start])
            result = b"".join(out)
        elif not held and emit == 0 and start == n:
            result = data
        else:
            result = bytes(buf[emit:start])
        if held:
            del self._buf[:start]
        elif start < n:
            self._buf = bytearray(buf[start:])
        self._scan = scan - start
        return result

    def finish(self) -> bytes:
        """The upstream ended: flush the pending event; never invents a ``[DONE]``.

        A pending event lacking only its blank line is processed and completed; one cut inside its
        data (not JSON, not ``[DONE]``) is dropped, as an SSE client would discard it anyway.
        """
        tail = bytes(self._buf)
        self._buf = bytearray()
        self._scan = 0
        if not tail.strip():
            return tail
        if tail.endswith(b"\r"):
            tail += b"\n"
        eol = b"\r\n" if b"\r\n" in tail else b"\n"
        event = tail + (eol if tail.endswith(b"\n") else eol + eol)
        if tail.startswith(b"data:") or tail.find(b"\ndata:") >= 0:
            data = _payload(event)
            if data.strip() != b"[DONE]" and _loads(data) is None:
                return b""  # "data: null" too: nothing a client could use
        repl = self._on_event(event)
        return event if repl is None else bytes(repl)

    def buffered_bytes(self) -> int:
        """Bytes of the incomplete event held back."""
        return len(self._buf)

    def _on_event(self, ev: bytes | bytearray) -> bytes | None:
        """Inspect one complete event: None to forward it as is, else the bytes to send instead."""
        find = ev.find  # bytes.find: "x in ev" is 2-3 times slower on short events
        if not (ev.startswith(b"data:") or find(b"\ndata:") >= 0):
            return None  # comment, or event:/id:/retry: lines without data
        chunk: object = None
        if find(b'"usage') >= 0 and not _usage_is_null(ev):
            chunk = _loads(_payload(ev))
            if self._deferred:  # counted before this chunk, unless its usage makes counting moot
                usage = self._usage_of(chunk) if isinstance(chunk, dict) else None
                if usage is not None and usage.total > 0:
                    self._deferred, self._deferred_bytes = [], 0
                else:
                    self._count_deferred()
        elif (
            find(b'"delta"') >= 0
            or find(b'"content"') >= 0
            or find(b'"text"') >= 0
            or find(b'"arguments"') >= 0
            or find(b'"reasoning') >= 0
        ):  # the keys of the module docstring, most frequent first
            self._defer(ev)
        if isinstance(chunk, dict):
            self._observe(chunk)
            if not self._wants_usage and chunk.get("usage") is not None and _is_usage_only(chunk):
                return b""
        elif find(b"[DONE]") >= 0 and _payload(ev).strip() == b"[DONE]":
            return self._on_done(ev)
        self.events += 1
        self.first_event_seen = True
        return None

    def _defer(self, ev: bytes | bytearray) -> None:
        """Keep a content event for counting later, unless the upstream's usage made it moot."""
        if self.usage is not None and self.usage.total > 0:
            return
        self._deferred.append(bytes(ev))
        self._deferred_bytes += len(ev)
        if self._deferred_bytes > _DEFERRED_BYTES:
            self._count_deferred()

    def _count_deferred(self) -> None:
        """Parse and count the kept content events, in order (before any later event is counted)."""
        if not self._deferred:
            return
        deferred, self._deferred, self._deferred_bytes = self._deferred, [], 0
        for ev in deferred:
            chunk = _loads(_payload(ev))
            if isinstance(chunk, dict):
                self._observe(chunk)

    def _on_done(self, ev: bytes | bytearray) -> bytes | None:
        """``[DONE]``: forward it, after a synthesized usage chunk when the client needs one."""
        first, self.saw_done = not self.saw_done, True
        if self.usage is None or self.usage.total <= 0:
            self._count_deferred()
        self._flush_tools(None)
        self.events += 1
        self.first_event_seen = True
        if not (first and self._wants_usage and self.usage is None):
            return None
        self.events += 1
        eol = b"\r\n\r\n" if ev.endswith(b"\r\n\r\n") else b"\n\n"
        return b"data: " + orjson.dumps(self._usage_chunk()) + eol + bytes(ev)

    def _usage_chunk(self) -> dict[str, Any]:
        """The chunk that reports :meth:`final_usage` to a client that asked for usage."""
        usage = self.final_usage()
        return {
            "id": self.last_id or "chatcmpl-tollway",
            "object": self._last_object,
            "created": self.last_created if self.last_created is not None else int(time.time()),
            "model": self.last_model or self._model,
            "choices": [],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total,
            },
        }

    def _observe(self, chunk: dict[str, Any]) -> None:
        """Capture usage and ids of a parsed chunk and count its answer text."""
        usage = self._usage_of(chunk)
        if usage is not None:
            self.usage = usage
        get = chunk.get
        if isinstance(v := get("id"), str):
            self.last_id = v
        if isinstance(v := get("created"), int):
            self.last_created = v
        if isinstance(v := get("model"), str):
            self.last_model = v
        choices = get("choices")
        if isinstance(choices, list):
            if get("object") == "text_completion":
                self._last_object = "text_completion"
            for pos, choice in enumerate(choices):
                if isinstance(choice, dict):
                    index = choice.get("index")
                    self._count_choice(index if isinstance(index, int) else pos, choice)
        elif (
            isinstance(v := get("delta"), str)
            and isinstance(kind := get("type"), str)
            and kind in _DELTA_TYPES
        ):
            self._counter.feed(v)

    def _count_choice(self, index: int, choice: dict[str, Any]) -> None:
        """Count one choice of a chat (``delta``) or legacy completions (``text``) chunk."""
        feed = self._counter.feed
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(v := delta.get("content"), str) and v:
                feed(v)
            if isinstance(v := delta.get("reasoning_content"), str) and v:
                feed(v)
            if isinstance(v := delta.get("reasoning"), str) and v:
                feed(v)
            if isinstance(calls := delta.get("tool_calls"), list) and calls:
                self._add_tool_fragments(index, calls)
        elif isinstance(v := choice.get("text"), str) and v:
            feed(v)
        if choice.get("finish_reason"):
            self._flush_tools(index)

    def _add_tool_fragments(self, choice: int, calls: list[Any]) -> None:
        """Buffer tool-call fragments per (choice, call index); a new index closes the others.

        Parallel calls are counted as the distinct call indices of one choice (new-api counts the
        length of one chunk's ``tool_calls``, which OpenAI keeps at 1 even for parallel calls).
        """
        seen = self._tool_indices.setdefault(choice, set())
        for pos, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            key = (choice, index if isinstance(index, int) else pos)
            if key not in self._tools:
                self._flush_tools(choice)
                self._tools[key] = ("", [])
                if len(seen) < _MAX_TOOL_CALLS:
                    seen.add(key[1])
            function = call.get("function")
            if not isinstance(function, dict):
                continue
            name, args = self._tools[key]
            if isinstance(v := function.get("name"), str) and v:
                name += v
                self._tools[key] = (name, args)
                self._tool_chars += len(v)
            if isinstance(v := function.get("arguments"), str) and v:
                args.append(v)
                self._tool_chars += len(v)
        self._parallel = max(self._parallel, len(seen), len(calls))
        if self._tool_chars > _TOOL_BUFFER_CHARS:
            for key, (name, args) in self._tools.items():  # counted in parts: may be a token over
                self._counter.add_tool_call(name, "".join(args))
                self._tools[key] = ("", [])
            self._tool_chars = 0

    def _flush_tools(self, choice: int | None) -> None:
        """Count the buffered tool calls of ``choice`` (of every choice for None)."""
        if not self._tools:
            return
        for key in [k for k in self._tools if choice is None or k[0] == choice]:
            name, args = self._tools.pop(key)
            self._tool_chars -= len(name) + sum(map(len, args))
            self._counter.add_tool_call(name, "".join(args))

    def final_usage(self) -> Usage:
        """The upstream's usage when it reported a non-zero one, else prompt + counted tokens.

        Counted: the counter's tokens plus ``TOOL_CALL_TOKENS`` per parallel tool call.
        """
        if self.usage is not None and self.usage.total > 0:
            return self.usage
        self._count_deferred()
        self._flush_tools(None)
        completion = self._counter.tokens + TOOL_CALL_TOKENS * self._parallel
        prompt = self._prompt_tokens
        return Usage(prompt_tokens=prompt() if callable(prompt) else prompt, completion_tokens=completion)
