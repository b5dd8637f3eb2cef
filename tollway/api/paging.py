"""Paging as new-api's newer routes do it: ``p`` 1-based, ``page_size`` (default 10, at most 100),
answered as ``{items, total, page, page_size}``. Veloera's console uses 0-based ``p`` on a few lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_PAGE = 10_000_000  # deeper pages use keyset paging; a larger p is clamped rather than overflowing


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


@dataclass(frozen=True)
class Page:
    page: int  # 1-based
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size

    def answer(self, items: list[Any], total: int) -> dict[str, Any]:
        return {"items": items, "total": total, "page": self.page, "page_size": self.page_size}

    @classmethod
    def from_request(
        cls, request: Request, *, zero_based: bool = False, size_param: str = "page_size"
    ) -> Page:
        """Read ``p`` and the page size; with ``zero_based`` (Veloera's token and channel lists)
        ``p=0`` is the first page."""
        raw = _int(request.query_params.get("p"), 0 if zero_based else 1)
        page = raw + 1 if zero_based else raw
        size = _int(request.query_params.get(size_param), DEFAULT_PAGE_SIZE)
        if size <= 0:
            size = DEFAULT_PAGE_SIZE
        return cls(page=min(max(page, 1), MAX_PAGE), page_size=min(size, MAX_PAGE_SIZE))
