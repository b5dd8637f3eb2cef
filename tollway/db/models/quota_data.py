"""Hourly usage rollup: one row per (user, username, model, hour)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase


class QuotaData(MainBase):
    __tablename__ = "quota_data"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    username: Mapped[str] = mapped_column(String(64), default="", index=True)
    model_name: Mapped[str] = mapped_column(String(255), default="", index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    token_used: Mapped[int] = mapped_column(BigInteger, default=0)
    count: Mapped[int] = mapped_column(Integer, default=0)
    quota: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("idx_quota_data_model_user_name", "model_name", "username"),
        # The rollup upserts on this key, so it must be unique.
        Index("uq_quota_data_bucket", "user_id", "username", "model_name", "created_at", unique=True),
    )
