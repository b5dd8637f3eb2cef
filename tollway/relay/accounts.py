"""In-process caches of tokens and users for the relay's hot path.

A request looks its token up by the SHA-256 of its key in a dict, and its user by id: no
database query in steady state. An entry is re-read after ``ttl`` seconds (``SYNC_FREQUENCY``, so
other nodes' changes arrive within that bound), and at once on every worker of this node when the
management API changes a token or a user (it bumps a node counter). Unknown keys are remembered
briefly too, so that a client hammering with a bad key does not hammer the database.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tollway.billing.balances import leased_amounts
from tollway.db.engine import Database
from tollway.db.models import Token, User
from tollway.db.models.lease import ACCOUNT_TOKEN, ACCOUNT_USER
from tollway.node_sync import NodeCounters, Topic, Watermark

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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

    def sync(self) -> None:
        """Drop what another worker of this node changed. Cheap: call at the start of each request."""
        if self._token_mark.changed():
            self._tokens.clear()
            self._unknown.clear()
        if self._user_mark.changed():
            self._users.clear()

    def tokens_changed(self) -> None:
        """Called by whoever changed tokens: applies here now and on the other workers next."""
        self._tokens.clear()
        self._unknown.clear()
        self._counters.bump(Topic.TOKENS)
        self._token_mark.changed()

    def users_changed(self) -> None:
        self._users.clear()
        self._counters.bump(Topic.USERS)
        self._user_mark.changed()

    async def token(self, key_hash: str) -> TokenRecord | None:
        now = time.monotonic()
        record = self._tokens.get(key_hash)
        if record is not None and now - record.loaded_at < self._ttl:
            return record
        missed_at = self._unknown.get(key_hash)
        if missed_at is not None and now - missed_at < _NEGATIVE_TTL:
            return None
        record = await self._load_token(key_hash, now)
        if record is None:
            self._tokens.pop(key_hash, None)
            self._unknown[key_hash] = now
            if len(self._unknown) > _NEGATIVE_MAX:
                self._unknown.popitem(last=False)
        else:
            self._tokens[key_hash] = record
            self._unknown.pop(key_hash, None)
        return record

    async def user(self, user_id: int) -> UserRecord | None:
        now = time.monotonic()
        record = self._users.get(user_id)
        if record is not None and now - record.loaded_at < self._ttl:
            return record
        record = await self._load_user(user_id, now)
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
