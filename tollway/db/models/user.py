"""Users: accounts, balances and their per-user settings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, SoftDelete, Timestamps

ROLE_COMMON, ROLE_ADMIN, ROLE_ROOT = 1, 10, 100
USER_ENABLED, USER_DISABLED = 1, 2


class User(Timestamps, SoftDelete, MainBase):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password: Mapped[str] = mapped_column(String(255))  # argon2 hash, never the password
    display_name: Mapped[str] = mapped_column(String(64), default="")
    role: Mapped[int] = mapped_column(Integer, default=ROLE_COMMON, server_default="1")
    status: Mapped[int] = mapped_column(Integer, default=USER_ENABLED, server_default="1")
    email: Mapped[str | None] = mapped_column(String(255), index=True)
    github_id: Mapped[str | None] = mapped_column(String(64), index=True)
    oidc_id: Mapped[str | None] = mapped_column(String(64), index=True)
    wechat_id: Mapped[str | None] = mapped_column(String(64), index=True)
    telegram_id: Mapped[str | None] = mapped_column(String(64), index=True)
    linux_do_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # SHA-256 hex of the system access token; the token itself is shown once when generated.
    access_token: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    used_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    request_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    group: Mapped[str] = mapped_column("group_name", String(64), default="default", server_default="default")
    aff_code: Mapped[str | None] = mapped_column(String(32), unique=True, index=True)
    aff_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    aff_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    aff_history_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    inviter_id: Mapped[int | None] = mapped_column(Integer, index=True)
    setting: Mapped[str | None] = mapped_column(Text)
    last_check_in_time: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("idx_users_username_status", "username", "status"),
        Index("idx_users_email_status", "email", "status"),
    )
