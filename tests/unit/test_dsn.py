"""DSNs in new-api's forms and as SQLAlchemy URLs become async SQLAlchemy URLs."""

from __future__ import annotations

import pytest

from tollway.db.dsn import parse_dsn
from tollway.errors import ConfigError


def parse(dsn: str) -> str:
    return parse_dsn(dsn, sqlite_path="./data/tollway.db").url.render_as_string(hide_password=False)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("", "sqlite+aiosqlite:///data/tollway.db"),
        ("local", "sqlite+aiosqlite:///data/tollway.db"),
        (
            "root:secret@tcp(db.example:3307)/oneapi?charset=utf8mb4&parseTime=True&loc=Local",
            "mysql+asyncmy://root:secret@db.example:3307/oneapi?charset=utf8mb4",
        ),
        ("root@tcp(127.0.0.1:3306)/oneapi", "mysql+asyncmy://root@127.0.0.1:3306/oneapi?charset=utf8mb4"),
        ("root:pw@tcp(localhost)/x?charset=latin1", "mysql+asyncmy://root:pw@localhost/x?charset=latin1"),
        ("u:p@/db", "mysql+asyncmy://u:p@127.0.0.1:3306/db?charset=utf8mb4"),
        ("postgres://u:p@h:5433/db?sslmode=disable", "postgresql+asyncpg://u:p@h:5433/db"),
        ("postgresql://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=require"),
        (
            "host=localhost user=postgres password=pw dbname=veloera port=5432 sslmode=disable TimeZone=Asia/Shanghai",
            "postgresql+asyncpg://postgres:pw@localhost:5432/veloera",
        ),
        ("mysql+pymysql://u:p@h/db", "mysql+asyncmy://u:p@h/db?charset=utf8mb4"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_accepted_forms(dsn: str, expected: str) -> None:
    assert parse(dsn) == expected


def test_password_with_special_characters_survives() -> None:
    url = parse_dsn("root:p@ss:w/rd@tcp(h:3306)/db", sqlite_path="x.db").url
    assert url.password == "p@ss:w/rd"
    assert url.host == "h"


@pytest.mark.parametrize("dsn", ["not a dsn", "oracle://u:p@h/db", "mongodb://u:hunter2@h/db"])
def test_unparseable_dsn_is_one_clear_line_without_the_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dsn(dsn, sqlite_path="x.db", variable="SQL_DSN")
    message = str(caught.value)
    assert message.startswith("SQL_DSN ")
    assert "\n" not in message
    assert "hunter2" not in message


def test_masked_url_hides_the_password() -> None:
    parsed = parse_dsn("root:topsecret@tcp(h:3306)/db", sqlite_path="x.db")
    assert "topsecret" not in parsed.masked()
    assert parsed.describe() == "mysql at h:3306"
