"""Channel bodies of the management API: what a client may send (validated, normalised to column
values) and what it gets back (new-api's Channel JSON, with the key always blank).

Every check here runs before anything is written, so a refused request changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from tollway.db.models.channel import (
    CHANNEL_AUTO_DISABLED,
    CHANNEL_ENABLED,
    CHANNEL_MANUALLY_DISABLED,
    Channel,
)
from tollway.errors import BusinessError
from tollway.providers.registry import ChannelType
from tollway.relay.channel import split_keys, split_list

MAX_TEXT_BYTES = 65_535  # MySQL TEXT: the smallest of the three databases' text columns
MAX_NAME = 255  # name, tag, test_model, openai_organization, every model name
MAX_GROUP = 64  # channels.group_name is VARCHAR(64)
MAX_BASE_URL = 512
MAX_STATUS_CODE_MAPPING = 1024
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
CHANNEL_TYPES = frozenset(int(t) for t in ChannelType)
STATUSES = (CHANNEL_ENABLED, CHANNEL_MANUALLY_DISABLED, CHANNEL_AUTO_DISABLED)
MULTI_KEY_MODES = ("random", "polling")
ADD_MODES = ("single", "batch", "multi_to_single")


class ChannelBody(BaseModel):
    """A Channel as new-api's consoles and scripts send it; unknown fields are ignored (like Gin)."""

    model_config = ConfigDict(extra="ignore")

    id: int | None = None
    type: int | None = None
    name: str | None = None
    key: str | None = None
    openai_organization: str | None = None
    test_model: str | None = None
    status: int | None = None
    weight: int | None = None
    base_url: str | None = None
    other: str | None = None
    models: str | list[str] | None = None
    group: str | None = None
    groups: list[str] | None = None  # the consoles' form state, sent alongside ``group``
    model_mapping: str | dict[str, Any] | None = None
    status_code_mapping: str | dict[str, Any] | None = None
    priority: int | None = None
    auto_ban: int | None = None
    tag: str | None = None
    setting: str | dict[str, Any] | None = None
    param_override: str | dict[str, Any] | None = None
    multi_key_mode: str | None = None
    key_mode: str | None = None  # NA+ edit of a multi-key channel: "append" or "replace"


class AddChannelBody(BaseModel):
    """NA+'s creation body: ``{mode, multi_key_mode, channel}``."""

    model_config = ConfigDict(extra="ignore")

    mode: str = "batch"
    multi_key_mode: str | None = None
    channel: ChannelBody


def describe(exc: ValidationError) -> str:
    """A pydantic error as one line a console can show."""
    parts = []
    for error in exc.errors()[:3]:
        location = ".".join(str(part) for part in error.get("loc", ()))
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else str(error.get("msg")))
    return "invalid request: " + "; ".join(parts)


def parse(model: type[BaseModel], data: Any) -> Any:
    """``model`` validated from ``data``, or a :class:`BusinessError` naming the bad field."""
    if not isinstance(data, dict):
        raise BusinessError("invalid request: the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BusinessError(describe(exc)) from None


# ----- field checks ---------------------------------------------------------------------------


def _fits_text(value: str, what: str) -> str:
    if len(value.encode()) > MAX_TEXT_BYTES:
        raise BusinessError(f"{what} is too long (at most {MAX_TEXT_BYTES} bytes)")
    return value


def _short(value: str, what: str, limit: int = MAX_NAME) -> str:
    if len(value) > limit:
        raise BusinessError(f"{what} is too long (at most {limit} characters)")
    return value


def check_type(value: int) -> int:
    if value not in CHANNEL_TYPES:
        raise BusinessError(f"unknown channel type {value}: use one of new-api's channel type numbers")
    return value


def check_name(value: str) -> str:
    if not value.strip():
        raise BusinessError("name must not be empty")
    return _short(value, "name")


def check_models(value: str | list[str]) -> str:
    """A comma list (or a JSON array) of model names → ``a,b,c``, blanks and repeats dropped."""
    names = split_list(",".join(value) if isinstance(value, list) else value)
    if not names:
        raise BusinessError("models must list at least one model")
    for name in names:
        if len(name) > MAX_NAME:
            raise BusinessError(f"model name too long (at most {MAX_NAME} characters): {name[:40]}…")
    return _fits_text(",".join(dict.fromkeys(names)), "models")


def check_groups(value: str) -> str:
    groups = split_list(value)
    if not groups:
        raise BusinessError("group must name at least one group")
    return _short(",".join(dict.fromkeys(groups)), "group", MAX_GROUP)


def check_base_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BusinessError("base_url must be empty or an http(s) URL such as https://api.openai.com")
    return _short(url, "base_url", MAX_BASE_URL)


def _json_text(value: str | dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False), value
    text = value.strip()
    if not text:
        return "", {}
    try:
        parsed = json.loads(text)
    except ValueError:
        raise BusinessError(f"{what} must be valid JSON (a JSON object)") from None
    if not isinstance(parsed, dict):
        raise BusinessError(f"{what} must be a JSON object")
    return text, parsed


def check_json_object(value: str | dict[str, Any], what: str) -> str:
    return _fits_text(_json_text(value, what)[0], what)


def check_model_mapping(value: str | dict[str, Any]) -> str:
    text, mapping = _json_text(value, "model_mapping")
    for source, target in mapping.items():
        if not isinstance(target, str):
            raise BusinessError(f'model_mapping values must be model names (strings); "{source}" is not')
    return _fits_text(text, "model_mapping")


def _status_code(value: object) -> bool:
    return isinstance(value, str) and value.strip().isdigit() and 100 <= int(value) <= 599


def check_status_code_mapping(value: str | dict[str, Any]) -> str:
    text, mapping = _json_text(value, "status_code_mapping")
    for source, target in mapping.items():
        if not (_status_code(source) and _status_code(target)):
            raise BusinessError('status_code_mapping maps status codes as strings, e.g. {"429": "500"}')
    return _short(text, "status_code_mapping", MAX_STATUS_CODE_MAPPING)


def check_priority(value: int) -> int:
    if not -MAX_INT64 <= value <= MAX_INT64:
        raise BusinessError("priority is out of range")
    return value


def check_weight(value: int) -> int:
    if not 0 <= value <= MAX_INT32:
        raise BusinessError("weight must be an integer of at least 0")
    return value


def check_status(value: int) -> int:
    if value not in STATUSES:
        raise BusinessError("status must be 1 (enabled), 2 (disabled) or 3 (automatically disabled)")
    return value


def check_multi_key_mode(value: str) -> str:
    if value not in MULTI_KEY_MODES:
        raise BusinessError('multi_key_mode must be "random" or "polling"')
    return value


def check_vertex(channel_type: int, other: str | None) -> None:
    """new-api: a Vertex AI channel needs its region in ``other`` (text, or JSON with ``default``)."""
    if channel_type != ChannelType.VERTEX_AI:
        return
    text = (other or "").strip()
    if not text:
        raise BusinessError("a Vertex AI channel needs its region in other")
    if text.startswith("{"):
        _, regions = _json_text(text, "other")
        if "default" not in regions:
            raise BusinessError('other must contain a "default" region')


def check_key_column(value: str) -> str:
    return _fits_text(value, "key")


def check_tag(value: str) -> str:
    """A tag to store; blank clears it (the caller maps "" to None)."""
    return _short(value.strip(), "tag")


def clean_keys(raw: str) -> list[str]:
    keys = list(dict.fromkeys(split_keys(raw)))
    for key in keys:
        _fits_text(key, "key")
    return keys


def _optional_short(value: str, what: str) -> str | None:
    return _short(value.strip(), what) or None


# The columns a client may write (and ``key``, handled by the callers). Counters and test results
# (used_quota, balance, response_time…) are the server's: the consoles send them back stale with
# every edit, and new-api's blind copy of them is a lost-update bug.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "type": check_type,
    "name": check_name,
    "openai_organization": lambda v: _optional_short(v, "openai_organization"),
    "test_model": lambda v: _optional_short(v, "test_model"),
    "status": check_status,
    "weight": check_weight,
    "base_url": check_base_url,
    "other": lambda v: _fits_text(v, "other"),
    "models": check_models,
    "group": check_groups,
    "model_mapping": check_model_mapping,
    "status_code_mapping": check_status_code_mapping,
    "priority": check_priority,
    "auto_ban": lambda v: 1 if v else 0,
    "tag": lambda v: _optional_short(v, "tag"),
    "setting": lambda v: check_json_object(v, "setting"),
    "param_override": lambda v: check_json_object(v, "param_override"),
    "multi_key_mode": check_multi_key_mode,
}


def column_values(body: ChannelBody) -> dict[str, Any]:
    """Validated column values for the writable fields the client sent (the key excepted: the
    caller decides how keys split into channels). A null counts as not sent."""
    raw = {
        name: getattr(body, name)
        for name in body.model_fields_set
        if name in _CHECKS and getattr(body, name) is not None
    }
    if "group" not in raw and body.groups is not None:
        raw["group"] = ",".join(body.groups)
    return {name: _CHECKS[name](value) for name, value in raw.items()}


def new_channel_values(body: ChannelBody) -> dict[str, Any]:
    """Column values of a channel to create: required fields checked, defaults filled in."""
    if body.status == 0:  # new-api's zero value: the column default (enabled) applies
        body = body.model_copy(update={"status": None})
    values = column_values(body)
    for required in ("name", "models"):
        if required not in values:
            raise BusinessError(f"{required} is required")
    values.setdefault("type", int(ChannelType.OPENAI))  # new-api relays an unset type as OpenAI
    values.setdefault("group", "default")
    values.setdefault("status", CHANNEL_ENABLED)
    check_vertex(values["type"], values.get("other"))
    return values


# ----- responses ------------------------------------------------------------------------------


def channel_json(row: Channel) -> dict[str, Any]:
    """new-api's Channel object; ``key`` is always "" (keys never leave the server)."""
    keys = split_keys(row.key or "")
    multi = len(keys) > 1
    mode = row.multi_key_mode or "random"
    return {
        "id": row.id,
        "type": row.type,
        "key": "",
        "openai_organization": row.openai_organization,
        "test_model": row.test_model,
        "status": row.status,
        "name": row.name,
        "weight": row.weight,
        "created_time": row.created_time,
        "test_time": row.test_time,
        "response_time": row.response_time,
        "base_url": row.base_url,
        "other": row.other or "",
        "balance": row.balance,
        "balance_updated_time": row.balance_updated_time,
        "models": row.models,
        "group": row.group,
        "used_quota": row.used_quota,
        "model_mapping": row.model_mapping,
        "status_code_mapping": row.status_code_mapping,
        "priority": row.priority,
        "auto_ban": row.auto_ban,
        "other_info": row.other_info or "",
        "tag": row.tag,
        "setting": row.setting,
        "param_override": row.param_override,
        "multi_key_mode": mode,
        "channel_info": {
            "is_multi_key": multi,
            "multi_key_size": len(keys) if multi else 0,
            "multi_key_mode": mode,
        },
    }
