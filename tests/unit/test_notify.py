"""Notifications against real local servers: an SMTP sink, and aiohttp listeners standing in for
webhook, Bark and Gotify receivers. Also the retry schedule, the throttle, the private-address
guard and the low-quota warning's crossing rule."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote

import pytest
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy import update

from tests.api.test_mailer import SmtpSink
from tests.conftest import AppHarness
from tests.seed import create_user
from tollway.db.models import User
from tollway.ops.mailer import SMTP_FROM, SMTP_PORT, SMTP_SERVER
from tollway.ops.notify import (
    KIND_CHANNEL_UPDATE,
    KIND_QUOTA_EXCEED,
    NOTIFICATION_ALLOW_PRIVATE_TARGETS,
    QUOTA_REMIND_THRESHOLD,
    DatabaseDirectory,
    Notifier,
    NotifyThrottle,
    Recipient,
)
from tollway.ops.notify_transports import (
    SIGNATURE_HEADER,
    GuardedResolver,
    Message,
    TargetRefused,
    check_target,
    email_html,
    is_public,
)
from tollway.ops.quota_warnings import QUOTA_TITLE, QuotaWarnings, format_usd
from tollway.options import QUOTA_PER_UNIT, SERVER_ADDRESS, OptionSpec

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONTENT = "Balance {{value}}; top up at {{value}}"
VALUES = ("$1.50", "https://gw.example.com/topup")


class FakeOptions:
    def __init__(self, **values: Any) -> None:
        self.values = values

    def get(self, spec: OptionSpec[Any]) -> Any:
        return self.values.get(spec.name, spec.default)


class FakeDirectory:
    def __init__(self) -> None:
        self.users: dict[int, Recipient] = {}
        self.root_id: int | None = None

    def add(self, user_id: int, email: str = "", **setting: Any) -> None:
        self.users[user_id] = Recipient(user_id, email, setting)

    async def recipient(self, user_id: int) -> Recipient | None:
        return self.users.get(user_id)

    async def root(self) -> Recipient | None:
        return self.users.get(self.root_id) if self.root_id is not None else None


@dataclass
class Hit:
    method: str
    path: str
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class FakeTarget:
    """An HTTP receiver on 127.0.0.1 recording every request. The first ``fail_first`` requests
    (all of them with ``always_fail``) get ``fail_status``; ``delay`` holds each answer back."""

    fail_first: int = 0
    always_fail: bool = False
    fail_status: int = 500
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits.append(
            Hit(
                request.method,
                request.path,
                request.raw_path,
                parse_qs(request.query_string),
                dict(request.headers),
                body,
                time.monotonic(),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.always_fail or len(self.hits) <= self.fail_first:
            return web.Response(status=self.fail_status, text="nope")
        return web.json_response({"ok": True})


@pytest.fixture
async def target() -> AsyncIterator[FakeTarget]:
    server = FakeTarget()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    server = SmtpSink()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()


NotifierFactory = Callable[..., Awaitable[Notifier]]


@pytest.fixture
async def make_notifier(directory: FakeDirectory) -> AsyncIterator[NotifierFactory]:
    started: list[Notifier] = []

    async def build(options: FakeOptions | None = None, **kwargs: Any) -> Notifier:
        options = options or FakeOptions(**{NOTIFICATION_ALLOW_PRIVATE_TARGETS.name: True})
        notifier = Notifier(options, directory, **kwargs)
        await notifier.start()
        started.append(notifier)
        return notifier

    yield build
    for notifier in started:
        await notifier.stop(grace=0)


async def drained(notifier: Notifier, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        await notifier.drain()


# ----- transports ----------------------------------------------------------------------------


async def test_email_goes_to_the_notification_address_with_values_filled(
    sink: SmtpSink, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    options = FakeOptions(
        **{SMTP_SERVER.name: "127.0.0.1", SMTP_PORT.name: sink.port, SMTP_FROM.name: "noreply@tollway.test"}
    )
    directory.add(1, "account@example.com", notify_type="email", notification_email="alerts@example.com")
    directory.add(2, "bob@example.com")  # no setting at all: email to the account address
    notifier = await make_notifier(options)
    assert await notifier.notify_user(1, KIND_QUOTA_EXCEED, "Low <quota>", CONTENT, VALUES)
    assert await notifier.notify_user(2, KIND_QUOTA_EXCEED, "Low quota", CONTENT, VALUES)
    await drained(notifier)
    by_recipient = {mail.recipients[0]: mail for mail in sink.received}  # delivered concurrently
    assert sorted(by_recipient) == ["alerts@example.com", "bob@example.com"]
    first = by_recipient["alerts@example.com"]
    assert first.message["Subject"] == "Low <quota>"
    assert "Balance $1.50; top up at" in first.html
    assert '<a href="https://gw.example.com/topup">https://gw.example.com/topup</a>' in first.html


def test_email_html_escapes_content_and_values() -> None:
    html = email_html(Message("k", "t", "<b>{{value}}</b>\nnext", ("<script>",)))
    assert html == "<p>&lt;b&gt;&lt;script&gt;&lt;/b&gt;<br>next</p>"


async def test_webhook_posts_json_signed_with_the_secret(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    secret = "whsec-" + uuid.uuid4().hex
    directory.add(1, notify_type="webhook", webhook_url=target.url("/hooks/tollway"), webhook_secret=secret)
    notifier = await make_notifier()
    before = int(time.time())
    await notifier.notify_user(1, KIND_QUOTA_EXCEED, "Low quota", CONTENT, VALUES)
    await drained(notifier)
    assert len(target.hits) == 1
    hit = target.hits[0]
    assert (hit.method, hit.path) == ("POST", "/hooks/tollway")
    assert hit.headers["Content-Type"] == "application/json"
    expected = hmac.new(secret.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hit.headers[SIGNATURE_HEADER], expected)
    payload = json.loads(hit.body)
    assert payload["type"] == KIND_QUOTA_EXCEED
    assert payload["title"] == "Low quota"
    assert payload["content"] == CONTENT  # placeholders kept, as new-api sends them
    assert payload["values"] == list(VALUES)
    assert before <= payload["timestamp"] <= int(time.time())


async def test_webhook_without_secret_is_unsigned_and_omits_empty_values(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    directory.root_id = 7
    directory.add(7, notify_type="webhook", webhook_url=target.url("/root"))
    notifier = await make_notifier()
    await notifier.notify_channel_status(3, "openai-main", enabled=False, reason="invalid API key")
    await drained(notifier)
    assert len(target.hits) == 1
    assert SIGNATURE_HEADER not in target.hits[0].headers
    payload = json.loads(target.hits[0].body)
    assert "values" not in payload
    assert payload["type"] == f"{KIND_CHANNEL_UPDATE}_3_0"
    assert payload["title"] == 'Channel "openai-main" (#3) was disabled'
    assert payload["content"].endswith("automatically: invalid API key")


async def test_bark_substitutes_escaped_title_and_content_in_the_url(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    directory.add(1, notify_type="bark", bark_url=target.url("/devkey/{{title}}/{{content}}?group=tollway"))
    notifier = await make_notifier()
    await notifier.notify_user(1, KIND_QUOTA_EXCEED, "Low quota / soon", CONTENT, VALUES)
    await drained(notifier)
    assert len(target.hits) == 1
    hit = target.hits[0]
    assert hit.method == "GET"
    assert hit.headers["User-Agent"] == "OneAPI-Bark-Notify/1.0"
    filled = "Balance $1.50; top up at https://gw.example.com/topup"
    assert (
        hit.raw_path == f"/devkey/{quote('Low quota / soon', safe='')}/{quote(filled, safe='')}?group=tollway"
    )
    assert hit.query == {"group": ["tollway"]}


async def test_gotify_posts_title_message_and_priority(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    directory.add(
        1, notify_type="gotify", gotify_url=target.url("/gotify/"), gotify_token="tok&en", gotify_priority=8
    )
    directory.add(
        2, notify_type="gotify", gotify_url=target.url("/gotify"), gotify_token="t2", gotify_priority=99
    )
    notifier = await make_notifier()
    await notifier.notify_user(1, KIND_QUOTA_EXCEED, "Low quota", CONTENT, VALUES)
    await notifier.notify_user(2, KIND_QUOTA_EXCEED, "Low quota", CONTENT, VALUES)
    await drained(notifier)
    by_token = {hit.query["token"][0]: hit for hit in target.hits}
    first = by_token["tok&en"]
    assert (first.method, first.path) == ("POST", "/gotify/message")
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(first.body) == {
        "title": "Low quota",
        "message": "Balance $1.50; top up at https://gw.example.com/topup",
        "priority": 8,
    }
    assert json.loads(by_token["t2"].body)["priority"] == 5  # out of range: new-api's default


# ----- retries, failures, throttle -------------------------------------------------------------


async def test_retries_with_backoff_until_the_target_accepts(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    target.fail_first = 2
    directory.add(1, notify_type="webhook", webhook_url=target.url("/flaky"))
    notifier = await make_notifier()
    await notifier.notify_user(1, KIND_QUOTA_EXCEED, "t", "c")
    await drained(notifier)
    assert len(target.hits) == 3  # two failures, one delivery
    gaps = [b.at - a.at for a, b in zip(target.hits, target.hits[1:], strict=False)]
    assert 0.45 <= gaps[0] < 0.9
    assert 0.95 <= gaps[1] < 1.6


async def test_a_dead_target_never_blocks_and_is_given_up_after_four_attempts(
    target: FakeTarget,
    directory: FakeDirectory,
    make_notifier: NotifierFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tollway.notify")
    target.always_fail = True
    secret_path = "/hook/supersecretpathtoken"
    directory.add(1, notify_type="webhook", webhook_url=target.url(secret_path), webhook_secret="s3cr3t")
    notifier = await make_notifier(first_backoff=0.05)
    started = time.perf_counter()
    for _ in range(2):
        assert await notifier.notify_user(1, f"kind-{uuid.uuid4().hex}", "t", "c")
    assert time.perf_counter() - started < 0.05  # queued, not delivered, on the caller's time
    await drained(notifier)
    assert len(target.hits) == 8  # 2 notices x 4 attempts
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("after 4 attempt(s)" in r.getMessage() for r in warnings)
    assert not any(
        "supersecretpathtoken" in r.getMessage() or "s3cr3t" in r.getMessage() for r in caplog.records
    )


async def test_a_definite_refusal_is_not_retried(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    target.always_fail, target.fail_status = True, 404
    directory.add(1, notify_type="webhook", webhook_url=target.url("/gone"))
    notifier = await make_notifier(first_backoff=0.05)
    await notifier.notify_user(1, "k", "t", "c")
    await drained(notifier)
    assert len(target.hits) == 1


async def test_each_attempt_is_bounded_by_the_timeout(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    target.delay = 0.5
    directory.add(1, notify_type="webhook", webhook_url=target.url("/slow"))
    notifier = await make_notifier(attempt_timeout=0.2, first_backoff=0.05, attempts=2)
    started = time.monotonic()
    await notifier.notify_user(1, "k", "t", "c")
    await drained(notifier)
    assert len(target.hits) == 2
    assert time.monotonic() - started < 1.0


async def test_throttle_allows_two_per_user_and_kind(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    directory.add(1, notify_type="webhook", webhook_url=target.url("/u1"))
    directory.add(2, notify_type="webhook", webhook_url=target.url("/u2"))
    notifier = await make_notifier()
    for _ in range(4):
        await notifier.notify_user(1, KIND_QUOTA_EXCEED, "t", "c")
    await notifier.notify_user(1, "other_kind", "t", "c")
    await notifier.notify_user(2, KIND_QUOTA_EXCEED, "t", "c")
    await drained(notifier)
    paths = sorted(hit.path for hit in target.hits)
    assert paths == ["/u1", "/u1", "/u1", "/u2"]  # 2 quota_exceed + 1 other_kind for user 1


async def test_memory_throttle_window_reopens() -> None:
    now = [0.0]
    throttle = NotifyThrottle(2, 600, clock=lambda: now[0])
    assert [await throttle.allow(1, "k") for _ in range(3)] == [True, True, False]
    now[0] = 599.0
    assert not await throttle.allow(1, "k")
    now[0] = 600.0
    assert await throttle.allow(1, "k")


async def test_redis_throttle_is_shared_and_expires() -> None:
    redis = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    kind = f"test-{uuid.uuid4().hex}"
    try:
        first, second = NotifyThrottle(2, 600, redis), NotifyThrottle(2, 600, redis)  # two "nodes"
        assert [await first.allow(5, kind), await second.allow(5, kind), await first.allow(5, kind)] == [
            True,
            True,
            False,
        ]
        ttl = await redis.ttl(f"tollway:notify:5:{kind}")
        assert 590 <= ttl <= 600
    finally:
        await redis.delete(f"tollway:notify:5:{kind}")
        await redis.aclose()


async def test_redis_down_falls_back_to_counting_here(caplog: pytest.LogCaptureFixture) -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        throttle = NotifyThrottle(1, 600, redis)
        assert [await throttle.allow(1, "k"), await throttle.allow(1, "k")] == [True, False]
    finally:
        await redis.aclose()
    assert sum("Redis unavailable" in r.getMessage() for r in caplog.records) == 1


# ----- private targets -----------------------------------------------------------------------


async def test_private_targets_are_refused_by_default(
    target: FakeTarget,
    directory: FakeDirectory,
    make_notifier: NotifierFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory.add(1, notify_type="webhook", webhook_url=target.url("/hook"))
    directory.add(2, notify_type="bark", bark_url=f"http://localhost:{target.port}/{{{{title}}}}")
    directory.add(3, notify_type="gotify", gotify_url=f"http://[::1]:{target.port}", gotify_token="x")
    notifier = await make_notifier(FakeOptions(), first_backoff=0.05)
    for user_id in (1, 2, 3):
        await notifier.notify_user(user_id, "k", "t", "c")
    await drained(notifier)
    assert target.hits == []
    refused = [r.getMessage() for r in caplog.records if "private or local address" in r.getMessage()]
    assert len(refused) == 3
    assert all("after 1 attempt(s)" in message for message in refused)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_check_target_refuses_bad_schemes_and_private_hosts() -> None:
    for url in (
        "ftp://example.com/x",
        "http:///nohost",
        "file:///etc/passwd",
        "http://127.0.0.1/x",
        "http://localhost/",
    ):
        with pytest.raises(TargetRefused):
            await check_target(url, allow_private=False)
    await check_target("http://127.0.0.1/x", allow_private=True)
    await check_target("https://93.184.215.14/x", allow_private=False)


async def test_guarded_resolver_refuses_private_answers_at_connect_time() -> None:
    allowed = [False]
    resolver = GuardedResolver(lambda: allowed[0])
    try:
        with pytest.raises(OSError, match="private or local"):
            await resolver.resolve("localhost", 80)
        allowed[0] = True
        results = await resolver.resolve("localhost", 80)
        assert results and all(not is_public(r["host"]) for r in results)
    finally:
        await resolver.close()


# ----- quota warnings ------------------------------------------------------------------------


class SpyNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(FakeOptions(), FakeDirectory())
        self.sent: list[tuple[int | None, Message]] = []

    def enqueue(self, user_id: int | None, message: Message) -> bool:
        self.sent.append((user_id, message))
        return True


class FakeUsers:
    def __init__(self) -> None:
        self.settings: dict[int, dict[str, Any]] = {}
        self.lookups = 0

    async def user(self, user_id: int) -> Any:
        self.lookups += 1
        setting = self.settings.get(user_id)
        return None if setting is None else SimpleNamespace(setting=setting)


QUOTA_OPTIONS = FakeOptions(
    **{
        QUOTA_PER_UNIT.name: 1000.0,
        SERVER_ADDRESS.name: "https://gw.example.com/",
        QUOTA_REMIND_THRESHOLD.name: 1000,
    }
)


async def settled(warnings: QuotaWarnings) -> None:
    """Let the background threshold lookups finish."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_quota_warning_fires_once_per_crossing_and_again_after_a_top_up() -> None:
    spy, users = SpyNotifier(), FakeUsers()
    users.settings[1] = {}
    warnings = QuotaWarnings(spy, QUOTA_OPTIONS, users)
    warnings.after_settlement(1, 2000, 1500)  # first sight: threshold looked up in the background
    await settled(warnings)
    warnings.after_settlement(1, 1500, 1000)  # down to the threshold, not below it
    assert spy.sent == []
    warnings.after_settlement(1, 1000, 900)  # crosses 1000
    warnings.after_settlement(1, 900, 500)
    warnings.after_settlement(1, 500, 500)
    assert len(spy.sent) == 1
    warnings.after_settlement(1, 5000, 4000)  # topped up in between
    warnings.after_settlement(1, 4000, 800)  # crosses again
    assert len(spy.sent) == 2
    user_id, message = spy.sent[0]
    assert user_id == 1
    assert (message.kind, message.title) == (KIND_QUOTA_EXCEED, QUOTA_TITLE)
    assert message.values == ("$0.90", "https://gw.example.com/topup")
    assert message.filled().startswith("Your remaining quota is $0.90")
    assert users.lookups == 1


async def test_quota_warning_uses_the_users_own_threshold_even_on_first_sight() -> None:
    spy, users = SpyNotifier(), FakeUsers()
    users.settings[1] = {"quota_warning_threshold": 3000.0}
    users.settings[2] = {"quota_warning_threshold": "junk"}  # falls back to QuotaRemindThreshold
    warnings = QuotaWarnings(spy, QUOTA_OPTIONS, users)
    warnings.after_settlement(1, 3500, 2900)  # crossing while the threshold is still unknown
    warnings.after_settlement(1, 2900, 2800)
    warnings.after_settlement(2, 1200, 999)
    await settled(warnings)
    assert [(uid, m.values[0]) for uid, m in spy.sent] == [(1, "$2.90"), (2, "$1.00")]
    warnings.after_settlement(2, 999, 100)
    assert len(spy.sent) == 2


async def test_quota_warning_rereads_the_threshold_after_its_ttl() -> None:
    now = [0.0]
    spy, users = SpyNotifier(), FakeUsers()
    users.settings[1] = {}
    warnings = QuotaWarnings(spy, QUOTA_OPTIONS, users, ttl=10, clock=lambda: now[0])
    warnings.after_settlement(1, 9000, 8000)
    await settled(warnings)
    users.settings[1] = {"quota_warning_threshold": 7000}
    now[0] = 11.0
    warnings.after_settlement(1, 8000, 6000)
    await settled(warnings)
    assert len(spy.sent) == 1 and users.lookups == 2


async def test_quota_warning_costs_nothing_when_nothing_is_crossed() -> None:
    spy, users = SpyNotifier(), FakeUsers()
    users.settings[1] = {}
    warnings = QuotaWarnings(spy, QUOTA_OPTIONS, users)
    warnings.after_settlement(1, 10_000_000, 9_999_000)
    await settled(warnings)
    started = time.perf_counter()
    for i in range(200_000):
        warnings.after_settlement(1, 9_000_000 - i, 8_999_999 - i)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed / 200_000 * 1e6:.2f} µs per settlement"
    assert spy.sent == [] and users.lookups == 1


def test_format_usd() -> None:
    assert format_usd(750_000, 500_000.0) == "$1.50"
    assert format_usd(-5000, 500_000.0) == "-$0.01"
    assert format_usd(1_000_000_000, 0.0) == "$2,000.00"


async def test_quota_warning_reaches_a_webhook_end_to_end(
    target: FakeTarget, directory: FakeDirectory, make_notifier: NotifierFactory
) -> None:
    directory.add(1, notify_type="webhook", webhook_url=target.url("/q"))
    notifier = await make_notifier(
        FakeOptions(**QUOTA_OPTIONS.values, **{NOTIFICATION_ALLOW_PRIVATE_TARGETS.name: True})
    )
    users = FakeUsers()
    users.settings[1] = {"notify_type": "webhook"}
    warnings = QuotaWarnings(notifier, QUOTA_OPTIONS, users)
    warnings.after_settlement(1, 1100, 950)
    await settled(warnings)
    await drained(notifier)
    payload = json.loads(target.hits[0].body)
    assert payload["type"] == KIND_QUOTA_EXCEED
    assert payload["values"] == ["$0.95", "https://gw.example.com/topup"]


# ----- the users table -----------------------------------------------------------------------


async def test_database_directory_and_delivery_from_stored_settings(
    harness: AppHarness, target: FakeTarget
) -> None:
    runtime = harness.runtime
    root_id = await create_user(runtime.db, "root", role=100)
    user_id = await create_user(runtime.db, "bob")
    setting = {"notify_type": "webhook", "webhook_url": target.url("/bob"), "webhook_secret": "k"}
    async with runtime.db.session() as session, session.begin():
        await session.execute(
            update(User)
            .where(User.id == user_id)
            .values(email="bob@example.com", setting=json.dumps(setting))
        )
        await session.execute(update(User).where(User.id == root_id).values(setting="not json"))
    directory = DatabaseDirectory(runtime.db)
    bob = await directory.recipient(user_id)
    assert bob is not None and (bob.email, dict(bob.setting)) == ("bob@example.com", setting)
    root = await directory.root()
    assert root is not None and (root.user_id, dict(root.setting)) == (root_id, {})
    assert await directory.recipient(987654) is None

    await runtime.options.save(NOTIFICATION_ALLOW_PRIVATE_TARGETS.name, "true")
    notifier = Notifier(runtime.options, directory)
    await notifier.start()
    try:
        await notifier.notify_user(user_id, KIND_QUOTA_EXCEED, "t", "c", ["v"])
        await notifier.notify_user(987654, KIND_QUOTA_EXCEED, "t", "c")  # unknown user: skipped
        await drained(notifier)
    finally:
        await notifier.stop()
    assert [hit.path for hit in target.hits] == ["/bob"]
    assert (
        target.hits[0].headers[SIGNATURE_HEADER] == hmac.new(b"k", target.hits[0].body, "sha256").hexdigest()
    )
