"""Settings: new-api's names and defaults, clear errors, generated secrets kept on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tollway.errors import ConfigError
from tollway.settings import load_settings


def test_defaults_follow_new_api(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORT", "SQL_DSN", "SYNC_FREQUENCY", "NODE_TYPE", "SQL_MAX_OPEN_CONNS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.port == 3000
    assert settings.sql_max_idle_conns == 100
    assert settings.sql_max_open_conns == 1000
    assert settings.sql_max_lifetime == 60
    assert settings.max_request_body_mb == 128
    assert settings.is_master
    assert settings.database_url.is_sqlite
    assert settings.database_url.url.database == "data/tollway.db"
    assert settings.log_database_url is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("NODE_TYPE", "slave")
    monkeypatch.setenv("LOG_SQL_DSN", "postgres://u@h/logs")
    settings = load_settings(_env_file=None)
    assert settings.port == 8080
    assert not settings.is_master
    assert settings.log_database_url is not None
    assert settings.log_database_url.dialect == "postgresql"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORT", raising=False)
    env = tmp_path / ".env"
    env.write_text("PORT=4567\n")
    assert load_settings(_env_file=str(env)).port == 4567


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"node_type": "leader"}, "NODE_TYPE"),
        ({"port": "eighty"}, "PORT"),
        ({"session_secret": "random_string"}, "SESSION_SECRET"),
        ({"sql_dsn": "garbage dsn"}, "SQL_DSN"),
        ({"log_sql_dsn": "garbage"}, "LOG_SQL_DSN"),
    ],
)
def test_bad_configuration_is_one_line(overrides: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, **overrides)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_secrets_are_generated_once_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "data" / "tollway.db"
    first = load_settings(
        _env_file=None, sqlite_path=str(db), session_secret="", crypto_secret=""
    ).with_secrets()
    second = load_settings(
        _env_file=None, sqlite_path=str(db), session_secret="", crypto_secret=""
    ).with_secrets()
    assert first.session_secret and first.crypto_secret
    assert first.session_secret != first.crypto_secret
    assert (first.session_secret, first.crypto_secret) == (second.session_secret, second.crypto_secret)
    stored = tmp_path / "data" / ".tollway-secrets.json"
    assert json.loads(stored.read_text())["session_secret"] == first.session_secret
    assert stored.stat().st_mode & 0o777 == 0o600
    assert "Multi-node deployments must set" in caplog.text


def test_crypto_secret_defaults_to_session_secret(tmp_path: Path) -> None:
    settings = load_settings(
        _env_file=None, sqlite_path=str(tmp_path / "t.db"), session_secret="s3", crypto_secret=""
    ).with_secrets()
    assert settings.crypto_secret == "s3"
    assert not (tmp_path / ".tollway-secrets.json").exists()
