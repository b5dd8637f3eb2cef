"""API tokens (``sk-…`` keys). Keys are stored as a SHA-256 hash for lookup plus an encrypted copy
the owner can reveal; the plain key is never stored."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, SoftDelete, Timestamps

TOKEN_ENABLED, TOKEN_DISABLED, TOKEN_EXPIRED, TOKEN_EXHAUSTED = 1, 2, 3, 4


class Token(Timestamps, SoftDelete, MainBase):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    key_encrypted: Mapped[str] = mapped_column(Text, default="")
    key_hint: Mapped[str] = mapped_column(String(16), default="")  # e.g. "abcd**********wxyz" parts
    status: Mapped[int] = mapped_column(Integer, default=TOKEN_ENABLED, server_default="1", index=True)
    name: Mapped[str] = mapped_column(String(255), default="", index=True)
    created_time: Mapped[int] = mapped_column(BigInteger, default=0)
    accessed_time: Mapped[int] = mapped_column(BigInteger, default=0)
    expired_time: Mapped[int] = mapped_column(BigInteger, default=-1, server_default="-1")
    remain_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    unlimited_quota: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    used_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    model_limits_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    model_limits: Mapped[str] = mapped_column(String(1024), default="")
    allow_ips: Mapped[str | None] = mapped_column(String(1024), default="")
    group: Mapped[str] = mapped_column("group_name", String(64), default="", server_default="")

    __table_args__ = (
        Index("idx_tokens_user_status", "user_id", "status"),
        Index("idx_tokens_key_status", "key_hash", "status"),
    )
