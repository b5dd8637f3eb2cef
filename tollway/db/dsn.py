"""Translate new-api's DSN forms (and SQLAlchemy URLs) into async SQLAlchemy URLs.

Accepted:

* empty → SQLite at ``SQLITE_PATH``; ``local`` (new-api's marker) → the same;
* Go MySQL driver form: ``user:pass@tcp(host:3306)/db?charset=utf8mb4&parseTime=True&loc=Local``,
  ``user@tcp(host)/db``, ``user:pass@unix(/path.sock)/db``, ``user:pass@/db``;
* ``postgres://`` / ``postgresql://`` URLs and libpq keyword strings (``host=… user=… dbname=…``);
* SQLAlchemy URLs (``sqlite:///…``, ``mysql+pymysql://…``, ``postgresql+asyncpg://…``), whose
  driver is swapped for the async one Tollway ships.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tollway.errors import ConfigError

Dialect = Literal["sqlite", "postgresql", "mysql"]

_ASYNC_DRIVERS: dict[str, str] = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "asyncmy"}
_GO_MYSQL = re.compile(
    r"^(?P<user>[^:@/]*)(?::(?P<password>.*))?@(?:(?P<net>tcp|unix)\((?P<addr>[^)]*)\))?/(?P<db>[^?]*)(?:\?(?P<query>.*))?$"
)
_LIBPQ_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
# Query parameters of the Go drivers that have no meaning for ours: dropped.
_IGNORED_PARAMS = {"parsetime", "loc", "timezone", "collation", "allownativepasswords", "multistatements"}


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database location: the async SQLAlchemy URL plus what callers ask of it."""

    url: URL
    dialect: Dialect

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def masked(self) -> str:
        """The URL with its password replaced, safe for logs and error messages."""
        return self.url.render_as_string(hide_password=True)

    def describe(self) -> str:
        """Where the database is, for error messages: ``host:port`` or the file path."""
        if self.is_sqlite:
            return f"SQLite file {self.url.database}"
        default_port = 5432 if self.dialect == "postgresql" else 3306
        return f"{self.dialect} at {self.url.host or 'localhost'}:{self.url.port or default_port}"


def parse_dsn(dsn: str, *, sqlite_path: str, variable: str = "SQL_DSN") -> DatabaseUrl:
    """Parse ``dsn``; raise :class:`ConfigError` naming ``variable`` when it cannot be understood."""
    text = dsn.strip()
    try:
        if not text or text == "local" or text.startswith("local"):
            return _sqlite(sqlite_path)
        if text.startswith(("postgres://", "postgresql://")):
            return _from_url(make_url("postgresql://" + text.split("://", 1)[1]))
        if "://" in text:
            return _from_url(make_url(text))
        match = _GO_MYSQL.match(text)
        if match:
            return _from_go_mysql(match)
        if "host=" in text or "dbname=" in text:
            return _from_libpq(text)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{variable} is not a valid database DSN ({_redact(text)}): {exc}") from None
    raise ConfigError(
        f"{variable} is not a recognised database DSN ({_redact(text)}); expected e.g. "
        "'user:pass@tcp(host:3306)/db', 'postgres://user:pass@host:5432/db' or a SQLAlchemy URL"
    )


def _sqlite(path: str) -> DatabaseUrl:
    file = Path(path.split("?", 1)[0]).expanduser()
    return DatabaseUrl(URL.create("sqlite+aiosqlite", database=str(file)), "sqlite")


def _from_url(url: URL) -> DatabaseUrl:
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        dialect: Dialect = "postgresql"
    elif backend in ("mysql", "mariadb"):
        dialect = "mysql"
    elif backend == "sqlite":
        dialect = "sqlite"
    else:
        raise ValueError(f"unsupported database '{backend}' (use SQLite, PostgreSQL or MySQL/MariaDB)")
    query = _translate_query(dict(url.query), dialect)
    url = url.set(drivername=f"{dialect}+{_ASYNC_DRIVERS[dialect]}", query=query)
    if dialect == "sqlite" and url.database:
        url = url.set(database=str(Path(url.database).expanduser()))
    return DatabaseUrl(url, dialect)


def _from_go_mysql(match: re.Match[str]) -> DatabaseUrl:
    net, addr = match["net"] or "tcp", match["addr"] or "127.0.0.1:3306"
    query = dict(parse_qsl(match["query"] or "", keep_blank_values=True))
    if net == "unix":
        query["unix_socket"] = addr
        host, port = "localhost", None
    else:
        host, _, port_text = addr.rpartition(":") if ":" in addr else (addr, "", "")
        port = int(port_text) if port_text else None
    url = URL.create(
        "mysql+asyncmy",
        username=unquote(match["user"]) or None,
        password=match["password"] if match["password"] is not None else None,
        host=host or "127.0.0.1",
        port=port,
        database=match["db"] or None,
        query=_translate_query(query, "mysql"),
    )
    return DatabaseUrl(url, "mysql")


def _from_libpq(text: str) -> DatabaseUrl:
    pairs = {key.lower(): value.strip("'") for key, value in _LIBPQ_PAIR.findall(text)}
    query = {k: v for k, v in pairs.items() if k not in ("host", "port", "user", "password", "dbname")}
    url = URL.create(
        "postgresql+asyncpg",
        username=pairs.get("user"),
        password=pairs.get("password"),
        host=pairs.get("host"),
        port=int(pairs["port"]) if pairs.get("port") else None,
        database=pairs.get("dbname"),
        query=_translate_query(query, "postgresql"),
    )
    return DatabaseUrl(url, "postgresql")


def _translate_query(query: dict[str, object], dialect: Dialect) -> dict[str, str]:
    """Keep the parameters our drivers understand, translate the common ones, drop the rest."""
    out: dict[str, str] = {}
    for key, raw in query.items():
        value = raw[0] if isinstance(raw, tuple | list) else str(raw)
        lowered = key.lower()
        if lowered in _IGNORED_PARAMS:
            continue
        if lowered == "sslmode":
            if dialect == "postgresql" and value not in ("disable", ""):
                out["ssl"] = value  # asyncpg accepts libpq's sslmode words as `ssl`
            continue
        if lowered == "charset":
            if dialect == "mysql":
                out["charset"] = value
            continue
        out[key] = str(value)
    if dialect == "mysql":
        out.setdefault("charset", "utf8mb4")
    return out


def _redact(text: str) -> str:
    """Hide a password in any DSN form before it is shown to a person."""
    text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", text)
    text = re.sub(r"^([^:@/]*:)[^@]*@", r"\1***@", text) if "://" not in text else text
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text)
