"""Levelled log lines in new-api's format: ``[LEVEL] 2006/01/02 - 15:04:05 | REQUEST_ID | message``.

INFO (and DEBUG, only with ``DEBUG=true``) go to stdout, WARN and ERR to stderr. With a log
directory every line is also written to a size-rotated file. The request id comes from a context
variable that the request-id middleware sets, so every line a request causes carries its id.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextvars import ContextVar
from logging.handlers import RotatingFileHandler
from pathlib import Path

request_id_var: ContextVar[str] = ContextVar("tollway_request_id", default="")

_LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERR",
    logging.CRITICAL: "ERR",
}
SYSTEM_ID = "SYSTEM"


class GatewayFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = _LEVEL_NAMES.get(record.levelno, record.levelname)
        stamp = time.strftime("%Y/%m/%d - %H:%M:%S", time.localtime(record.created))
        request_id = getattr(record, "request_id", None) or request_id_var.get() or SYSTEM_ID
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return f"[{level}] {stamp} | {request_id} | {message}"


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def configure_logging(
    *, debug: bool, log_dir: str = "", max_bytes: int = 100 << 20, backups: int = 10
) -> None:
    """Install Tollway's handlers on the root logger (idempotent: replaces earlier ones)."""
    formatter = GatewayFormatter()
    out = logging.StreamHandler(sys.stdout)
    out.setLevel(logging.DEBUG)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    handlers: list[logging.Handler] = [out, err]
    if log_dir:
        folder = Path(log_dir).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"tollway-{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}.log"
        handlers.append(
            RotatingFileHandler(folder / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tollway", False):
            root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._tollway = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Library chatter stays quiet unless debugging.
    for noisy in ("sqlalchemy.engine", "aiosqlite", "asyncio", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if debug and noisy == "sqlalchemy.engine" else logging.WARNING
        )
