"""Runtime settings (key → string value), edited through ``/api/option/``."""

from __future__ import annotations

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, Timestamps


class Option(Timestamps, MainBase):
    __tablename__ = "options"

    key: Mapped[str] = mapped_column("key_name", String(255), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
