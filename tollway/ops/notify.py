"""User and administrator notifications (new-api §7): quota warnings, channel status changes.

:meth:`Notifier.notify_user` and :meth:`Notifier.notify_root` only put the notice on an
in-process queue and return: no request ever waits for a mail server or a webhook. A background
task (:meth:`Notifier.start`) looks up the recipient's ``users.setting`` and delivers through the
transport chosen there (``notify_type``: email, webhook, bark or gotify; email by default; see
:mod:`tollway.ops.notify_transports` for the formats and the ``X-Webhook-Signature`` header).
Each delivery gets up to four attempts of at most 5 s each, 0.5 s, 1 s then 2 s apart; a failure
is logged once, as a warning, with URLs masked.

Throttle (new-api's ``NOTIFY_LIMIT_COUNT``/``NOTIFICATION_LIMIT_DURATION_MINUTE``): at most 2
notices per user and kind per 10 minutes, counted in Redis when configured (shared by every node),
else in this process.

:class:`QuotaWarnings` decides when a settlement took a user's balance below their warning
threshold and sends the ``quota_exceed`` notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import select

from tollway.db.engine import Database
from tollway.db.models import User
from tollway.db.models.user import ROLE_ROOT
from tollway.ops.mailer import (
    SMTP_ACCOUNT,
    SMTP_FROM,
    SMTP_PORT,
    SMTP_SERVER,
    SMTP_SSL_ENABLED,
    SMTP_TOKEN,
    Mailer,
    SmtpConfig,
)
from tollway.ops.masking import mask_sensitive
from tollway.ops.notify_transports import (
    DeliveryError,
    GuardedResolver,
    Message,
    PermanentFailure,
    send_bark,
    send_email,
    send_gotify,
    send_webhook,
)
from tollway.options import REGISTRY, OptionError, OptionSpec
from tollway.relay.health import OptionsReader

# redis (~6 MB per worker) is imported only when REDIS_CONN_STRING is set, and aiohttp (~8 MB) only
# when the first webhook, Bark or Gotify notice is sent: most workers never need either.
if TYPE_CHECKING:
    import aiohttp
    from redis.asyncio import Redis

log = logging.getLogger("tollway.notify")


def _not_negative(value: int) -> None:
    if value < 0:
        raise OptionError("QuotaRemindThreshold must not be negative")


NOTIFICATION_ALLOW_PRIVATE_TARGETS = REGISTRY.declare("NotificationAllowPrivateTargets", False)
QUOTA_REMIND_THRESHOLD = REGISTRY.declare("QuotaRemindThreshold", 1000, _not_negative)

KIND_QUOTA_EXCEED = "quota_exceed"
KIND_CHANNEL_UPDATE = "channel_update"
KIND_CHANNEL_TEST = "channel_test"

NOTIFY_LIMIT_COUNT = 2
NOTIFY_LIMIT_MINUTES = 10
ATTEMPTS = 4
FIRST_BACKOFF = 0.5
ATTEMPT_TIMEOUT = 5.0
QUEUE_SIZE = 1000
CONCURRENCY = 8
STOP_GRACE = 5.0


def option(options: OptionsReader, spec: OptionSpec[Any]) -> Any:
    """An option's value; its default when the options were built before this module declared it."""
    try:
        return options.get(spec)
    except KeyError:
        return spec.default


@dataclass(frozen=True)
class Recipient:
    user_id: int
    email: str
    setting: Mapping[str, Any]


class Directory(Protocol):
    """Where recipients come from (the users table in production)."""

    async def recipient(self, user_id: int) -> Recipient | None: ...

    async def root(self) -> Recipient | None: ...


class DatabaseDirectory:
    """Recipients read from ``users`` when a notice is delivered (never on the request path)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def recipient(self, user_id: int) -> Recipient | None:
        return await self._one(select(User).where(User.id == user_id, User.deleted_at.is_(None)))

    async def root(self) -> Recipient | None:
        query = select(User).where(User.role == ROLE_ROOT, User.deleted_at.is_(None)).order_by(User.id)
        return await self._one(query.limit(1))

    async def _one(self, query: Any) -> Recipient | None:
        async with self._db.session() as session:
            user = await session.scalar(query)
        if user is None:
            return None
        return Recipient(user.id, user.email or "", parse_setting(user.setting))


def parse_setting(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class NotifyThrottle:
    """At most ``limit`` notices per (user, kind) in a fixed window opened by the first one."""

    _SCRIPT = (
        "local n = redis.call('INCR', KEYS[1]) "
        "if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n"
    )

    def __init__(
        self,
        limit: int,
        window: float,
        redis: Redis | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window, self._redis, self._clock = limit, window, redis, clock
        self._windows: dict[tuple[int, str], tuple[float, int]] = {}
        self._redis_warned = False

    async def allow(self, user_id: int, kind: str) -> bool:
        if self._redis is not None:
            from redis.exceptions import RedisError  # loaded with redis already: a dict lookup

            try:
                key = f"tollway:notify:{user_id}:{kind}"
                count = await self._redis.eval(self._SCRIPT, 1, key, max(int(self.window), 1))
                return int(count) <= self.limit
            except (RedisError, OSError) as exc:
                if not self._redis_warned:
                    self._redis_warned = True
                    log.warning(
                        "notification throttle: Redis unavailable (%s); counting in this process", exc
                    )
        return self._allow_here(user_id, kind)

    def _allow_here(self, user_id: int, kind: str) -> bool:
        now = self._clock()
        if len(self._windows) > 10_000:
            self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
        ends, count = self._windows.get((user_id, kind), (0.0, 0))
        if ends <= now:
            ends, count = now + self.window, 0
        if count >= self.limit:
            return False
        self._windows[(user_id, kind)] = (ends, count + 1)
        return True


@dataclass(frozen=True)
class _Job:
    user_id: int | None  # None: the root user
    message: Message


class Notifier:
    """Queues notices and delivers them in the background; see the module docstring."""

    def __init__(
        self,
        options: OptionsReader,
        directory: Directory,
        *,
        redis_url: str = "",
        limit_count: int = NOTIFY_LIMIT_COUNT,
        limit_minutes: float = NOTIFY_LIMIT_MINUTES,
        attempts: int = ATTEMPTS,
        first_backoff: float = FIRST_BACKOFF,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._options = options
        self._directory = directory
        self._redis: Redis | None = None
        if redis_url.strip():
            from redis.asyncio import Redis

            self._redis = Redis.from_url(redis_url)
        self.throttle = NotifyThrottle(limit_count, limit_minutes * 60, self._redis)
        self._attempts = max(attempts, 1)
        self._backoff = first_backoff
        self._timeout = attempt_timeout
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(queue_size)
        self._http: aiohttp.ClientSession | None = None  # made by the first HTTP notice
        self._started = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    # ----- the API callers use ----------------------------------------------------------------

    async def notify_user(
        self, user_id: int, kind: str, title: str, content: str, values: Sequence[object] = ()
    ) -> bool:
        """Queue a notice for ``user_id``; False (logged) when the queue is full. Never waits."""
        return self.enqueue(user_id, Message(kind, title, content, tuple(str(v) for v in values)))

    async def notify_root(self, kind: str, title: str, content: str) -> bool:
        """Queue a notice for the root user (channel disabled/enabled, test results)."""
        return self.enqueue(None, Message(kind, title, content))

    async def notify_channel_status(
        self, channel_id: int, name: str, *, enabled: bool, reason: str = ""
    ) -> bool:
        """Tell the root user a channel was disabled or enabled again automatically. Throttled per
        channel and direction (new-api's ``channel_update_<id>_<status>``)."""
        state = "enabled again" if enabled else "disabled"
        title = f'Channel "{name}" (#{channel_id}) was {state}'
        content = f"{title} automatically" + (f": {reason}" if reason else ".")
        return await self.notify_root(f"{KIND_CHANNEL_UPDATE}_{channel_id}_{int(enabled)}", title, content)

    def enqueue(self, user_id: int | None, message: Message) -> bool:
        """The synchronous form of ``notify_user`` (``user_id`` None: the root user)."""
        job = _Job(user_id, message)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            log.warning("notification queue full: %s notice dropped", job.message.kind)
            return False
        return True

    # ----- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._dispatcher is not None:
            return
        self._started = True
        self._dispatcher = asyncio.create_task(self._dispatch(), name="notifications")

    def _session(self) -> aiohttp.ClientSession:
        """The HTTP session for webhook, Bark and Gotify notices, made (and aiohttp imported) on
        first use; closed by :meth:`stop`."""
        assert self._started, "Notifier.start() was not called"
        if self._http is None:
            import aiohttp

            resolver = GuardedResolver(
                lambda: bool(option(self._options, NOTIFICATION_ALLOW_PRIVATE_TARGETS))
            )
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=CONCURRENCY * 2),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._http

    async def drain(self) -> None:
        """Wait until every queued notice was delivered or given up (tests, shutdown)."""
        await self._queue.join()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Give queued and running deliveries ``grace`` seconds, then cancel what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.drain()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._started = False
        if self._redis is not None:
            await self._redis.aclose()

    # ----- delivery -----------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            job = await self._queue.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(job))
            self._deliveries.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._deliveries.discard(task)
        self._slots.release()
        self._queue.task_done()

    async def _handle(self, job: _Job) -> None:
        try:
            if job.user_id is None:
                recipient = await self._directory.root()
            else:
                recipient = await self._directory.recipient(job.user_id)
            if recipient is None:
                log.info("%s notice not sent: no such user", job.message.kind)
            elif await self.throttle.allow(recipient.user_id, job.message.kind):
                await self._deliver(recipient, job.message)
            else:
                log.info("%s notice for user %d throttled", job.message.kind, recipient.user_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s notice could not be handled", job.message.kind)

    async def _deliver(self, recipient: Recipient, message: Message) -> None:
        channel = str(recipient.setting.get("notify_type") or "email")
        last: DeliveryError | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                async with asyncio.timeout(self._timeout):
                    sent = await self._send(channel, recipient, message)
                if sent:
                    log.info("%s notice delivered to user %d by %s", message.kind, recipient.user_id, channel)
                return
            except PermanentFailure as exc:
                last = exc
                break
            except TimeoutError:
                last = DeliveryError(f"no answer within {self._timeout:g} s")
            except DeliveryError as exc:
                last = exc
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        target = str(recipient.setting.get(f"{channel}_url") or "") if channel != "email" else ""
        log.warning(
            "%s notice to user %d by %s%s failed after %d attempt(s): %s",
            message.kind,
            recipient.user_id,
            channel,
            f" ({mask_sensitive(target)})" if target else "",
            attempt,
            mask_sensitive(str(last)),
        )

    async def _send(self, channel: str, recipient: Recipient, message: Message) -> bool:
        """One attempt; False when the user's setting lacks what the channel needs (not retried)."""
        setting = recipient.setting
        assert self._started, "Notifier.start() was not called"
        allow_private = bool(option(self._options, NOTIFICATION_ALLOW_PRIVATE_TARGETS))
        if channel == "email":
            to = str(setting.get("notification_email") or recipient.email or "")
            if not to:
                log.info("user %d has no email address: %s notice skipped", recipient.user_id, message.kind)
                return False
            await send_email(Mailer(self._smtp()), to, message)
        elif channel == "webhook" and setting.get("webhook_url"):
            secret = str(setting.get("webhook_secret") or "")
            await send_webhook(
                self._session(), str(setting["webhook_url"]), secret, message, allow_private=allow_private
            )
        elif channel == "bark" and setting.get("bark_url"):
            await send_bark(self._session(), str(setting["bark_url"]), message, allow_private=allow_private)
        elif channel == "gotify" and setting.get("gotify_url") and setting.get("gotify_token"):
            url, token = str(setting["gotify_url"]), str(setting["gotify_token"])
            priority = setting.get("gotify_priority", 5)
            await send_gotify(self._session(), url, token, priority, message, allow_private=allow_private)
        else:
            log.info(
                "user %d has no usable %s setting: %s notice skipped",
                recipient.user_id,
                channel,
                message.kind,
            )
            return False
        return True

    def _smtp(self) -> SmtpConfig:
        o = self._options
        return SmtpConfig(
            server=str(option(o, SMTP_SERVER)).strip(),
            port=int(option(o, SMTP_PORT)),
            account=str(option(o, SMTP_ACCOUNT)).strip(),
            sender=str(option(o, SMTP_FROM)).strip(),
            password=str(option(o, SMTP_TOKEN)),
            ssl_enabled=bool(option(o, SMTP_SSL_ENABLED)),
        )
