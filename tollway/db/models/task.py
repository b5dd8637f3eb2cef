"""Asynchronous task relays: Midjourney jobs and generic platform tasks (Suno, video …)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import BigId, MainBase, Timestamps


class Midjourney(Timestamps, MainBase):
    __tablename__ = "midjourney"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    code: Mapped[int] = mapped_column(Integer, default=0)
    action: Mapped[str] = mapped_column(String(40), default="", index=True)
    mj_id: Mapped[str] = mapped_column(String(255), default="", index=True)
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_en: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(String(255))
    submit_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    start_time: Mapped[int] = mapped_column(BigInteger, default=0)
    finish_time: Mapped[int] = mapped_column(BigInteger, default=0)
    image_url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="", index=True)
    progress: Mapped[str] = mapped_column(String(20), default="")
    fail_reason: Mapped[str | None] = mapped_column(Text)
    channel_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    quota: Mapped[int] = mapped_column(BigInteger, default=0)
    buttons: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[str | None] = mapped_column(Text)


class Task(MainBase):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=0)
    task_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    platform: Mapped[str] = mapped_column(String(30), default="", index=True)
    user_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    channel_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    quota: Mapped[int] = mapped_column(BigInteger, default=0)
    action: Mapped[str] = mapped_column(String(40), default="", index=True)
    status: Mapped[str] = mapped_column(String(20), default="", index=True)
    fail_reason: Mapped[str | None] = mapped_column(Text)
    submit_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    start_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    finish_time: Mapped[int] = mapped_column(BigInteger, default=0, index=True)
    progress: Mapped[str] = mapped_column(String(20), default="")
    properties: Mapped[Any] = mapped_column(JSON, nullable=True)
    data: Mapped[Any] = mapped_column(JSON, nullable=True)
