"""An immutable snapshot of a channel, as the hot path needs it (parsed once per cache rebuild)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tollway.db.models import Channel

log = logging.getLogger("tollway.relay.channel")

# new-api's channel type numbers for the providers Tollway speaks today.
TYPE_OPENAI = 1
TYPE_AZURE = 3
TYPE_CUSTOM = 8
TYPE_ANTHROPIC = 14
TYPE_GEMINI = 24


def _json_object(text: str | None, what: str, channel_id: int) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        log.warning("channel %d: %s is not valid JSON; ignored", channel_id, what)
        return {}
    if not isinstance(value, dict):
        log.warning("channel %d: %s is not a JSON object; ignored", channel_id, what)
        return {}
    return value


def split_keys(raw: str) -> tuple[str, ...]:
    """A channel's key field holds one key or several separated by newlines."""
    return tuple(line.strip() for line in raw.replace("\r", "").split("\n") if line.strip())


def split_list(raw: str | None) -> tuple[str, ...]:
    """Comma-separated lists (models, groups) as new-api stores them."""
    return tuple(item.strip() for item in (raw or "").split(",") if item.strip())


@dataclass(frozen=True)
class ChannelSnapshot:
    id: int
    type: int
    name: str
    base_url: str
    keys: tuple[str, ...]
    status: int = 1
    models: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("default",)
    priority: int = 0
    weight: int = 0
    auto_ban: bool = True
    tag: str = ""
    multi_key_mode: str = "random"  # "random" or "polling"
    openai_organization: str = ""
    other: str = ""  # Azure: the API version
    test_model: str = ""
    model_mapping: dict[str, str] = field(default_factory=dict)
    status_code_mapping: dict[str, str] = field(default_factory=dict)
    param_override: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Channel) -> ChannelSnapshot:
        mapping = _json_object(row.model_mapping, "model_mapping", row.id)
        status_map = _json_object(row.status_code_mapping, "status_code_mapping", row.id)
        return cls(
            id=row.id,
            type=row.type,
            name=row.name or "",
            base_url=(row.base_url or "").rstrip("/"),
            keys=split_keys(row.key or ""),
            status=row.status,
            models=split_list(row.models),
            groups=split_list(row.group) or ("default",),
            priority=int(row.priority or 0),
            weight=int(row.weight or 0),
            auto_ban=bool(row.auto_ban),
            tag=row.tag or "",
            multi_key_mode=row.multi_key_mode or "random",
            openai_organization=row.openai_organization or "",
            other=row.other or "",
            test_model=row.test_model or "",
            model_mapping={str(k): str(v) for k, v in mapping.items() if isinstance(v, str) and v},
            status_code_mapping={str(k): str(v) for k, v in status_map.items()},
            param_override=_json_object(row.param_override, "param_override", row.id),
            setting=_json_object(row.setting, "setting", row.id),
        )

    def upstream_model(self, model: str) -> str:
        """The model name sent upstream: one hop of ``model_mapping`` (new-api does not chain)."""
        return self.model_mapping.get(model) or model
