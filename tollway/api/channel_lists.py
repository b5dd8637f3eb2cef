"""``GET /api/channel/`` and ``/api/channel/search``: filters, order, tag mode and the two dialects.

new-api's newer console pages with ``p`` 1-based and gets ``{items, total, page, page_size}`` (plus
``type_counts`` for its type tabs); Veloera's console (``Veloera-User``) pages with ``p`` 0-based and
gets a plain array. In tag mode a page holds tags instead of channels: all channels of those tags,
an untagged channel counting as a tag of its own (new-api drops untagged channels there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy import ColumnElement, String, case, cast, distinct, func, literal_column, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import UnaryExpression

from tollway.api.channel_forms import MAX_INT32, channel_json
from tollway.api.deps import Session
from tollway.api.envelope import ok
from tollway.api.paging import MAX_PAGE_SIZE, Page
from tollway.db.models.channel import CHANNEL_ENABLED, Channel
from tollway.runtime import Runtime

_TRUE = frozenset({"1", "t", "true", "yes"})  # Go's strconv.ParseBool, plus "yes"


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def in_group(group: str) -> ColumnElement[bool]:
    """``group`` is one of the channel's comma-separated groups."""
    column = Channel.group
    return or_(
        column == group,
        column.startswith(group + ",", autoescape=True),
        column.endswith("," + group, autoescape=True),
        column.contains("," + group + ",", autoescape=True),
    )


def _status_filter(raw: str | None) -> list[ColumnElement[bool]]:
    """NA+: ``enabled``/``1`` and ``disabled``/``0`` (every disabled kind); also ``2`` and ``3``."""
    value = (raw or "").strip().lower()
    if value in ("enabled", "1"):
        return [Channel.status == CHANNEL_ENABLED]
    if value in ("disabled", "0"):
        return [Channel.status != CHANNEL_ENABLED]
    if value in ("2", "3"):
        return [Channel.status == int(value)]
    return []


def _keyword(keyword: str) -> ColumnElement[bool]:
    """id equal, name or base URL containing it (case-insensitive). Never the key."""
    matches = [
        Channel.name.icontains(keyword, autoescape=True),
        Channel.base_url.icontains(keyword, autoescape=True),
    ]
    if keyword.isdigit() and int(keyword) <= MAX_INT32:
        matches.append(Channel.id == int(keyword))
    return or_(*matches)


@dataclass(frozen=True)
class Query:
    where: tuple[ColumnElement[bool], ...]  # every filter except the type (type_counts ignore it)
    type_filter: ColumnElement[bool] | None
    id_sort: bool
    tag_mode: bool

    @property
    def filters(self) -> tuple[ColumnElement[bool], ...]:
        return self.where if self.type_filter is None else (*self.where, self.type_filter)

    @classmethod
    def from_request(cls, request: Request, *, search: bool = False) -> Query:
        params = request.query_params
        where = _status_filter(params.get("status"))
        group = (params.get("group") or "").strip()
        if group and group != "all":
            where.append(in_group(group))
        if search:
            keyword = (params.get("keyword") or "").strip()
            if keyword:
                where.append(_keyword(keyword))
            model = (params.get("model") or "").strip()
            if model:
                where.append(Channel.models.icontains(model, autoescape=True))
        raw_type = (params.get("type") or "").strip()
        type_filter = Channel.type == int(raw_type) if raw_type.isdigit() and len(raw_type) < 10 else None
        return cls(tuple(where), type_filter, _flag(params.get("id_sort")), _flag(params.get("tag_mode")))


def page_for(request: Request, caller: Session, *, search: bool) -> Page:
    """Veloera's search sends no paging and expects every match (new-api's search was unpaged):
    it gets the largest page."""
    if not caller.veloera:
        return Page.from_request(request)
    params = request.query_params
    if search and not (params.get("p") or params.get("page_size")):
        return Page(page=1, page_size=MAX_PAGE_SIZE)
    return Page.from_request(request, zero_based=True)


def _order(id_sort: bool) -> tuple[UnaryExpression[Any], ...]:
    if id_sort:
        return (Channel.id.desc(),)
    return (Channel.priority.desc(), Channel.id.desc())


async def _channels(session: AsyncSession, query: Query, page: Page) -> tuple[list[Channel], int]:
    where = query.filters
    total = await session.scalar(select(func.count()).select_from(Channel).where(*where))
    rows = await session.scalars(
        select(Channel)
        .where(*where)
        .order_by(*_order(query.id_sort))
        .offset(page.offset)
        .limit(page.page_size)
    )
    return list(rows.all()), int(total or 0)


def _unit_key() -> ColumnElement[str]:
    """What tag mode pages over: ``t<tag>``, or ``i<id>`` for an untagged channel."""
    untagged = or_(Channel.tag.is_(None), Channel.tag == "")
    by_id = literal_column("'i'", String) + cast(Channel.id, String(20))
    return case((untagged, by_id), else_=literal_column("'t'", String) + Channel.tag)


def _row_unit(row: Channel) -> str:
    return f"t{row.tag}" if row.tag else f"i{row.id}"


async def _tag_units(session: AsyncSession, query: Query, page: Page) -> tuple[list[Channel], int]:
    units = select(
        _unit_key().label("unit"), Channel.priority.label("priority"), Channel.id.label("id")
    ).where(*query.filters)
    sub = units.subquery()
    total = await session.scalar(select(func.count(distinct(sub.c.unit))))
    order = [func.max(sub.c.id).desc()]
    if not query.id_sort:
        order.insert(0, func.max(sub.c.priority).desc())
    keys = list(
        await session.scalars(
            select(sub.c.unit).group_by(sub.c.unit).order_by(*order).offset(page.offset).limit(page.page_size)
        )
    )
    if not keys:
        return [], int(total or 0)
    tags = [key[1:] for key in keys if key.startswith("t")]
    ids = [int(key[1:]) for key in keys if key.startswith("i")]
    members = or_(Channel.tag.in_(tags), Channel.id.in_(ids))
    rows = await session.scalars(
        select(Channel).where(*query.filters, members).order_by(*_order(query.id_sort))
    )
    # MySQL compares tags case-insensitively: a row whose tag differs only in case joins its unit.
    rank = {key.lower(): index for index, key in enumerate(keys)}
    ordered = sorted(rows.all(), key=lambda row: rank.get(_row_unit(row).lower(), len(keys)))
    return ordered, int(total or 0)


async def _type_counts(session: AsyncSession, query: Query) -> dict[int, int]:
    counts = await session.execute(
        select(Channel.type, func.count()).where(*query.where).group_by(Channel.type)
    )
    return {int(channel_type): int(count) for channel_type, count in counts.all()}


async def answer(runtime: Runtime, caller: Session, query: Query, page: Page) -> dict[str, Any]:
    async with runtime.db.session() as session:
        fetch = _tag_units if query.tag_mode else _channels
        rows, total = await fetch(session, query, page)
        items = [channel_json(row) for row in rows]
        if caller.veloera:
            return ok(items)
        body = page.answer(items, total)
        body["type_counts"] = await _type_counts(session, query)
    return ok(body)
