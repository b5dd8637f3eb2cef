"""Usage and audit logs. Rows are written once and never updated; this table may live in a
separate database (``LOG_SQL_DSN``) and, on PostgreSQL, is range-partitioned by month."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import BigId, LogBase

LOG_UNKNOWN, LOG_TOPUP, LOG_CONSUME, LOG_MANAGE, LOG_SYSTEM, LOG_ERROR, LOG_REFUND, LOG_LOGIN = range(8)


class Log(LogBase):
    __tablename__ = "logs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    type: Mapped[int] = mapped_column(Integer, default=LOG_UNKNOWN, index=True)
    content: Mapped[str] = mapped_column(Text, default="")
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    token_name: Mapped[str] = mapped_column(String(255), default="")
    model_name: Mapped[str] = mapped_column(String(255), default="", index=True)
    quota: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    use_time: Mapped[int] = mapped_column(Integer, default=0)
    is_stream: Mapped[bool] = mapped_column(Boolean, default=False)
    channel_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    token_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    group: Mapped[str] = mapped_column("group_name", String(64), default="", index=True)
    other: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="", index=True)

    __table_args__ = (
        Index("idx_logs_user_time", "user_id", "created_at"),
        Index("idx_logs_model_time", "model_name", "created_at"),
        Index("idx_logs_channel_time", "channel_id", "created_at"),
        Index("idx_logs_token_time", "token_id", "created_at"),
        Index("idx_logs_type_time", "type", "created_at"),
    )


class LogCount(LogBase):
    """Exact per-hour sums of ``logs`` by every column the log lists filter on (issue 5), read when
    several filters are combined.

    Kept by database triggers on ``logs`` (``tollway.usage.log_counts``), so whatever inserts or
    deletes log rows, in whichever transaction, this table changes in the same one. List totals and
    statistics read whole hours here and count only the partial edge hours in ``logs``."""

    __tablename__ = "log_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bucket: Mapped[int] = mapped_column(BigInteger)  # start of the UTC hour (unix seconds)
    type: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(64))
    token_id: Mapped[int] = mapped_column(Integer)
    token_name: Mapped[str] = mapped_column(String(255))
    channel_id: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str] = mapped_column(String(255))
    group: Mapped[str] = mapped_column("group_name", String(64))
    count: Mapped[int] = mapped_column(BigInteger)
    quota: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        UniqueConstraint(
            "bucket",
            "type",
            "user_id",
            "token_id",
            "channel_id",
            "model_name",
            "username",
            "token_name",
            "group_name",
            name="uq_log_counts_key",
        ),
        Index("idx_log_counts_user", "user_id", "bucket"),
        Index("idx_log_counts_username", "username", "bucket"),
        Index("idx_log_counts_token", "token_id", "bucket"),
        Index("idx_log_counts_channel", "channel_id", "bucket"),
        Index("idx_log_counts_model", "model_name", "bucket"),
        Index("idx_log_counts_group", "group_name", "bucket"),
    )


class LogTypeCount(LogBase):
    """The same sums per (hour, type) only: what an unfiltered list or statistic reads, a few
    thousand rows however many logs there are."""

    __tablename__ = "log_type_counts"

    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    type: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    quota: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)


class LogDimCount(LogBase):
    """The same sums per (one filter's value, hour, type): what a list or statistic filtered on a
    single column (a user, a model, a channel…) reads, a few rows per hour. ``dim`` says which
    column (``tollway.usage.log_counts.DIM_CODES``); ``value`` is its value as text."""

    __tablename__ = "log_dim_counts"

    dim: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    type: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    quota: Mapped[int] = mapped_column(BigInteger)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)


class LogCountsPaused(LogBase):
    """Holds a row only inside a SQLite transaction of the log writer, which then maintains the
    summaries itself with one upsert per batch instead of nine per row (the insert trigger checks
    this table first). Other connections never see the row: it is deleted before the commit."""

    __tablename__ = "log_counts_paused"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
