"""In-process caches of tokens and users for the relay's hot path.

A request looks its token up by the SHA-256 of its key in a dict, and its user by id: no
database query in steady state. An entry is re-read after ``ttl`` seconds (``SYNC_FREQUENCY``, so
other nodes' changes arrive within that bound), and at once on every worker of this node when the
management API changes a token or a user (it bumps a node counter). Unknown keys are remembered
briefly too, so that a client hammering with a bad key does not hammer the database.

Loads are shared: the requests that miss the same entry at the same time wait for one query, not
one each. And an entry past its ``ttl`` (but within twice that) is still served while one
background load replaces it, so that a busy key never waits for the database: without both, every
expiry stalled each worker for as many queries as it had requests in flight (the benchmark saw
first tokens 100 ms late, once a minute, at 64 concurrent streams).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select

from tollway.billing.balances import leased_amounts
from tollway.db.engine import Database
from tollway.db.models import Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.node_sync import NodeCounters, Topic, Watermark

log = logging.getLogger("tollway.relay.accounts")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
_NEGATIVE_TTL = 5.0
_NEGATIVE_MAX = 10_000


def parse_allow_ips(raw: str | None) -> tuple[IPNetwork, ...] | None:
    """IPs and CIDR ranges separated by newlines or commas; None when the list is empty (no limit).
    Entries that do not parse are ignored rather than locking the token out entirely."""
    networks: list[IPNetwork] = []
    for item in (raw or "").replace(",", "\n").split("\n"):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            continue
    return tuple(networks) or None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    user_id: int
    name: str
    status: int
    expired_time: int
    remain_quota: int  # including quota held in leases, as of loading
    unlimited: bool
    model_limits: frozenset[str] | None  # None: every model allowed
    allow_ips: tuple[IPNetwork, ...] | None
    group: str
    key_hint: str
    loaded_at: float

    def ip_allowed(self, client_ip: str) -> bool:
        if self.allow_ips is None:
            return True
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in network for network in self.allow_ips)


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    group: str
    status: int
    role: int
    quota: int  # including quota held in leases, as of loading
    setting: dict[str, Any]
    loaded_at: float

    @property
    def record_ip(self) -> bool:
        return bool(self.setting.get("record_ip_log"))


def _setting(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class AccountCache:
    def __init__(self, db: Database, counters: NodeCounters, *, ttl: float) -> None:
        self._db = db
        self._counters = counters
        self._ttl = ttl
        self._tokens: dict[str, TokenRecord] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._users: dict[int, UserRecord] = {}
        self._token_mark = Watermark(counters, Topic.TOKENS)
        self._user_mark = Watermark(counters, Topic.USERS)
        self._loads: dict[tuple[str, object], asyncio.Task[Any]] = {}
        self._token_generation = self._user_generation = 0  # bumped by every clear

    def sync(self) -> None:
        """Drop what another worker of this node changed. Cheap: call at the start of each request."""
        if self._token_mark.changed():
            self._clear_tokens()
        if self._user_mark.changed():
            self._clear_users()

    def tokens_changed(self) -> None:
        """Called by whoever changed tokens: applies here now and on the other workers next."""
        self._clear_tokens()
        self._counters.bump(Topic.TOKENS)
        self._token_mark.changed()

    def users_changed(self) -> None:
        self._clear_users()
        self._counters.bump(Topic.USERS)
        self._user_mark.changed()

    def _clear_tokens(self) -> None:
        self._tokens.clear()
        self._unknown.clear()
        self._token_generation += 1

    def _clear_users(self) -> None:
        self._users.clear()
        self._user_generation += 1

    async def token(self, key_hash: str) -> TokenRecord | None:
        record = self._tokens.get(key_hash)
        if self._usable(record, ("token", key_hash), lambda: self._reload_token(key_hash)):
            return record
        missed_at = self._unknown.get(key_hash)
        if missed_at is not None and time.monotonic() - missed_at < _NEGATIVE_TTL:
            return None
        return await self._shared(("token", key_hash), lambda: self._reload_token(key_hash))

    async def user(self, user_id: int) -> UserRecord | None:
        record = self._users.get(user_id)
        if self._usable(record, ("user", user_id), lambda: self._reload_user(user_id)):
            return record
        return await self._shared(("user", user_id), lambda: self._reload_user(user_id))

    # ----- shared loads ----------------------------------------------------------------------

    def _usable(
        self,
        record: TokenRecord | UserRecord | None,
        key: tuple[str, object],
        reload: Callable[[], Coroutine[Any, Any, Any]],
    ) -> bool:
        """A cached record can answer: fresh, or expired less than one ``ttl`` ago (a background
        load then replaces it)."""
        if record is None:
            return False
        age = time.monotonic() - record.loaded_at
        if age >= self._ttl:
            if age >= 2 * self._ttl:
                return False
            self._refresh(key, reload)
        return True

    async def _shared(self, key: tuple[str, object], load: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of the load in flight for ``key``, or of a new one. A caller that is
        cancelled (its client left) does not cancel the load the others wait for."""
        task = self._loads.get(key)
        if task is None:
            task = self._start(key, load)
        result: T = await asyncio.shield(task)
        return result

    def _refresh(self, key: tuple[str, object], load: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Replace an expired entry in the background (unless a load is already in flight)."""
        if key not in self._loads:
            self._start(key, load).add_done_callback(_log_refresh_failure)

    def _start(self, key: tuple[str, object], load: Callable[[], Coroutine[Any, Any, T]]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(load())
        self._loads[key] = task
        task.add_done_callback(lambda _: self._loads.pop(key, None))
        return task

    async def _reload_token(self, key_hash: str) -> TokenRecord | None:
        """Read one token and cache what was read, unless the cache was cleared meanwhile (the
        row may have changed after it was read)."""
        generation, now = self._token_generation, time.monotonic()
        record = await self._load_token(key_hash, now)
        if generation != self._token_generation:
            return record
        if record is None:
            self._tokens.pop(key_hash, None)
            self._unknown[key_hash] = now
            if len(self._unknown) > _NEGATIVE_MAX:
                self._unknown.popitem(last=False)
        else:
            self._tokens[key_hash] = record
            self._unknown.pop(key_hash, None)
        return record

    async def _reload_user(self, user_id: int) -> UserRecord | None:
        generation, now = self._user_generation, time.monotonic()
        record = await self._load_user(user_id, now)
        if generation != self._user_generation:
            return record
        if record is None:
            self._users.pop(user_id, None)
        else:
            self._users[user_id] = record
        return record

    async def _load_token(self, key_hash: str, now: float) -> TokenRecord | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(Token).where(Token.key_hash == key_hash, Token.deleted_at.is_(None))
            )
            if row is None:
                return None
            leased = (
                0
                if row.unlimited_quota
                else (await leased_amounts(session, ACCOUNT_TOKEN, [row.id])).get(row.id, 0)
            )
        limits = frozenset(m.strip() for m in (row.model_limits or "").split(",") if m.strip())
        return TokenRecord(
            id=row.id,
            user_id=row.user_id,
            name=row.name or "",
            status=row.status,
            expired_time=int(row.expired_time if row.expired_time is not None else -1),
            remain_quota=int(row.remain_quota or 0) + leased,
            unlimited=bool(row.unlimited_quota),
            model_limits=limits if row.model_limits_enabled else None,
            allow_ips=parse_allow_ips(row.allow_ips),
            group=row.group or "",
            key_hint=row.key_hint or "",
            loaded_at=now,
        )

    async def _load_user(self, user_id: int, now: float) -> UserRecord | None:
        async with self._db.session() as session:
            row = await session.scalar(select(User).where(User.id == user_id, User.deleted_at.is_(None)))
            if row is None:
                return None
            leased = (await leased_amounts(session, ACCOUNT_USER, [row.id])).get(row.id, 0)
        return UserRecord(
            id=row.id,
            username=row.username,
            group=row.group or "default",
            status=row.status,
            role=row.role,
            quota=int(row.quota or 0) + leased,
            setting=_setting(row.setting),
            loaded_at=now,
        )


def _log_refresh_failure(task: asyncio.Task[Any]) -> None:
    """A background refresh failed (the database is unreachable?): the stale entry stays until
    twice its ``ttl``, then requests load it themselves and see the error."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("refreshing a cached token or user failed: %s", task.exception())
