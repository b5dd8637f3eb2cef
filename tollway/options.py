"""Runtime options: the ``options`` table as a typed registry.

An option is declared once with its name (new-api's), type and default. Values are stored as
strings (JSON for dicts and lists), cached in memory, reloaded every ``SYNC_FREQUENCY`` seconds,
and reloaded at once on every worker of this node when one of them saves a change.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import select

from tollway.db.engine import Database
from tollway.db.models import Option
from tollway.node_sync import NodeCounters, Topic, Watermark

log = logging.getLogger("tollway.options")

T = TypeVar("T")
_HIDDEN_SUFFIXES = ("Token", "Secret", "Key")


class OptionError(ValueError):
    """A value that does not fit its option."""


@dataclass(frozen=True)
class OptionSpec(Generic[T]):
    name: str
    default: T
    validate: Callable[[T], None] | None = field(default=None, compare=False)

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def secret(self) -> bool:
        """new-api never lists options whose names end in Token, Secret or Key."""
        return self.name.endswith(_HIDDEN_SUFFIXES)

    def parse(self, raw: str) -> T:
        kind = self.kind
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in ("true", "false", "1", "0", ""):
                    raise OptionError(f"{self.name} must be true or false")
                value: Any = lowered in ("true", "1")
            elif kind is int:
                value = int(float(raw)) if raw.strip() else 0
            elif kind is float:
                value = float(raw) if raw.strip() else 0.0
            elif kind in (dict, list):
                value = json.loads(raw) if raw.strip() else kind()
                if not isinstance(value, kind):
                    raise OptionError(f"{self.name} must be a JSON {'object' if kind is dict else 'array'}")
            else:
                value = raw
        except (ValueError, TypeError) as exc:
            if isinstance(exc, OptionError):
                raise
            raise OptionError(f"{self.name}: invalid value ({exc})") from None
        if self.validate is not None:
            self.validate(cast(T, value))
        return cast(T, value)

    def render(self, value: T) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        return str(value)


class OptionRegistry:
    """The declared options, by name."""

    def __init__(self) -> None:
        self._specs: dict[str, OptionSpec[Any]] = {}

    def declare(self, name: str, default: T, validate: Callable[[T], None] | None = None) -> OptionSpec[T]:
        if name in self._specs:
            raise ValueError(f"option {name} declared twice")
        spec = OptionSpec(name, default, validate)
        self._specs[name] = spec
        return spec

    def get(self, name: str) -> OptionSpec[Any] | None:
        return self._specs.get(name)

    def __iter__(self) -> Any:
        return iter(self._specs.values())


class Options:
    """Current option values for this process."""

    def __init__(self, registry: OptionRegistry, db: Database, counters: NodeCounters) -> None:
        self._registry = registry
        self._db = db
        self._counters = counters
        self._watermark = Watermark(counters, Topic.OPTIONS)
        self._values: dict[str, Any] = {spec.name: spec.default for spec in registry}
        self._raw: dict[str, str] = {}  # stored values, including names not declared (kept verbatim)
        self._lock = asyncio.Lock()

    def get(self, spec: OptionSpec[T]) -> T:
        return cast(T, self._values[spec.name])

    def raw(self, name: str) -> str | None:
        spec = self._registry.get(name)
        if name in self._raw:
            return self._raw[name]
        return spec.render(spec.default) if spec else None

    async def load(self) -> None:
        """Read every stored option. A stored value that no longer parses keeps the default (logged)."""
        async with self._db.session() as session:
            rows = (await session.execute(select(Option.key, Option.value))).all()
        values = {spec.name: spec.default for spec in self._registry}
        raw: dict[str, str] = {}
        for key, value in rows:
            raw[key] = value or ""
            spec = self._registry.get(key)
            if spec is None:
                continue
            try:
                values[key] = spec.parse(value or "")
            except OptionError as exc:
                log.warning("stored option %s ignored: %s", key, exc)
        self._values, self._raw = values, raw

    async def refresh_if_changed(self) -> None:
        """Reload when another worker of this node saved an option since the last look."""
        if self._watermark.changed():
            await self.load()

    async def save(self, name: str, raw_value: str) -> None:
        """Validate and store one option; every worker of this node sees it on its next request."""
        spec = self._registry.get(name)
        value = spec.parse(raw_value) if spec else raw_value
        stored = spec.render(value) if spec else raw_value
        async with self._lock, self._db.session() as session, session.begin():
            existing = await session.get(Option, name)
            if existing is None:
                session.add(Option(key=name, value=stored))
            else:
                existing.value = stored
        self._raw[name] = stored
        if spec:
            self._values[name] = value
        self._counters.bump(Topic.OPTIONS)
        self._watermark.changed()  # our own bump: already applied

    def export(self, *, include_secrets: bool = False) -> dict[str, str]:
        """Every option as name → string, as ``GET /api/option/`` lists them."""
        out = {spec.name: spec.render(self._values[spec.name]) for spec in self._registry}
        out.update(self._raw)
        if not include_secrets:
            out = {k: v for k, v in out.items() if not k.endswith(_HIDDEN_SUFFIXES)}
        return out


REGISTRY = OptionRegistry()
"""The declarations. Modules that own a feature declare its options here at import."""


def _non_negative(value: float) -> None:
    if value < 0:
        raise OptionError("must not be negative")


# ----- site and accounts -----------------------------------------------------------------
SYSTEM_NAME = REGISTRY.declare("SystemName", "Tollway")
LOGO = REGISTRY.declare("Logo", "")
FOOTER = REGISTRY.declare("Footer", "")
NOTICE = REGISTRY.declare("Notice", "")
ABOUT = REGISTRY.declare("About", "")
HOME_PAGE_CONTENT = REGISTRY.declare("HomePageContent", "")
SERVER_ADDRESS = REGISTRY.declare("ServerAddress", "")
TOP_UP_LINK = REGISTRY.declare("TopUpLink", "")
DOCS_LINK = REGISTRY.declare("DocsLink", "")
SELF_USE_MODE_ENABLED = REGISTRY.declare("SelfUseModeEnabled", False)
DEMO_SITE_ENABLED = REGISTRY.declare("DemoSiteEnabled", False)
REGISTER_ENABLED = REGISTRY.declare("RegisterEnabled", True)
PASSWORD_REGISTER_ENABLED = REGISTRY.declare("PasswordRegisterEnabled", True)
PASSWORD_LOGIN_ENABLED = REGISTRY.declare("PasswordLoginEnabled", True)
EMAIL_VERIFICATION_ENABLED = REGISTRY.declare("EmailVerificationEnabled", False)
GITHUB_OAUTH_ENABLED = REGISTRY.declare("GitHubOAuthEnabled", False)
GITHUB_CLIENT_ID = REGISTRY.declare("GitHubClientId", "")
LINUXDO_OAUTH_ENABLED = REGISTRY.declare("LinuxDOOAuthEnabled", False)
LINUXDO_CLIENT_ID = REGISTRY.declare("LinuxDOClientId", "")
TELEGRAM_OAUTH_ENABLED = REGISTRY.declare("TelegramOAuthEnabled", False)
TELEGRAM_BOT_NAME = REGISTRY.declare("TelegramBotName", "")
WECHAT_AUTH_ENABLED = REGISTRY.declare("WeChatAuthEnabled", False)
WECHAT_QRCODE = REGISTRY.declare("WeChatAccountQRCodeImageURL", "")
OIDC_ENABLED = REGISTRY.declare("oidc.enabled", False)
OIDC_CLIENT_ID = REGISTRY.declare("oidc.client_id", "")
OIDC_AUTHORIZATION_ENDPOINT = REGISTRY.declare("oidc.authorization_endpoint", "")
TURNSTILE_CHECK_ENABLED = REGISTRY.declare("TurnstileCheckEnabled", False)
TURNSTILE_SITE_KEY = REGISTRY.declare("TurnstileSiteKey", "")
CHECK_IN_ENABLED = REGISTRY.declare("CheckInEnabled", False)
USER_USABLE_GROUPS: OptionSpec[dict[str, Any]] = REGISTRY.declare(
    "UserUsableGroups", {"default": "default group", "vip": "vip group"}
)

# ----- money and display -----------------------------------------------------------------
QUOTA_PER_UNIT = REGISTRY.declare("QuotaPerUnit", 500_000.0, _non_negative)
DISPLAY_IN_CURRENCY_ENABLED = REGISTRY.declare("DisplayInCurrencyEnabled", True)
DISPLAY_TOKEN_STAT_ENABLED = REGISTRY.declare("DisplayTokenStatEnabled", True)
PRICE = REGISTRY.declare("Price", 7.3, _non_negative)
MIN_TOP_UP = REGISTRY.declare("MinTopUp", 1, _non_negative)
DEFAULT_COLLAPSE_SIDEBAR = REGISTRY.declare("DefaultCollapseSidebar", False)
DRAWING_ENABLED = REGISTRY.declare("DrawingEnabled", True)
TASK_ENABLED = REGISTRY.declare("TaskEnabled", True)
MJ_NOTIFY_ENABLED = REGISTRY.declare("MjNotifyEnabled", False)
CHATS: OptionSpec[list[Any]] = REGISTRY.declare("Chats", [])

# ----- relay and logs ----------------------------------------------------------------------
RETRY_TIMES = REGISTRY.declare("RetryTimes", 2, _non_negative)
LOG_CONSUME_ENABLED = REGISTRY.declare("LogConsumeEnabled", True)
DATA_EXPORT_ENABLED = REGISTRY.declare("DataExportEnabled", True)
DATA_EXPORT_INTERVAL = REGISTRY.declare("DataExportInterval", 5, _non_negative)
DATA_EXPORT_DEFAULT_TIME = REGISTRY.declare("DataExportDefaultTime", "hour")
AUTOMATIC_DISABLE_CHANNEL_ENABLED = REGISTRY.declare("AutomaticDisableChannelEnabled", False)
AUTOMATIC_ENABLE_CHANNEL_ENABLED = REGISTRY.declare("AutomaticEnableChannelEnabled", False)
