"""Usage and audit logs. Rows are written once and never updated; this table may live in a
separate database (``LOG_SQL_DSN``) and, on PostgreSQL, is range-partitioned by month."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
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
