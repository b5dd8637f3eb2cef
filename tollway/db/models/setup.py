"""First-run record: one row once the root user exists."""

from __future__ import annotations

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, Timestamps


class Setup(Timestamps, MainBase):
    __tablename__ = "setup"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    is_setup: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    version: Mapped[str] = mapped_column(String(32), default="")
