"""A fake OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1, for the gateway's tests.

    async with FakeUpstream() as up:            # in the running event loop
        ...  # point a channel at up.base_url
    with FakeUpstream.in_thread() as up:        # own loop in a daemon thread (sync clients)
        ...

Every request is recorded (``up.requests``, ``up.last``, ``up.count(path)``). Failures are set on
command: ``up.fail_next(kind, times=1, path=None)``, ``up.set_mode(kind)``, ``up.respond_with(...)``,
``up.reset()``; see ``FAILURE_KINDS``. Paths in ``path=`` and ``count()`` are fnmatch patterns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from fnmatch import fnmatchcase
from typing import Any

import orjson
from aiohttp import web

from . import payloads
from .payloads import ERRORS, UpstreamConfig

FAILURE_KINDS = frozenset(
    {
        *ERRORS,
        "hang",
        "hang_headers",
        "reset_mid_stream",
        "invalid_json",
        "no_usage",
        "slow_stream",
        "empty_200",
    }
)
_NOT_JSON = b'{"id": "chatcmpl-fake", "choices": [ <html>'  # invalid_json: cut off, not JSON


@dataclass
class RecordedRequest:
    """One request as the fake upstream received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    json: Any | None
    body: bytes
    form: dict[str, str | bytes] | None = None  # multipart fields (files as bytes)
    deployment: str | None = None  # Azure-style routes

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def model(self) -> str | None:
        return self.json.get("model") if isinstance(self.json, dict) else None

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and bool(self.json.get("stream"))


@dataclass
class _Rule:
    kind: str  # a failure kind or "custom"
    times: int | None  # None = until reset
    path: str | None = None
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    """A request being answered: the aiohttp request, its record, the failure mode in force."""

    request: web.Request
    rec: RecordedRequest
    mode: str | None

    @property
    def body(self) -> dict[str, Any]:
        return self.rec.json if isinstance(self.rec.json, dict) else {}

    @property
    def model(self) -> str:
        """The request's model, or the Azure deployment when the body names none."""
        return str(self.body.get("model") or self.rec.deployment or "")


_Answer = Callable[[_Call], Awaitable[web.StreamResponse]]


class _Stopping(Exception):
    """Raised inside a handler when the server stops while it waits."""


class FakeUpstream:
    """A real HTTP server speaking the OpenAI API on a free port of 127.0.0.1."""

    def __init__(self, config: UpstreamConfig | None = None, **knobs: Any) -> None:
        """``knobs`` are ``UpstreamConfig`` fields, applied over ``config`` (or the defaults)."""
        self.config = config or UpstreamConfig()
        self.configure(**knobs)
        self.requests: list[RecordedRequest] = []
        self.port = 0
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ public API
    @property
    def base_url(self) -> str:
        """Origin without ``/v1`` (what a channel's base URL is set to)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """``base_url + "/v1"`` (what the ``openai`` SDK's ``base_url`` wants)."""
        return self.base_url + "/v1"

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def count(self, path: str | None = None) -> int:
        """Number of recorded requests, all or those whose path matches ``path``."""
        return sum(1 for r in self.requests if path is None or fnmatchcase(r.path, path))

    def configure(self, **knobs: Any) -> None:
        """Change ``UpstreamConfig`` fields, e.g. ``up.configure(content="hi", ttft=0.2)``."""
        for name, value in knobs.items():
            if not hasattr(self.config, name):
                raise AttributeError(f"UpstreamConfig has no field {name!r}")
            setattr(self.config, name, value)

    def long_stream(self, n_chunks: int) -> None:
        """Make streams send ``n_chunks`` one-character content chunks, generated lazily."""
        self.config.long_stream_chunks = n_chunks

    def fail_next(self, kind: str, times: int = 1, path: str | None = None) -> None:
        """Answer the next ``times`` requests (matching ``path``, if given) with failure ``kind``."""
        self._add(_Rule(self._check(kind), times, path))

    def set_mode(self, kind: str | None, path: str | None = None) -> None:
        """Answer every request (matching ``path``) with failure ``kind`` until reset; None clears."""
        with self._lock:
            self._rules = [r for r in self._rules if r.times is not None or r.path != path]
        if kind is not None:
            self._add(_Rule(self._check(kind), None, path))

    def respond_with(
        self,
        status: int,
        json_body: Any,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (None = until reset) with this status and body."""
        self._add(_Rule("custom", times, path, status, json_body, dict(headers or {})))

    def reset(self) -> None:
        """Back to healthy answers: drop every failure mode and custom response (not the log)."""
        with self._lock:
            self._rules.clear()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> FakeUpstream:
        """Start serving in the running event loop."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self._runner.cleanup()
            raise
        return self

    async def stop(self) -> None:
        """Stop serving; waiting handlers (hang, delays) are woken up and their connections aborted."""
        if self._runner is None:
            return
        assert self._stopping is not None
        self._stopping.set()
        await asyncio.sleep(0)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, config: UpstreamConfig | None = None, **knobs: Any) -> Iterator[FakeUpstream]:
        """Run an instance in its own event loop in a daemon thread; stopped and joined on exit."""
        up = cls(config, **knobs)
        up.start_in_thread()
        try:
            yield up
        finally:
            up.stop_thread()

    def start_in_thread(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._thread_main, args=(ready, errors), daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]

    def stop_thread(self) -> None:
        if self._thread is None or self._thread_loop is None:
            return
        self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
        self._thread.join(10)
        self._thread = None

    def _thread_main(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = self._thread_loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self.start())
        except BaseException as exc:
            errors.append(exc)
        ready.set()
        try:
            if not errors:
                loop.run_forever()
                loop.run_until_complete(self.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            self._thread_loop = None

    # ------------------------------------------------------------------ rules
    @staticmethod
    def _check(kind: str) -> str:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; known: {sorted(FAILURE_KINDS)}")
        return kind

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def _take(self, path: str) -> _Rule | None:
        """The rule answering this request: one-shot rules first (in order), then permanent ones."""
        with self._lock:
            for counted in (True, False):
                for rule in self._rules:
                    wrong_path = rule.path is not None and not fnmatchcase(path, rule.path)
                    if (rule.times is not None) != counted or wrong_path:
                        continue
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    # ------------------------------------------------------------------ plumbing
    async def _pause(self, seconds: float | None) -> None:
        """Sleep (None = until the server stops); raise _Stopping if the server stops first."""
        assert self._stopping is not None
        if self._stopping.is_set():
            raise _Stopping
        if seconds is not None and seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
            raise _Stopping

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        content_type = request.headers.get("Content-Type", "")
        body: Any = None
        form = None
        if content_type.startswith("multipart/"):
            form = _parse_multipart(content_type, raw)
        elif raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(raw)
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
            body=raw,
            form=form,
            deployment=request.match_info.get("deployment"),
        )
        self.requests.append(rec)
        return rec

    def _entry(self, answer: _Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp handler: record the request, apply the failure rule in force, else ``answer``."""

        async def handle(request: web.Request) -> web.StreamResponse:
            rec = await self._record(request)
            rule = self._take(request.path)
            try:
                if rule is None or rule.kind in ("no_usage", "slow_stream", "reset_mid_stream"):
                    return await answer(_Call(request, rec, rule.kind if rule else None))
                if rule.kind == "custom":
                    if isinstance(rule.body, bytes):
                        headers = {"Content-Type": "application/octet-stream", **rule.headers}
                        return web.Response(status=rule.status, body=rule.body, headers=headers)
                    return _json(rule.body, rule.status, rule.headers)
                if rule.kind in ERRORS:
                    status, err = payloads.failure_error(rule.kind)
                    return _json(err, status)
                if rule.kind in ("hang", "hang_headers"):
                    await self._pause(None)
                if rule.kind == "invalid_json":
                    return web.Response(body=_NOT_JSON, content_type="application/json")
                ctype = "text/event-stream" if rec.stream else "application/json"
                return web.Response(body=b"", content_type=ctype)  # empty_200
            except _Stopping:
                return _abort(request, web.Response(status=503))

        return handle

    async def _send(self, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        """A JSON answer, shaped by the mode in force (no_usage, reset_mid_stream) and ``ttft``."""
        if call.mode == "no_usage":
            body.pop("usage", None)
        await self._pause(self.config.ttft)
        if call.mode != "reset_mid_stream":
            return _json(body)
        data = orjson.dumps(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(call.request)
        await resp.write(data[: len(data) // 2])
        return _abort(call.request, resp)

    async def _stream(self, call: _Call, *, chat: bool) -> web.StreamResponse:
        """An SSE answer: chunks, a finish chunk, a usage chunk if asked (and allowed), [DONE]."""
        cfg, mode = self.config, call.mode
        usage = bool((call.body.get("stream_options") or {}).get("include_usage")) and mode != "no_usage"
        delay = cfg.slow_chunk_delay if mode == "slow_stream" else cfg.chunk_delay
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        if cfg.head_delay:
            await self._pause(cfg.head_delay)
        await resp.prepare(call.request)
        try:
            await self._pause(cfg.ttft)
            for i, event in enumerate(payloads.stream_events(cfg, call.model, chat=chat, usage=usage)):
                if i:
                    await self._pause(delay)
                await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
                if mode == "reset_mid_stream" and i == 2:
                    return _abort(call.request, resp)
            await resp.write(b"data: [DONE]\n\n")
        except _Stopping:
            return _abort(call.request, resp)
        except ConnectionError:  # the client went away
            pass
        return resp

    # ------------------------------------------------------------------ routes
    def _add_routes(self, app: web.Application) -> None:
        post: dict[str, _Answer] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": lambda c: self._send(c, payloads.embeddings(self.config, c.body)),
            "/v1/moderations": lambda c: self._send(c, payloads.moderations(c.body)),
            "/v1/images/generations": lambda c: self._send(c, payloads.images(c.body)),
            "/v1/audio/speech": self._speech,
            "/v1/audio/transcriptions": self._transcription,
            "/v1/audio/translations": self._transcription,
            "/v1/rerank": lambda c: self._send(c, payloads.rerank(self.config, c.body)),
            "/v1/responses": lambda c: self._send(c, payloads.response_object(self.config, c.model)),
        }
        for name in ("chat/completions", "completions", "embeddings"):
            post[f"/openai/deployments/{{deployment}}/{name}"] = post[f"/v1/{name}"]
        for path, answer in post.items():
            app.router.add_post(path, self._entry(answer))
        app.router.add_get("/v1/models", self._entry(lambda c: self._send(c, payloads.models(self.config))))
        app.router.add_route("*", "/{tail:.*}", self._entry(self._not_found))

    async def _chat(self, call: _Call) -> web.StreamResponse:
        if call.body.get("stream"):
            return await self._stream(call, chat=True)
        return await self._send(call, payloads.chat_completion(self.config, call.model))

    async def _completions(self, call: _Call) -> web.StreamResponse:
        if call.body.get("stream"):
            return await self._stream(call, chat=False)
        return await self._send(call, payloads.text_completion(self.config, call.model))

    async def _speech(self, call: _Call) -> web.StreamResponse:
        await self._pause(self.config.ttft)
        return web.Response(body=payloads.FAKE_AUDIO, content_type="audio/mpeg")

    async def _transcription(self, call: _Call) -> web.StreamResponse:
        if (call.rec.form or {}).get("response_format") in ("text", "srt", "vtt"):
            return web.Response(text=self.config.content, content_type="text/plain")
        return await self._send(call, {"text": self.config.content})

    async def _not_found(self, call: _Call) -> web.StreamResponse:
        message = f"Invalid URL ({call.request.method} {call.request.path})"
        return _json(payloads.error_body(message, "invalid_request_error"), 404)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(status=status, body=orjson.dumps(body), headers=headers)


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the TCP connection in the middle of an answer."""
    if request.transport is not None:
        request.transport.abort()
    return resp


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, str | bytes]:
    """Fields of a multipart/form-data body: text as str, files as bytes."""
    head = b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    fields: dict[str, str | bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = payload if part.get_filename() else payload.decode(errors="replace")
    return fields
