"""The low-quota warning (new-api's ``checkAndSendQuotaNotify``), cheap enough for every settlement.

A warning fires when a settlement takes a user's balance across their threshold: balance before
≥ threshold > balance after. The threshold is the user's setting ``quota_warning_threshold``, else
the option ``QuotaRemindThreshold`` (1000 quota). A user who is topped up above the threshold and
spends below it again is warned again (the notifier's throttle still applies: 2 per 10 minutes).

The hot path (:meth:`QuotaWarnings.after_settlement`) is synchronous: a dict lookup, a clock read
and a few integer comparisons (about 0.3 µs). A user's threshold is cached for ``ttl`` seconds; when it is not known
yet the comparison is finished in the background once it is (read from the relay's in-memory
account cache, so normally without a database query), and nothing is missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tollway.ops.notify import KIND_QUOTA_EXCEED, QUOTA_REMIND_THRESHOLD, Notifier, option
from tollway.ops.notify_transports import Message
from tollway.options import QUOTA_PER_UNIT, SERVER_ADDRESS
from tollway.relay.health import OptionsReader

log = logging.getLogger("tollway.notify")

QUOTA_TITLE = "Your quota is running low"
QUOTA_CONTENT = (
    "Your remaining quota is {{value}}, below your warning threshold. "
    "Top up to keep your requests running: {{value}}"
)
THRESHOLD_TTL = 10.0
_DEFAULT = -1  # cached marker: the user has no threshold of their own
_MAX_PENDING = 64
_MAX_CACHED = 100_000


class HasSetting(Protocol):
    @property
    def setting(self) -> Mapping[str, Any]: ...


class UserSettings(Protocol):
    """What gives a user's setting: the relay's ``AccountCache`` (``runtime.relay.accounts``)."""

    async def user(self, user_id: int) -> HasSetting | None: ...


def user_threshold(setting: Mapping[str, Any]) -> int:
    """The user's own threshold in quota, or ``_DEFAULT`` (unset, zero, negative or not a number)."""
    value = setting.get("quota_warning_threshold")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value <= 0:
        return _DEFAULT
    return int(min(value, 2**62))


def format_usd(quota: int, per_unit: float) -> str:
    amount = quota / (per_unit or 500_000.0)
    return f"-${-amount:,.2f}" if amount < 0 else f"${amount:,.2f}"


class QuotaWarnings:
    def __init__(
        self,
        notifier: Notifier,
        options: OptionsReader,
        users: UserSettings,
        *,
        ttl: float = THRESHOLD_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._options = options
        self._users = users
        self._ttl = ttl
        self._clock = clock
        self._thresholds: dict[int, tuple[int, float]] = {}  # user → (threshold or _DEFAULT, expiry)
        self._pending: dict[int, list[tuple[int, int]]] = {}  # user → settlements awaiting the threshold
        self._tasks: set[asyncio.Task[None]] = set()

    def after_settlement(self, user_id: int, balance_before: int, balance_after: int) -> None:
        """Call after a settlement moved the user's balance from ``balance_before`` to
        ``balance_after`` (in quota). Never blocks, never raises on a lookup failure."""
        if balance_after >= balance_before:
            return
        cached = self._thresholds.get(user_id)
        if cached is None or cached[1] <= self._clock():
            self._defer(user_id, balance_before, balance_after)
            return
        threshold = cached[0] if cached[0] != _DEFAULT else self._default()
        if balance_before >= threshold > balance_after:
            self._warn(user_id, balance_after)

    def _default(self) -> int:
        return int(option(self._options, QUOTA_REMIND_THRESHOLD))

    def _defer(self, user_id: int, before: int, after: int) -> None:
        waiting = self._pending.get(user_id)
        if waiting is not None:
            if len(waiting) < _MAX_PENDING:
                waiting.append((before, after))
            return
        self._pending[user_id] = [(before, after)]
        task = asyncio.get_running_loop().create_task(self._resolve(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, user_id: int) -> None:
        threshold = _DEFAULT
        try:
            record = await self._users.user(user_id)
            if record is not None:
                threshold = user_threshold(record.setting)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the warning is best effort; the default threshold still applies
            log.warning("quota warning: cannot read the setting of user %d: %s", user_id, exc)
        if len(self._thresholds) >= _MAX_CACHED:
            now = self._clock()
            self._thresholds = {k: v for k, v in self._thresholds.items() if v[1] > now}
        self._thresholds[user_id] = (threshold, self._clock() + self._ttl)
        waiting = self._pending.pop(user_id, [])
        limit = threshold if threshold != _DEFAULT else self._default()
        crossed = [after for before, after in waiting if before >= limit > after]
        if crossed:
            self._warn(user_id, crossed[-1])

    def _warn(self, user_id: int, balance: int) -> None:
        per_unit = float(option(self._options, QUOTA_PER_UNIT))
        link = str(option(self._options, SERVER_ADDRESS)).rstrip("/") + "/topup"
        values = (format_usd(balance, per_unit), link)
        self._notifier.enqueue(user_id, Message(KIND_QUOTA_EXCEED, QUOTA_TITLE, QUOTA_CONTENT, values))

    def forget(self, user_id: int | None = None) -> None:
        """Drop cached thresholds (one user's, or all) so the next settlement reads them again."""
        if user_id is None:
            self._thresholds.clear()
        else:
            self._thresholds.pop(user_id, None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
