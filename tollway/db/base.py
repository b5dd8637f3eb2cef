"""Declarative bases. The ``logs`` table has its own metadata because it may live in another
database (``LOG_SQL_DSN``); everything else belongs to the main database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so big ids are INTEGER there and BIGINT elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class MainBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class LogBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Timestamps:
    """``created_at`` / ``updated_at`` columns of the seed's schema (database time)."""

    created_at: Mapped[datetime | None] = mapped_column(DateTime, server_default=func.now())
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime, server_default=func.now(), onupdate=func.now()
    )


class SoftDelete:
    """``deleted_at``: rows with a value are deleted for every reader except admin lists that ask."""

    deleted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
