"""Redemption codes (single-use, or Veloera gift codes usable once per user) and their uses."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, SoftDelete, Timestamps

REDEMPTION_ENABLED, REDEMPTION_DISABLED, REDEMPTION_USED = 1, 2, 3


class Redemption(Timestamps, SoftDelete, MainBase):
    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    key: Mapped[str] = mapped_column("key_value", String(64), unique=True, index=True)
    status: Mapped[int] = mapped_column(Integer, default=REDEMPTION_ENABLED, server_default="1", index=True)
    name: Mapped[str] = mapped_column(String(255), default="", index=True)
    quota: Mapped[int] = mapped_column(BigInteger, default=100, server_default="100")
    created_time: Mapped[int] = mapped_column(BigInteger, default=0)
    redeemed_time: Mapped[int] = mapped_column(BigInteger, default=0)
    used_user_id: Mapped[int] = mapped_column(Integer, default=0)
    is_gift: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0", index=True)
    max_uses: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    used_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    valid_from: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    valid_until: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class RedemptionLog(MainBase):
    __tablename__ = "redemption_logs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    redemption_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("redemptions.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    used_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    created_at: Mapped[datetime | None] = mapped_column(DateTime, server_default=func.now())

    __table_args__ = (
        # A gift code is redeemable once per user: the database enforces it.
        Index("uq_redemption_logs_redemption_user", "redemption_id", "user_id", unique=True),
    )
