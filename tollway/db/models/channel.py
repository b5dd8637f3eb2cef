"""Channels (upstreams) and abilities, the (group, model) → channel routing index."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, Numeric, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tollway.db.base import MainBase, Timestamps

CHANNEL_UNKNOWN, CHANNEL_ENABLED, CHANNEL_MANUALLY_DISABLED, CHANNEL_AUTO_DISABLED = 0, 1, 2, 3


class Channel(Timestamps, MainBase):
    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    type: Mapped[int] = mapped_column(Integer, default=0, server_default="0", index=True)
    key: Mapped[str] = mapped_column(
        "key_value", Text, default=""
    )  # one key, or several separated by newlines
    openai_organization: Mapped[str | None] = mapped_column(String(255))
    test_model: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[int] = mapped_column(Integer, default=CHANNEL_ENABLED, server_default="1", index=True)
    name: Mapped[str] = mapped_column(String(255), default="", index=True)
    weight: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_time: Mapped[int] = mapped_column(BigInteger, default=0)
    test_time: Mapped[int] = mapped_column(BigInteger, default=0)
    response_time: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    base_url: Mapped[str] = mapped_column(String(512), default="", server_default="")
    other: Mapped[str | None] = mapped_column(Text)
    balance: Mapped[float] = mapped_column(Numeric(14, 4, asdecimal=False), default=0, server_default="0")
    balance_updated_time: Mapped[int] = mapped_column(BigInteger, default=0)
    models: Mapped[str] = mapped_column(Text, default="")
    group: Mapped[str] = mapped_column(
        "group_name", String(64), default="default", server_default="default", index=True
    )
    used_quota: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    model_mapping: Mapped[str | None] = mapped_column(Text)
    status_code_mapping: Mapped[str | None] = mapped_column(String(1024), default="")
    priority: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)
    auto_ban: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    other_info: Mapped[str | None] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(255), index=True)
    setting: Mapped[str | None] = mapped_column(Text)
    param_override: Mapped[str | None] = mapped_column(Text)
    # Multi-key channels: "random" or "polling", and a JSON object of per-key status.
    multi_key_mode: Mapped[str] = mapped_column(String(16), default="random", server_default="random")
    multi_key_status: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("idx_channels_type_status", "type", "status"),
        Index("idx_channels_group_status", "group_name", "status"),
    )


class Ability(Timestamps, MainBase):
    __tablename__ = "abilities"

    group: Mapped[str] = mapped_column("group_name", String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    channel_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1", index=True)
    priority: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0", index=True)
    weight: Mapped[int] = mapped_column(Integer, default=0, server_default="0", index=True)
    tag: Mapped[str | None] = mapped_column(String(255), index=True)

    __table_args__ = (
        Index("idx_abilities_group_model", "group_name", "model"),
        Index("idx_abilities_model_enabled", "model", "enabled"),
    )
