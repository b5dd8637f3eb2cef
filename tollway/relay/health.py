"""Channel health: which upstream failures disable a channel, and the status changes themselves.

A hard failure (bad key, deactivated account, no upstream quota) disables a channel at once. Soft
failures (timeouts, connection errors, 5xx) only do after ``ChannelFailureThreshold`` of them within
``ChannelFailureWindowSeconds``, so one flaky minute does not take a channel out (CONTRACT §4).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.db.models.channel import (
    CHANNEL_AUTO_DISABLED,
    CHANNEL_ENABLED,
    Ability,
    Channel,
)
from tollway.options import (
    AUTOMATIC_DISABLE_CHANNEL_ENABLED,
    REGISTRY,
    OptionError,
    OptionSpec,
)
from tollway.providers.base import UpstreamFailure
from tollway.relay.channel import TYPE_GEMINI, ChannelSnapshot

T = TypeVar("T")


def _at_least_one(value: int) -> None:
    if value < 1:
        raise OptionError("must be at least 1")


DEFAULT_DISABLE_KEYWORDS = (
    "Your credit balance is too low",
    "This organization has been disabled.",
    "You exceeded your current quota",
    "Permission denied",
    "The security token included in the request is invalid",
    "Operation not allowed",
    "Your account is not authorized",
)

CHANNEL_FAILURE_THRESHOLD = REGISTRY.declare("ChannelFailureThreshold", 5, _at_least_one)
CHANNEL_FAILURE_WINDOW_SECONDS = REGISTRY.declare("ChannelFailureWindowSeconds", 60, _at_least_one)
AUTOMATIC_DISABLE_KEYWORDS = REGISTRY.declare("AutomaticDisableKeywords", "\n".join(DEFAULT_DISABLE_KEYWORDS))

HARD_ERROR_CODES = frozenset({"invalid_api_key", "account_deactivated", "billing_not_active"})
# insufficient_user_quota: what an upstream new-api/one-api answers when our account there is empty.
HARD_ERROR_TYPES = frozenset(
    {"insufficient_quota", "insufficient_user_quota", "authentication_error", "permission_error", "forbidden"}
)


def parse_keywords(raw: str) -> tuple[str, ...]:
    """The ``AutomaticDisableKeywords`` option (one per line), lower-cased, blanks dropped."""
    return tuple(line.strip().lower() for line in raw.splitlines() if line.strip())


class FailureKind(Enum):
    HARD = "hard"  # disable now
    SOFT = "soft"  # disable after the threshold within the window
    NONE = "none"  # the client's fault, or a rate limit: never disables


def classify(
    failure: UpstreamFailure | None,
    *,
    status: int,
    timed_out: bool,
    connection_error: bool,
    channel_type: int,
    keywords: Sequence[str],
) -> FailureKind:
    """new-api ``ShouldDisableChannel`` for the hard cases, plus CONTRACT §4's soft ones.

    429 stays NONE: a rate limit says the key works, and new-api never disables for it.
    """
    if status == 401 or (status == 403 and channel_type == TYPE_GEMINI):
        return FailureKind.HARD
    if failure is not None:
        if failure.code is not None and str(failure.code) in HARD_ERROR_CODES:
            return FailureKind.HARD
        if failure.type in HARD_ERROR_TYPES:
            return FailureKind.HARD
        message = failure.message.lower()
        if message and any(k and k.lower() in message for k in keywords):
            return FailureKind.HARD
    if timed_out or connection_error or status == 0 or 500 <= status < 600:
        return FailureKind.SOFT
    return FailureKind.NONE


class OptionsReader(Protocol):
    """What :class:`ChannelHealth` needs of :class:`tollway.options.Options`."""

    def get(self, spec: OptionSpec[T]) -> T: ...


class ChannelHealth:
    """Per-process failure memory deciding when a channel must be auto-disabled.

    Soft failures are kept as timestamps per channel, pruned to the window and capped at the
    threshold, so memory stays bounded by channels × threshold. A success clears a channel's window:
    the threshold counts failures not interrupted by a working request. After a disable the same
    channel is not reported again for ``suppress_seconds`` — in-flight requests keep failing on it
    until the channel cache is rebuilt, and one notification is enough.
    """

    def __init__(
        self,
        options: OptionsReader,
        *,
        suppress_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._options = options
        self._suppress = suppress_seconds
        self._clock = clock
        self._failures: dict[int, deque[float]] = {}
        self._disabled_at: dict[int, float] = {}
        self._keywords: tuple[str, tuple[str, ...]] = ("", ())

    def keywords(self) -> tuple[str, ...]:
        """``AutomaticDisableKeywords`` parsed, re-parsed only when the option's text changes."""
        raw = self._options.get(AUTOMATIC_DISABLE_KEYWORDS)
        if raw != self._keywords[0]:
            self._keywords = (raw, parse_keywords(raw))
        return self._keywords[1]

    def record(
        self, channel: ChannelSnapshot, kind: FailureKind, reason: str, now: float | None = None
    ) -> bool:
        """Note a failed attempt; True when the caller must disable the channel now.

        ``reason`` is not kept: the caller passes it on to :func:`disable_channel`.
        """
        if kind is FailureKind.NONE or not channel.auto_ban or channel.status != CHANNEL_ENABLED:
            return False
        if not self._options.get(AUTOMATIC_DISABLE_CHANNEL_ENABLED):
            return False
        now = self._clock() if now is None else now
        last = self._disabled_at.get(channel.id)
        if last is not None and now - last < self._suppress:
            return False
        if kind is FailureKind.SOFT and not self._soft_limit_reached(channel.id, now):
            return False
        self._failures.pop(channel.id, None)
        self._remember_disable(channel.id, now)
        return True

    def _soft_limit_reached(self, channel_id: int, now: float) -> bool:
        threshold = max(self._options.get(CHANNEL_FAILURE_THRESHOLD), 1)
        horizon = now - self._options.get(CHANNEL_FAILURE_WINDOW_SECONDS)
        window = self._failures.setdefault(channel_id, deque())
        window.append(now)
        while window and (window[0] <= horizon or len(window) > threshold):
            window.popleft()
        return len(window) >= threshold

    def _remember_disable(self, channel_id: int, now: float) -> None:
        for stale in [cid for cid, at in self._disabled_at.items() if now - at >= self._suppress]:
            del self._disabled_at[stale]
        self._disabled_at[channel_id] = now

    def record_success(self, channel_id: int) -> None:
        """A working answer: forget the channel's soft failures (one dict operation, hot path)."""
        if self._failures:
            self._failures.pop(channel_id, None)

    def failures(self, channel_id: int) -> int:
        """Soft failures currently counted for a channel (for tests and the admin view)."""
        return len(self._failures.get(channel_id, ()))


def _merge_other_info(raw: str | None, updates: dict[str, Any]) -> str:
    try:
        info = json.loads(raw) if raw and raw.strip() else {}
    except ValueError:
        info = {}
    if not isinstance(info, dict):
        info = {}
    info.update(updates)
    return json.dumps(info, ensure_ascii=False)


async def _change_status(
    session: AsyncSession, channel_id: int, *, expected: int, new: int, reason: str, now: int
) -> bool:
    """Move a channel from ``expected`` to ``new`` status; a conditional UPDATE makes it race-safe."""
    result = await session.execute(
        update(Channel)
        .where(Channel.id == channel_id, Channel.status == expected)
        .values(status=new)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    other_info = await session.scalar(select(Channel.other_info).where(Channel.id == channel_id))
    merged = _merge_other_info(other_info, {"status_reason": reason, "status_time": now})
    await session.execute(
        update(Channel)
        .where(Channel.id == channel_id)
        .values(other_info=merged)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Ability)
        .where(Ability.channel_id == channel_id)
        .values(enabled=new == CHANNEL_ENABLED)
        .execution_options(synchronize_session=False)
    )
    return True


async def disable_channel(session: AsyncSession, channel_id: int, reason: str, now: int) -> bool:
    """Auto-disable (status 3) an enabled channel; a manually disabled one is left alone.

    Runs in the caller's transaction (the caller commits). Returns whether anything changed.
    """
    return await _change_status(
        session, channel_id, expected=CHANNEL_ENABLED, new=CHANNEL_AUTO_DISABLED, reason=reason, now=now
    )


async def enable_channel(session: AsyncSession, channel_id: int, now: int) -> bool:
    """Re-enable a channel only if it was auto-disabled (status 3); clears ``status_reason``.

    Runs in the caller's transaction (the caller commits). Returns whether anything changed.
    """
    return await _change_status(
        session, channel_id, expected=CHANNEL_AUTO_DISABLED, new=CHANNEL_ENABLED, reason="", now=now
    )
