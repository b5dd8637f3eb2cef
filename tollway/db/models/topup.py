"""Online top-up orders (the payment ledger)."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, Timestamps

TOPUP_PENDING, TOPUP_SUCCESS, TOPUP_FAILED = "pending", "success", "failed"


class TopUp(Timestamps, MainBase):
    __tablename__ = "topups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    amount: Mapped[float] = mapped_column(Numeric(14, 2, asdecimal=False), default=0)
    money: Mapped[float] = mapped_column(Numeric(14, 2, asdecimal=False), default=0)
    quota: Mapped[int] = mapped_column(BigInteger, default=0)
    trade_no: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    status: Mapped[str] = mapped_column(
        String(16), default=TOPUP_PENDING, server_default=TOPUP_PENDING, index=True
    )
    payment_method: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    paid_time: Mapped[int] = mapped_column(BigInteger, default=0)
