"""The one typed settings object, read from the environment (and an optional ``.env``).

Names and defaults follow new-api where it has them. Nothing else in the package reads
``os.environ``: code receives a :class:`Settings` instance.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollway.db.dsn import DatabaseUrl, parse_dsn
from tollway.errors import ConfigError

log = logging.getLogger("tollway.settings")

_FORBIDDEN_SECRET = "random_string"  # noqa: S105 - the placeholder we refuse
_SECRETS_FILE = ".tollway-secrets.json"


class Settings(BaseSettings):
    """Process configuration. Runtime-editable settings live in the options table instead."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    port: int = Field(3000, ge=1, le=65535)
    host: str = "0.0.0.0"  # noqa: S104 - a gateway listens on every interface by default, as new-api does
    workers: int = Field(0, ge=0, description="0 = one per CPU core")

    sql_dsn: str = ""
    log_sql_dsn: str = ""
    sqlite_path: str = "./data/tollway.db"
    sql_max_idle_conns: int = Field(100, ge=0)
    sql_max_open_conns: int = Field(1000, ge=1)
    sql_max_lifetime: int = Field(60, ge=0)
    sqlite_busy_timeout: int = Field(5000, ge=0)

    redis_conn_string: str = ""
    session_secret: str = ""
    crypto_secret: str = ""

    sync_frequency: int = Field(60, ge=1)
    node_type: str = "master"
    batch_update_enabled: bool = False
    batch_update_interval: int = Field(5, ge=1)

    notify_limit_count: int = Field(2, ge=1)
    notification_limit_duration_minute: int = Field(10, ge=1)
    channel_test_frequency: int = Field(
        0, ge=0, description="minutes between automatic channel tests; 0 = off"
    )
    relay_timeout: float = Field(0, ge=0)
    streaming_timeout: float = Field(300, ge=1)
    max_request_body_mb: int = Field(128, ge=1)
    force_stream_option: bool = True

    metrics_enabled: bool = True
    metrics_token: str = Field("", description="when set, /metrics requires Authorization: Bearer <token>")

    enable_pprof: bool = Field(False, description="CPU-threshold profiler (new-api's ENABLE_PPROF)")
    pprof_cpu_threshold: float = Field(80.0, gt=0, le=100, description="process CPU percent that triggers")
    pprof_duration: float = Field(10.0, gt=0, description="seconds each capture lasts")
    pprof_cooldown: float = Field(30.0, ge=0, description="seconds to wait after a capture")
    pprof_interval: float = Field(1.0, gt=0, description="seconds between CPU samples")
    pprof_dir: str = "./pprof"

    debug: bool = False
    log_dir: str = ""
    log_max_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    log_backup_count: int = Field(10, ge=0)

    global_api_rate_limit_enable: bool = True
    global_api_rate_limit: int = Field(180, ge=1)
    global_api_rate_limit_duration: int = Field(180, ge=1)
    global_web_rate_limit_enable: bool = True
    global_web_rate_limit: int = Field(60, ge=1)
    global_web_rate_limit_duration: int = Field(180, ge=1)
    critical_rate_limit_enable: bool = True
    critical_rate_limit: int = Field(20, ge=1)
    critical_rate_limit_duration: int = Field(1200, ge=1)
    search_rate_limit_enable: bool = True
    search_rate_limit: int = Field(10, ge=1)
    search_rate_limit_duration: int = Field(60, ge=1)

    @field_validator("node_type")
    @classmethod
    def _node_type(cls, value: str) -> str:
        value = value.strip().lower() or "master"
        if value not in ("master", "slave"):
            raise ValueError(f"NODE_TYPE must be 'master' or 'slave', not {value!r}")
        return value

    @field_validator("session_secret", "crypto_secret")
    @classmethod
    def _not_placeholder(cls, value: str) -> str:
        if value == _FORBIDDEN_SECRET:
            raise ValueError("'random_string' is the documentation's placeholder; set a real secret")
        return value

    # ----- derived values -------------------------------------------------------------------

    @property
    def is_master(self) -> bool:
        return self.node_type == "master"

    @property
    def database_url(self) -> DatabaseUrl:
        return parse_dsn(self.sql_dsn, sqlite_path=self.sqlite_path, variable="SQL_DSN")

    @property
    def log_database_url(self) -> DatabaseUrl | None:
        if not self.log_sql_dsn.strip():
            return None
        return parse_dsn(self.log_sql_dsn, sqlite_path=self.sqlite_path, variable="LOG_SQL_DSN")

    @property
    def max_request_body_bytes(self) -> int:
        return self.max_request_body_mb * 1024 * 1024

    @property
    def data_dir(self) -> Path:
        return Path(self.sqlite_path).expanduser().resolve().parent

    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    def with_secrets(self) -> Settings:
        """Return settings whose secrets are set, generating and persisting missing ones.

        A generated secret is kept in a file beside the SQLite database so that sessions and
        encrypted keys survive restarts on a single node. Several nodes must share the same
        secrets, so they must set them explicitly.
        """
        session, crypto = self.session_secret, self.crypto_secret
        if session and not crypto:
            crypto = session  # new-api's fallback: CRYPTO_SECRET defaults to SESSION_SECRET
        if session and crypto:
            return self.model_copy(update={"session_secret": session, "crypto_secret": crypto})
        stored = _load_or_create_secrets(self.data_dir / _SECRETS_FILE)
        missing = [
            name for name, value in (("SESSION_SECRET", session), ("CRYPTO_SECRET", crypto)) if not value
        ]
        log.warning(
            "%s not set: using the secret stored in %s. Multi-node deployments must set the same "
            "SESSION_SECRET and CRYPTO_SECRET on every node.",
            " and ".join(missing),
            self.data_dir / _SECRETS_FILE,
        )
        return self.model_copy(
            update={
                "session_secret": session or stored["session_secret"],
                "crypto_secret": crypto or stored["crypto_secret"],
            }
        )


def _load_or_create_secrets(path: Path) -> dict[str, str]:
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("session_secret") and data.get("crypto_secret"):
                return {
                    "session_secret": str(data["session_secret"]),
                    "crypto_secret": str(data["crypto_secret"]),
                }
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the stored secrets in {path}: {exc}") from exc
    data = {"session_secret": secrets.token_urlsafe(32), "crypto_secret": secrets.token_urlsafe(32)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
    except FileExistsError:  # another worker won the race; read what it wrote
        return _load_or_create_secrets(path)
    except OSError as exc:
        raise ConfigError(f"cannot store generated secrets in {path}: {exc}") from exc
    return data


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning any validation failure into a one-line :class:`ConfigError`."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name}: {message}") from None
    # Parse the DSNs now so that a bad one fails at start, not on first use.
    settings.database_url  # noqa: B018
    settings.log_database_url  # noqa: B018
    return settings
