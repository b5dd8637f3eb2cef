"""Management routes: channels — lists, search, create, edit, delete, tags (reference §2.5, §4.3).

All admin-only. Keys go in and never come out: every answer shows ``key: ""``, and search never
matches keys. Every write rebuilds the channel's abilities in the same transaction and tells the
relay's channel cache at once, so routing follows on the next request. Tests, balances and
upstream model lists live in :mod:`tollway.api.channels_ops`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tollway.api import channel_lists as lists
from tollway.api.channel_forms import (
    ADD_MODES,
    AddChannelBody,
    ChannelBody,
    channel_json,
    check_groups,
    check_key_column,
    check_model_mapping,
    check_models,
    check_multi_key_mode,
    check_priority,
    check_tag,
    check_vertex,
    check_weight,
    clean_keys,
    column_values,
    new_channel_values,
    parse,
)
from tollway.api.channels_ops import router as ops_router
from tollway.api.deps import AdminUser, RuntimeDep
from tollway.api.envelope import ok
from tollway.billing.defaults import DEFAULT_MODEL_PRICE, DEFAULT_MODEL_RATIO
from tollway.db.models.channel import (
    CHANNEL_AUTO_DISABLED,
    CHANNEL_ENABLED,
    CHANNEL_MANUALLY_DISABLED,
    Ability,
    Channel,
)
from tollway.errors import BusinessError, NotFound
from tollway.providers.registry import ChannelType
from tollway.relay.abilities import rebuild_abilities, rebuild_all
from tollway.relay.catalog import model_object
from tollway.relay.channel import split_keys, split_list
from tollway.runtime import Runtime

router = APIRouter()

MAX_BATCH = 1000
NOT_FOUND = "channel not found"


class IdsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[int] | None = None
    tag: str | None = None


class TagBody(BaseModel):
    """``PUT /api/channel/tag`` (and the tag enable/disable routes, which read only ``tag``).
    As in new-api, an empty string leaves a field unchanged."""

    model_config = ConfigDict(extra="ignore")
    tag: str | None = None
    new_tag: str | None = None
    priority: int | None = None
    weight: int | None = None
    model_mapping: str | dict[str, Any] | None = None
    models: str | list[str] | None = None
    groups: str | list[str] | None = None


def _rowcount(result: object) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if count and count > 0 else 0


def _batch_ids(ids: list[int] | None) -> list[int]:
    if not ids:
        raise BusinessError("ids must list at least one channel id")
    if len(ids) > MAX_BATCH:
        raise BusinessError(f"at most {MAX_BATCH} channels at a time")
    return list(dict.fromkeys(ids))


def _tag(value: str | None) -> str:
    tag = (value or "").strip()
    if not tag:
        raise BusinessError("tag is required")
    return tag


def _changed(runtime: Runtime) -> None:
    runtime.relay.channels.changed()


# ----- reads ----------------------------------------------------------------------------------


@router.get("/channel/")
async def list_channels(request: Request, runtime: RuntimeDep, caller: AdminUser) -> dict[str, Any]:
    query = lists.Query.from_request(request)
    page = lists.page_for(request, caller, search=False)
    return await lists.answer(runtime, caller, query, page)


@router.get("/channel/search")
async def search_channels(request: Request, runtime: RuntimeDep, caller: AdminUser) -> dict[str, Any]:
    query = lists.Query.from_request(request, search=True)
    page = lists.page_for(request, caller, search=True)
    return await lists.answer(runtime, caller, query, page)


@router.get("/channel/models")
async def channel_models(runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Every model a channel declares, plus those Tollway has default prices for."""
    names: set[str] = set(DEFAULT_MODEL_RATIO) | set(DEFAULT_MODEL_PRICE)
    async with runtime.db.session() as session:
        for models in await session.scalars(select(Channel.models)):
            names.update(split_list(models))
    return ok([model_object(name) for name in sorted(names)])


@router.get("/channel/models_enabled")
async def enabled_models(runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    async with runtime.db.session() as session:
        rows = await session.scalars(select(Ability.model).where(Ability.enabled.is_(True)).distinct())
        return ok(sorted(rows.all()))


@router.get("/channel/{channel_id:int}")
@router.get("/channel/{channel_id:int}/", include_in_schema=False)
async def get_channel(channel_id: int, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    async with runtime.db.session() as session:
        row = await session.get(Channel, channel_id)
        if row is None:
            raise NotFound(NOT_FOUND)
        return ok(channel_json(row))


# ----- create and edit ------------------------------------------------------------------------


def _key_sets(body: ChannelBody, mode: str, channel_type: int) -> list[str]:
    """The key of each channel to create: one per line (new-api), or all lines in one multi-key
    channel (``single``, ``multi_to_single``). Vertex AI keys are JSON documents: kept whole."""
    raw = body.key or ""
    if channel_type == ChannelType.VERTEX_AI and raw.strip():
        return [check_key_column(raw.strip())]
    keys = clean_keys(raw)
    if not keys:
        raise BusinessError("key is required")
    if mode == "batch":
        return keys
    return [_joined(keys)]


def _joined(keys: list[str]) -> str:
    return check_key_column("\n".join(keys))


@router.post("/channel/")
async def create_channel(
    runtime: RuntimeDep, _caller: AdminUser, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """A Channel JSON body (new-api: one channel per key line), or NA+'s ``{mode, channel}``."""
    mode, multi_key_mode = "batch", None
    if isinstance(body, dict) and isinstance(body.get("channel"), dict):
        request = parse(AddChannelBody, body)
        mode, multi_key_mode, channel = request.mode, request.multi_key_mode, request.channel
        if mode not in ADD_MODES:
            raise BusinessError('mode must be "single", "batch" or "multi_to_single"')
    else:
        channel = parse(ChannelBody, body)
    values = new_channel_values(channel)
    if multi_key_mode:
        values["multi_key_mode"] = check_multi_key_mode(multi_key_mode)
    keys = _key_sets(channel, mode, values["type"])
    now = int(time.time())
    ids: list[int] = []
    async with runtime.db.session() as session, session.begin():
        for key in keys:
            row = Channel(**values, key=key, created_time=now)
            session.add(row)
            await session.flush()
            await rebuild_abilities(session, row)
            ids.append(row.id)
    _changed(runtime)
    return ok(ids)


def _new_key(row: Channel, body: ChannelBody, channel_type: int) -> str | None:
    """The key to store after an edit, or None to keep the stored one (an empty key)."""
    raw = body.key or ""
    if not raw.strip():
        return None
    if channel_type == ChannelType.VERTEX_AI:
        return check_key_column(raw.strip())
    keys = clean_keys(raw)
    if body.key_mode == "append":
        keys = list(dict.fromkeys([*split_keys(row.key or ""), *keys]))
    return _joined(keys)


@router.put("/channel/")
async def update_channel(
    runtime: RuntimeDep, _caller: AdminUser, body: Annotated[Any, Body()] = None
) -> dict[str, Any]:
    """Only the fields sent change; an empty or absent ``key`` keeps the stored keys."""
    channel = parse(ChannelBody, body)
    if channel.id is None:
        raise BusinessError("id is required")
    values = column_values(channel)
    async with runtime.db.session() as session, session.begin():
        row = await session.scalar(select(Channel).where(Channel.id == channel.id).with_for_update())
        if row is None:
            raise NotFound(NOT_FOUND)
        key = _new_key(row, channel, values.get("type", row.type))
        for name, value in values.items():
            setattr(row, name, value)
        if key is not None:
            row.key = key
        if values.keys() & {"type", "other"}:
            check_vertex(row.type, row.other)
        await session.flush()
        await rebuild_abilities(session, row)
        data = channel_json(row)
    _changed(runtime)
    return ok(data)


# ----- delete ---------------------------------------------------------------------------------


async def _delete_ids(session: AsyncSession, ids: list[int]) -> int:
    if not ids:
        return 0
    await session.execute(delete(Ability).where(Ability.channel_id.in_(ids)))
    return _rowcount(await session.execute(delete(Channel).where(Channel.id.in_(ids))))


def _deleted(runtime: Runtime, ids: list[int]) -> None:
    """Tell the relay: routing reloads, and round-robin positions of the channels are dropped."""
    for channel_id in ids:
        runtime.relay.engine.keys.forget(channel_id)
    runtime.relay.channels.changed()


@router.delete("/channel/disabled")
async def delete_disabled(runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Delete every disabled channel (manually or automatically); ``data`` = how many."""
    disabled = Channel.status.in_((CHANNEL_MANUALLY_DISABLED, CHANNEL_AUTO_DISABLED))
    async with runtime.db.session() as session, session.begin():
        ids = list(await session.scalars(select(Channel.id).where(disabled).with_for_update()))
        count = await _delete_ids(session, ids)
    _deleted(runtime, ids)
    return ok(count)


@router.delete("/channel/{channel_id:int}")
@router.delete("/channel/{channel_id:int}/", include_in_schema=False)
async def delete_channel(channel_id: int, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    async with runtime.db.session() as session, session.begin():
        if not await _delete_ids(session, [channel_id]):
            raise NotFound(NOT_FOUND)
    _deleted(runtime, [channel_id])
    return ok()


@router.post("/channel/batch")
async def delete_batch(body: IdsBody, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    ids = _batch_ids(body.ids)
    async with runtime.db.session() as session, session.begin():
        count = await _delete_ids(session, ids)
    _deleted(runtime, ids)
    return ok(count)


@router.post("/channel/fix")
async def fix_abilities(runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Rebuild the whole abilities table from the channels; ``data`` = rows written."""
    async with runtime.db.session() as session, session.begin():
        count = await rebuild_all(session)
    _changed(runtime)
    return ok(count)


# ----- tags -----------------------------------------------------------------------------------


async def _set_tag_status(runtime: Runtime, tag: str, status: int) -> int:
    """Set the status of every channel with ``tag``; abilities follow in the same transaction."""
    tagged = select(Channel.id).where(Channel.tag == tag)
    async with runtime.db.session() as session, session.begin():
        count = _rowcount(
            await session.execute(update(Channel).where(Channel.tag == tag).values(status=status))
        )
        if not count:
            raise BusinessError(f'no channel has the tag "{tag}"')
        await session.execute(
            update(Ability).where(Ability.channel_id.in_(tagged)).values(enabled=status == CHANNEL_ENABLED)
        )
    _changed(runtime)
    return count


@router.post("/channel/tag/disabled")
async def disable_tag(body: TagBody, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    return ok(await _set_tag_status(runtime, _tag(body.tag), CHANNEL_MANUALLY_DISABLED))


@router.post("/channel/tag/enabled")
async def enable_tag(body: TagBody, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    return ok(await _set_tag_status(runtime, _tag(body.tag), CHANNEL_ENABLED))


def _tag_edits(body: TagBody) -> dict[str, Any]:
    """The columns ``PUT /api/channel/tag`` changes: fields sent non-empty (new-api's rule)."""
    edits: dict[str, Any] = {}
    if body.new_tag and body.new_tag.strip():
        edits["tag"] = check_tag(body.new_tag)
    if body.priority is not None:
        edits["priority"] = check_priority(body.priority)
    if body.weight is not None:
        edits["weight"] = check_weight(body.weight)
    if body.model_mapping:
        edits["model_mapping"] = check_model_mapping(body.model_mapping)
    if body.models:
        edits["models"] = check_models(body.models)
    if body.groups:
        groups = body.groups if isinstance(body.groups, str) else ",".join(body.groups)
        edits["group"] = check_groups(groups)
    return edits


@router.put("/channel/tag")
async def edit_tag(body: TagBody, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Bulk edit of every channel with ``tag``; ``data`` = how many changed."""
    tag = _tag(body.tag)
    edits = _tag_edits(body)
    async with runtime.db.session() as session, session.begin():
        rows = list(await session.scalars(select(Channel).where(Channel.tag == tag).with_for_update()))
        if not rows:
            raise BusinessError(f'no channel has the tag "{tag}"')
        for row in rows:
            for name, value in edits.items():
                setattr(row, name, value)
        await session.flush()
        for row in rows:
            await rebuild_abilities(session, row)
    _changed(runtime)
    return ok(len(rows))


@router.post("/channel/batch/tag")
async def tag_batch(body: IdsBody, runtime: RuntimeDep, _caller: AdminUser) -> dict[str, Any]:
    """Set (or, with an empty tag, clear) the tag of several channels; ``data`` = how many."""
    ids = _batch_ids(body.ids)
    tag = check_tag(body.tag or "") or None
    async with runtime.db.session() as session, session.begin():
        count = _rowcount(await session.execute(update(Channel).where(Channel.id.in_(ids)).values(tag=tag)))
        await session.execute(update(Ability).where(Ability.channel_id.in_(ids)).values(tag=tag))
    _changed(runtime)
    return ok(count)


router.include_router(ops_router)
