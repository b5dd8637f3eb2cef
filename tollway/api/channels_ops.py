"""Management routes that reach upstreams: channel tests (one, or all in the background), upstream
model lists and balances (reference §2.5; behaviour §2.3).

A test of all channels applies channel health as new-api does: with
``AutomaticDisableChannelEnabled`` an enabled channel that fails with a disabling error (bad key,
deactivated account, no upstream quota…) or answers slower than ``ChannelDisableThreshold``
seconds is disabled (status 3); with ``AutomaticEnableChannelEnabled`` an automatically disabled
channel that passes is enabled again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from tollway.api.channel_forms import check_base_url, check_type, parse
from tollway.api.channel_probe import ProbeOutcome, probe_channel, upstream_balance, upstream_models
from tollway.api.deps import AdminUser, RootUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.db.models import Channel, User
from tollway.db.models.channel import CHANNEL_AUTO_DISABLED, CHANNEL_ENABLED
from tollway.db.models.log import LOG_CONSUME
from tollway.errors import BusinessError, NotFound
from tollway.options import (
    AUTOMATIC_DISABLE_CHANNEL_ENABLED,
    AUTOMATIC_ENABLE_CHANNEL_ENABLED,
    REGISTRY,
    OptionError,
)
from tollway.providers.registry import ChannelType
from tollway.relay.channel import ChannelSnapshot, split_keys
from tollway.relay.health import FailureKind, disable_channel, enable_channel
from tollway.runtime import Runtime
from tollway.usage.audit import log_entry, record_log

log = logging.getLogger("tollway.api.channels")
router = APIRouter()

ROOT_USER_ID = 1  # new-api writes channel-test logs for user 1
TEST_LOG_NAME = "channel test"
BALANCE_CONCURRENCY = 8


def _non_negative(value: float) -> None:
    if value < 0:
        raise OptionError("must be at least 0")


CHANNEL_DISABLE_THRESHOLD = REGISTRY.declare("ChannelDisableThreshold", 5.0, _non_negative)
"""Seconds: a channel slower than this in a test of all channels is disabled (0 = never)."""


async def load_channel(runtime: Runtime, channel_id: int) -> ChannelSnapshot:
    async with runtime.db.session() as session:
        row = await session.get(Channel, channel_id)
        if row is None:
            raise NotFound("channel not found")
        return ChannelSnapshot.from_row(row)


# ----- tests ----------------------------------------------------------------------------------


async def _record(runtime: Runtime, channel: ChannelSnapshot, outcome: ProbeOutcome) -> None:
    """Store the response time and test time; a working channel also gets new-api's zero-quota
    consume log (user 1, token "channel test"), in the same transaction when the logs share it."""
    now = int(time.time())
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(Channel)
            .where(Channel.id == channel.id)
            .values(response_time=outcome.elapsed_ms, test_time=now)
        )
        if not outcome.success:
            return
        username = await session.scalar(select(User.username).where(User.id == ROOT_USER_ID))
        entry = log_entry(LOG_CONSUME, ROOT_USER_ID, username or "", TEST_LOG_NAME)
        entry.token_name = TEST_LOG_NAME
        entry.model_name = outcome.model
        entry.channel_id = channel.id
        entry.use_time = outcome.elapsed_ms // 1000
        if outcome.usage is not None:
            entry.prompt_tokens = outcome.usage.prompt_tokens
            entry.completion_tokens = outcome.usage.completion_tokens
        await record_log(runtime.db, entry, session=session)


async def run_test(runtime: Runtime, channel: ChannelSnapshot, model: str = "") -> ProbeOutcome:
    outcome = await probe_channel(runtime, channel, model)
    if outcome.sent:
        await _record(runtime, channel, outcome)
        runtime.relay.channels.changed()
    return outcome


@router.get("/channel/test/{channel_id:int}")
async def channel_test(
    channel_id: int, request: Request, runtime: RuntimeDep, _caller: AdminUser
) -> dict[str, Any]:
    """``{success, message, time}`` with ``time`` in seconds (new-api's shape, outside ``data``)."""
    channel = await load_channel(runtime, channel_id)
    outcome = await run_test(runtime, channel, request.query_params.get("model") or "")
    return {"success": outcome.success, "message": outcome.message, "time": outcome.elapsed_ms / 1000}


def _disabling_reason(runtime: Runtime, outcome: ProbeOutcome) -> str | None:
    if not outcome.success:
        return outcome.message if outcome.kind is FailureKind.HARD else None
    threshold = runtime.options.get(CHANNEL_DISABLE_THRESHOLD)
    if threshold > 0 and outcome.elapsed_ms > threshold * 1000:
        return f"response time {outcome.elapsed_ms / 1000:.2f}s exceeds the threshold {threshold:.2f}s"
    return None


class ChannelTester:
    """Tests every enabled or automatically disabled channel, one run at a time per process.

    Lives in ``app.state.channel_tester``; the run is an asyncio task that tests channels one
    after the other (as new-api does), so upstreams see one test request at a time.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> bool:
        """Start a run; False when one is already running."""
        if self.running:
            return False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="test all channels")
        return True

    async def wait(self) -> None:
        """Until the current run (if any) ends."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def run(self) -> None:
        """One run, awaited (the periodic job of ``CHANNEL_TEST_FREQUENCY``)."""
        if self.start():
            await self.wait()

    async def cancel(self) -> None:
        """Stop a run in progress (shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        runtime = self._runtime
        try:
            async with runtime.db.session() as session:
                rows = await session.scalars(
                    select(Channel)
                    .where(Channel.status.in_((CHANNEL_ENABLED, CHANNEL_AUTO_DISABLED)))
                    .order_by(Channel.id)
                )
                channels = [ChannelSnapshot.from_row(row) for row in rows]
            for channel in channels:
                try:
                    await self._judge(channel, await run_test(runtime, channel))
                except Exception:
                    log.exception("testing channel #%d failed", channel.id)
        except Exception:
            log.exception("the test of all channels stopped")
        finally:
            runtime.relay.channels.changed()

    async def _judge(self, channel: ChannelSnapshot, outcome: ProbeOutcome) -> None:
        """Disable a failing or slow channel, or re-enable a recovered one, as the options allow."""
        runtime, now = self._runtime, int(time.time())
        options = runtime.options
        reason = _disabling_reason(runtime, outcome)
        async with runtime.db.session() as session, session.begin():
            if channel.status == CHANNEL_ENABLED:
                if (
                    reason is None
                    or not channel.auto_ban
                    or not options.get(AUTOMATIC_DISABLE_CHANNEL_ENABLED)
                ):
                    return
                changed = await disable_channel(session, channel.id, reason, now)
                note = f"disabled by its test: {reason}"
            else:
                if (
                    not outcome.success
                    or reason is not None
                    or not options.get(AUTOMATIC_ENABLE_CHANNEL_ENABLED)
                ):
                    return
                changed = await enable_channel(session, channel.id, now)
                note = "passed its test and is enabled again"
        if changed:
            log.warning("channel #%d (%s) %s", channel.id, channel.name, note)
            runtime.relay.channels.changed()
            new_status = "enabled" if channel.status != CHANNEL_ENABLED else "disabled"
            runtime.metrics.channel_status_changes(str(channel.id), new_status).inc()
            await runtime.notifier.notify_channel_status(
                channel.id, channel.name, enabled=channel.status != CHANNEL_ENABLED, reason=reason or ""
            )


def channel_tester(request: Request, runtime: Runtime) -> ChannelTester:
    tester: ChannelTester | None = getattr(request.app.state, "channel_tester", None)
    if tester is None:
        tester = request.app.state.channel_tester = ChannelTester(runtime)
    return tester


@router.get("/channel/test")
async def channel_test_all(request: Request, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    if not channel_tester(request, runtime).start():
        raise BusinessError("a test of all channels is already running")
    return ok(message="testing all channels in the background: refresh to see the results")


# ----- upstream model lists -------------------------------------------------------------------


class FetchModelsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    base_url: str = ""
    type: int = int(ChannelType.OPENAI)
    key: str = ""


@router.get("/channel/fetch_models/{channel_id:int}")
async def fetch_models(channel_id: int, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """The model ids the channel's upstream lists at ``/v1/models``, asked with the channel's key."""
    return ok(await upstream_models(runtime, await load_channel(runtime, channel_id)))


@router.post("/channel/fetch_models")
async def fetch_models_for(
    runtime: RuntimeDep, _caller: RootUser, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """The same for a channel being created (root only: it sends a request to any address)."""
    form = parse(FetchModelsBody, body)
    channel = ChannelSnapshot(
        id=0,
        type=check_type(form.type),
        name="",
        base_url=check_base_url(form.base_url),
        keys=split_keys(form.key),
    )
    return ok(await upstream_models(runtime, channel))


# ----- balances -------------------------------------------------------------------------------


async def _store_balance(runtime: Runtime, channel_id: int, balance: float) -> None:
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(Channel)
            .where(Channel.id == channel_id)
            .values(balance=balance, balance_updated_time=int(time.time()))
        )


@router.get("/channel/update_balance/{channel_id:int}")
@router.get("/channel/update_balance/{channel_id:int}/", include_in_schema=False)
async def update_balance(channel_id: int, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """``{success, message, balance}`` (new-api's shape: the balance outside ``data``), in USD."""
    channel = await load_channel(runtime, channel_id)
    balance = await upstream_balance(runtime, channel)
    await _store_balance(runtime, channel.id, balance)
    runtime.relay.channels.changed()
    return {"success": True, "message": "", "balance": balance}


async def _refresh_balance(runtime: Runtime, channel: ChannelSnapshot, limit: asyncio.Semaphore) -> bool:
    """One channel of ``update_balance`` for all; an empty one is disabled as a failing one would be."""
    async with limit:
        try:
            balance = await upstream_balance(runtime, channel)
        except BusinessError:
            return False
        await _store_balance(runtime, channel.id, balance)
    if balance <= 0 and channel.auto_ban and runtime.options.get(AUTOMATIC_DISABLE_CHANNEL_ENABLED):
        reason = "the upstream balance is used up"
        async with runtime.db.session() as session, session.begin():
            changed = await disable_channel(session, channel.id, reason, int(time.time()))
        if changed:
            runtime.metrics.channel_status_changes(str(channel.id), "disabled").inc()
            await runtime.notifier.notify_channel_status(
                channel.id, channel.name, enabled=False, reason=reason
            )
    return True


@router.get("/channel/update_balance")
async def update_all_balances(runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Refresh every enabled channel's balance; ``data`` = how many upstreams reported one."""
    async with runtime.db.session() as session:
        rows = await session.scalars(select(Channel).where(Channel.status == CHANNEL_ENABLED))
        channels = [ChannelSnapshot.from_row(row) for row in rows]
    limit = asyncio.Semaphore(BALANCE_CONCURRENCY)
    results = await asyncio.gather(*(_refresh_balance(runtime, channel, limit) for channel in channels))
    runtime.relay.channels.changed()
    return ok(sum(results))
