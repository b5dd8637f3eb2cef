"""One-time codes sent by email (registration, password reset), kept in the database so that any
node can check a code another node sent. Only a hash of the code is stored."""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase

PURPOSE_REGISTER, PURPOSE_RESET, PURPOSE_BIND = "register", "reset", "bind"


class VerificationCode(MainBase):
    __tablename__ = "verification_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(16))
    code_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("idx_verification_codes_email_purpose", "email", "purpose"),)
