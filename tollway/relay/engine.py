"""The relay pipeline: auth → price → reserve → route → forward → meter → settle → log.

The engine does not import the web framework: the HTTP layer turns a request into an
:class:`Incoming` and writes back the :class:`Reply` or :class:`StreamReply` it gets. Every request
that passes authentication and validation ends in exactly one log row (consume or error), and its
reservation is settled (charged) or refunded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from tollway.billing.balances import InsufficientQuota, LeaseBalanceStore, Reservation
from tollway.billing.pricing import (
    PRE_CONSUMED_QUOTA,
    Price,
    PriceTableCache,
    apply_trust_shortcut,
    reserve_quota,
)
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.errors import Forbidden, InternalError, ServiceUnavailable, TollwayError, UpstreamError
from tollway.ops.masking import mask_sensitive
from tollway.ops.metrics import OTHER, Metrics
from tollway.options import QUOTA_PER_UNIT, RETRY_TIMES, SELF_USE_MODE_ENABLED, Options
from tollway.providers.base import Provider, RelayRequest, UpstreamFailure, Usage
from tollway.providers.registry import ProviderRegistry
from tollway.relay.accounts import AccountCache
from tollway.relay.auth import Caller, authenticate
from tollway.relay.channel import ChannelSnapshot
from tollway.relay.channel_cache import ChannelCache
from tollway.relay.health import ChannelHealth, FailureKind, classify
from tollway.relay.http1_body import Response as UpstreamResponse
from tollway.relay.incoming import Incoming, Reply, StreamReply
from tollway.relay.outcome import Outcome, billing_for, completion_usage
from tollway.relay.requests import PromptTokens, RouteSpec, parse_relay_request, requested_max_tokens
from tollway.relay.routing import KeyPicker, map_status, should_retry
from tollway.relay.streaming import StreamRelay, StreamTooLarge
from tollway.relay.tokenizer import CompletionCounter, load_for_model
from tollway.relay.upstream import HOP_BY_HOP, UpstreamClient, UpstreamTimeout
from tollway.usage.log_writer import LogWriter

log = logging.getLogger("tollway.relay")

SATURATED = "the upstream channels of this group are saturated; please retry later"
SSE_HEADERS = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


@dataclass(slots=True)
class _Attempt:
    """What the last failed attempt left behind, to answer the client when no channel succeeds."""

    status: int = 0
    failure: UpstreamFailure | None = None
    error: TollwayError | None = None
    tried: list[int] = field(default_factory=list)


class RelayEngine:
    def __init__(
        self,
        *,
        options: Options,
        accounts: AccountCache,
        channels: ChannelCache,
        balances: LeaseBalanceStore,
        writer: LogWriter,
        providers: ProviderRegistry,
        upstream: UpstreamClient,
        health: ChannelHealth,
        on_channel_failure: Callable[[ChannelSnapshot, str], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.options = options
        self.accounts = accounts
        self.channels = channels
        self.balances = balances
        self.writer = writer
        self.providers = providers
        self.upstream = upstream
        self.health = health
        self.prices = PriceTableCache()
        self.keys = KeyPicker()
        self._on_channel_failure = on_channel_failure
        self.metrics = metrics or Metrics()
        self._pending: set[asyncio.Task[None]] = set()
        # Called after every charged settlement with (user id, balance before, balance after).
        self.on_settled: Callable[[int, int, int], None] | None = None

    async def drain(self) -> None:
        """Wait for log submissions that were waiting for room in the queue."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def sync(self) -> None:
        """Apply what other workers changed before handling a request (cheap when nothing did)."""
        self.accounts.sync()
        if self.channels.stale:
            await self.channels.reload()

    # ----- the pipeline ----------------------------------------------------------------------

    async def relay(
        self, incoming: Incoming, spec: RouteSpec, *, path_model: str | None = None
    ) -> Reply | StreamReply:
        await self.sync()
        caller = await authenticate(incoming, self.accounts, self.balances, self.options, self.prices)
        request, prompt = parse_relay_request(
            spec,
            method=incoming.method,
            body=incoming.body,
            content_type=incoming.headers.get("content-type", ""),
            query=incoming.query,
            path_model=path_model,
        )
        caller.check_model(request.model)
        outcome = Outcome(incoming, caller, request, prompt, started=time.monotonic(), route=spec.name)
        try:
            outcome.price = self._price(request.model, caller.group)
            reservation = await self._reserve(caller, outcome.price, prompt, request)
        except TollwayError as refusal:  # refused before any upstream call: logged, nothing to refund
            self._log_error(outcome, refusal)
            raise
        try:
            result = await self._forward(outcome, reservation)
        except TollwayError as error:
            self.balances.refund(reservation)
            self._log_error(outcome, error)
            raise
        except BaseException as error:  # cancelled (client gone) or a bug: never keep the reservation
            self.balances.refund(reservation)
            self._log_error(outcome, InternalError(f"request aborted: {type(error).__name__}"))
            raise
        return result

    def _price(self, model: str, group: str) -> Price:
        table = self.prices.get(self.options)
        price = table.price_for(
            model,
            group,
            self.options.get(QUOTA_PER_UNIT),
            self_use_mode=self.options.get(SELF_USE_MODE_ENABLED),
        )
        if price is None:
            raise InternalError(
                f"model {model} has no price: an administrator must set its ratio or price",
                code="model_price_error",
            )
        return price

    async def _reserve(
        self, caller: Caller, price: Price, prompt: PromptTokens, request: RelayRequest
    ) -> Reservation:
        user_balance = self.balances.estimate(ACCOUNT_USER, caller.user.id, caller.user.quota)
        if user_balance <= 0:
            raise Forbidden("insufficient user quota", code="insufficient_user_quota")
        token_id = None if caller.token.unlimited else caller.token.id
        token_balance = (
            None
            if token_id is None
            else self.balances.estimate(ACCOUNT_TOKEN, caller.token.id, caller.token.remain_quota)
        )
        amount = await self._reservation(price, prompt, request, user_balance, token_balance)
        try:
            return await self.balances.reserve(
                caller.user.id,
                token_id,
                amount,
                user_hint=caller.user.quota,
                token_hint=caller.token.remain_quota,
            )
        except InsufficientQuota as short:
            if short.kind == ACCOUNT_TOKEN:
                raise Forbidden(
                    f"token quota is not enough for this request (needs {amount})",
                    code="pre_consume_token_quota_failed",
                ) from None
            raise Forbidden(
                f"insufficient user quota (this request needs {amount})", code="insufficient_user_quota"
            ) from None

    async def _reservation(
        self,
        price: Price,
        prompt: PromptTokens,
        request: RelayRequest,
        user_balance: int,
        token_balance: int | None,
    ) -> int:
        """What to reserve: :func:`reserve_quota` after the trust rule, counting the prompt only
        when the answer depends on it. The reservation grows with the prompt, so when even the
        prompt's upper bound leaves a reservation the trust rule waives, the exact count would be
        waived too, and it is not made (nor the tokenizer loaded) for these callers."""
        max_tokens = requested_max_tokens(request)
        pre_consumed = self.options.get(PRE_CONSUMED_QUOTA)
        if max_tokens is not None and price.model_price is None and not prompt.counted:
            if prompt.upper_bound is not None:
                bound = reserve_quota(price, prompt.upper_bound, max_tokens, pre_consumed)
                if apply_trust_shortcut(bound, user_balance, token_balance) == 0:
                    return 0
            await load_for_model(request.model)
        amount = reserve_quota(price, prompt, max_tokens, pre_consumed)
        return apply_trust_shortcut(amount, user_balance, token_balance)

    async def _forward(self, outcome: Outcome, reservation: Reservation) -> Reply | StreamReply:
        caller, request = outcome.caller, outcome.request
        attempts = 1 if caller.pin is not None else self.options.get(RETRY_TIMES) + 1
        last = _Attempt(tried=outcome.tried)
        for _ in range(attempts):
            channel = self._next_channel(caller, request.model, outcome.tried)
            if channel is None:
                break
            if outcome.tried:
                self.metrics.retries(outcome.route).inc()
            outcome.tried.append(channel.id)
            provider = self.providers.get(channel.type)
            if provider is None:
                last.error = UpstreamError(
                    f"channel #{channel.id} uses an upstream dialect Tollway does not speak yet"
                )
                continue
            reply = await self._attempt(outcome, reservation, channel, provider, last)
            if reply is not None:
                return reply
            if not self._retryable(last, channel, caller.pin is not None):
                break
        raise self._final_error(outcome, last)

    def _next_channel(self, caller: Caller, model: str, tried: list[int]) -> ChannelSnapshot | None:
        if caller.pin is not None:
            channel = self.channels.by_id.get(caller.pin)
            if channel is None or channel.status != 1:
                raise Forbidden(f"channel #{caller.pin} does not exist or is disabled")
            return None if tried else channel
        return self.channels.selector.select(caller.group, model, tried)

    def _retryable(self, last: _Attempt, channel: ChannelSnapshot, pinned: bool) -> bool:
        if last.error is not None and last.failure is None and last.status == 0:
            return True  # no usable provider / invalid answer: try another channel
        return should_retry(
            last.failure,
            status=last.status,
            local=False,
            pinned=pinned,
            channel_type=channel.type,
            timed_out=last.status == 0,
        )

    async def _attempt(
        self,
        outcome: Outcome,
        reservation: Reservation,
        channel: ChannelSnapshot,
        provider: Provider,
        last: _Attempt,
    ) -> Reply | StreamReply | None:
        """One upstream call. Returns the reply on success; on failure records it in ``last``."""
        request = outcome.request
        _, key = self.keys.pick(channel)
        upstream_request = provider.build_request(channel, key, request)
        outcome.upstream_model = channel.upstream_model(request.model)
        try:
            response = await self.upstream.send(upstream_request)
        except UpstreamTimeout:
            self._failed(
                outcome,
                channel,
                last,
                0,
                None,
                "upstream did not answer in time",
                timed_out=True,
                error_kind="timeout",
            )
            last.error = UpstreamError("upstream timed out", status=504, code="upstream_timeout")
            return None
        except (OSError, TimeoutError) as exc:
            reason = f"upstream request failed: {type(exc).__name__}"
            self._failed(outcome, channel, last, 0, None, reason, error_kind="connection")
            last.error = UpstreamError("upstream request failed", status=502, code="do_request_failed")
            return None
        if 200 <= response.status < 300:
            if not request.stream:
                self.metrics.relay_ttfb(outcome.route, "false").observe(time.monotonic() - outcome.started)
            if request.stream:
                return self._stream(outcome, reservation, channel, provider, response)
            return await self._complete(outcome, reservation, channel, provider, response, last)
        body = await _read_and_release(response)
        failure = provider.parse_error(response.status, body)
        self._failed(outcome, channel, last, map_status(channel, response.status), failure, failure.message)
        return None

    def _failed(
        self,
        outcome: Outcome,
        channel: ChannelSnapshot,
        last: _Attempt,
        status: int,
        failure: UpstreamFailure | None,
        reason: str,
        *,
        timed_out: bool = False,
        error_kind: str = "",
    ) -> None:
        last.status, last.failure, last.error = status, failure, None
        self.metrics.upstream_errors(str(channel.id), error_kind or f"status_{status}").inc()
        log.warning(
            "channel #%d (%s) failed for model %s: %s%s",
            channel.id,
            channel.name,
            outcome.request.model,
            f"status {status}: " if status else "",
            mask_sensitive(reason),
        )
        kind = classify(
            failure,
            status=status,
            timed_out=timed_out,
            connection_error=status == 0 and not timed_out,
            channel_type=channel.type,
            keywords=self.health.keywords(),
        )
        if kind is not FailureKind.NONE and self.health.record(channel, kind, reason):
            self._on_channel_failure(channel, mask_sensitive(reason))

    async def _complete(
        self,
        outcome: Outcome,
        reservation: Reservation,
        channel: ChannelSnapshot,
        provider: Provider,
        response: UpstreamResponse,
        last: _Attempt,
    ) -> Reply | None:
        try:
            body = await response.read()
        except (OSError, TimeoutError):
            response.release()
            reason = "upstream dropped the connection while answering"
            self._failed(outcome, channel, last, 0, None, reason, error_kind="connection")
            last.error = UpstreamError("upstream request failed", status=502, code="do_request_failed")
            return None
        headers = _copy_headers(response)
        status = response.status
        response.release()
        parsed: Any = None
        if "json" in response.content_type or body[:1] in (b"{", b"["):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                reason = "upstream returned a 2xx answer that is not valid JSON"
                self._failed(outcome, channel, last, 0, None, reason, error_kind="invalid_body")
                last.error = UpstreamError(
                    "upstream returned an invalid response", status=502, code="bad_response_body"
                )
                return None
        usage = provider.usage_from_response(parsed) if isinstance(parsed, dict) else None
        if usage is None:
            await load_for_model(outcome.request.model)
            usage = completion_usage(outcome, parsed)
        self.health.record_success(channel.id)
        self._settle(outcome, reservation, channel, usage)
        return Reply(status, headers, body)

    def _stream(
        self,
        outcome: Outcome,
        reservation: Reservation,
        channel: ChannelSnapshot,
        provider: Provider,
        response: UpstreamResponse,
    ) -> StreamReply:
        request = outcome.request
        relay = StreamRelay(
            usage_of=provider.usage_from_event,
            counter=CompletionCounter(request.model),
            client_wants_usage=request.client_wants_usage,
            prompt_tokens=outcome.prompt,  # counted only if the upstream reports no usage
            model=request.model,
        )

        finished = False
        metrics = self.metrics
        metrics.active_streams.inc()

        def finish(problem: str | None, *, upstream_fault: bool = False) -> None:
            nonlocal finished
            if not finished:
                finished = True
                response.release()  # pooled when the stream was read to the end, else closed
                metrics.active_streams.dec()
                if upstream_fault:
                    metrics.upstream_errors(str(channel.id), "stream").inc()
                self._finish_stream(outcome, reservation, channel, relay, problem)

        async def chunks() -> AsyncGenerator[bytes, None]:
            problem: str | None = "the client went away"
            upstream_fault = False
            try:
                async for data in response.iter_chunks():
                    out = relay.feed(data)
                    if out:
                        if outcome.first_byte is None:
                            outcome.first_byte = now = time.monotonic()
                            metrics.relay_ttfb(outcome.route, "true").observe(now - outcome.started)
                        yield out
                tail = relay.finish()
                if tail:
                    yield tail
                if not relay.saw_done:
                    problem, upstream_fault = "upstream ended the stream without [DONE]", True
                else:
                    problem = None
            except (OSError, TimeoutError) as exc:
                problem, upstream_fault = f"upstream stream failed: {type(exc).__name__}", True
            except StreamTooLarge as exc:
                problem = str(exc)
            finally:
                finish(problem, upstream_fault=upstream_fault)

        body = chunks()

        async def close() -> None:
            """Called by the HTTP layer when the response ends, however it ends: settles a stream
            whose body was never iterated (the client left before the first byte)."""
            await body.aclose()
            finish("the client went away before the stream started")

        return StreamReply(
            200, list(SSE_HEADERS), body, close, lambda: response.ended, lambda: response.at_hand
        )

    def _finish_stream(
        self,
        outcome: Outcome,
        reservation: Reservation,
        channel: ChannelSnapshot,
        relay: StreamRelay,
        problem: str | None,
    ) -> None:
        """Runs exactly once per stream, whether it completed, failed or the client went away."""
        if problem:
            log.warning("channel #%d (%s): %s", channel.id, channel.name, mask_sensitive(problem))
        if relay.events == 0 and relay.usage is None:
            self.balances.refund(reservation)
            self._log_error(
                outcome, UpstreamError(problem or "the upstream stream carried no answer", status=502)
            )
            return
        self.health.record_success(channel.id)
        self._settle(outcome, reservation, channel, relay.final_usage(), stream=True)

    # ----- settlement and logs ---------------------------------------------------------------

    def _settle(
        self,
        outcome: Outcome,
        reservation: Reservation,
        channel: ChannelSnapshot,
        usage: Usage,
        *,
        stream: bool = False,
    ) -> None:
        assert outcome.price is not None
        cost, entry, charge = billing_for(outcome, channel, usage, stream=stream)
        self.balances.settle(reservation, cost)
        self._submit(entry, charge)
        self._observe(outcome, 200, channel.id)
        model, group, metrics = outcome.request.model, outcome.caller.group, self.metrics
        metrics.quota_spent(model, group).inc(cost)
        metrics.tokens(model, "prompt").inc(usage.prompt_tokens)
        metrics.tokens(model, "completion").inc(usage.completion_tokens)
        if cost > 0 and self.on_settled is not None:
            after = self.balances.balance(ACCOUNT_USER, reservation.user_id, outcome.caller.user.quota)
            self.on_settled(reservation.user_id, after + cost, after)

    def _log_error(self, outcome: Outcome, error: TollwayError) -> None:
        entry = outcome.error_entry(error, self.channels.by_id)
        self._submit(entry, None)
        self._observe(outcome, error.status, outcome.tried[-1] if outcome.tried else 0)

    def _observe(self, outcome: Outcome, status: int, channel_id: int) -> None:
        """Count the request once, when its log row is queued. Models are labelled only once a
        channel was chosen for them, so clients cannot invent label values."""
        metrics, route = self.metrics, outcome.route
        model = outcome.request.model if outcome.tried else OTHER
        stream = "true" if outcome.request.stream else "false"
        metrics.relay_requests(route, str(status), model, str(channel_id), outcome.caller.group).inc()
        metrics.relay_duration(route, stream).observe(time.monotonic() - outcome.started)

    def _submit(self, entry: Any, charge: Any) -> None:
        if not self.writer.submit_nowait(entry, charge):
            # The queue is full: wait for room in the background rather than lose the row.
            task = asyncio.get_running_loop().create_task(self.writer.submit(entry, charge))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _final_error(self, outcome: Outcome, last: _Attempt) -> TollwayError:
        if not outcome.tried:
            return ServiceUnavailable(
                f"no available channel for model {outcome.request.model} in group {outcome.caller.group}",
                code="model_not_available",
            )
        if last.failure is not None:
            failure = last.failure
            status = last.status or failure.status
            message = SATURATED if status == 429 else failure.message
            return UpstreamError(
                message, status=status, type=failure.type, code=failure.code, param=failure.param
            )
        return last.error or UpstreamError("upstream request failed", status=502)


async def _read_and_release(response: UpstreamResponse, limit: int = 1 << 20) -> bytes:
    try:
        return await response.read_limited(limit)
    except (OSError, TimeoutError):
        return b""
    finally:
        response.release()


def _copy_headers(response: UpstreamResponse) -> list[tuple[str, str]]:
    seen: set[str] = set()
    headers: list[tuple[str, str]] = []
    for name, value in response.headers:  # names already lower-cased
        if name in HOP_BY_HOP or name in seen:
            continue
        seen.add(name)
        headers.append((name, value))
    return headers
