"""Monthly range partitions of the ``logs`` table on PostgreSQL.

Partitions are named ``logs_pYYYYMM`` and cover ``[first second of the month, first second of the
next month)`` in UTC unix seconds. A ``logs_default`` partition catches anything outside them, so an
insert never fails for want of a partition; the maintenance job creates months ahead of time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, text


def postgres_supports_partitions(bind: Connection) -> bool:
    """Declarative partitioning with a default partition needs PostgreSQL 11."""
    if bind.dialect.name != "postgresql":
        return False
    version = bind.dialect.server_version_info or (0,)
    return version >= (11,)


def month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp())


def add_months(year: int, month: int, count: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + count
    return index // 12, index % 12 + 1


def create_month_partitions(
    bind: Connection, table: str, *, months_ahead: int, now: datetime | None = None
) -> list[str]:
    """Create the partitions of the current month and ``months_ahead`` following ones (if missing),
    and the default partition. Returns the names of the partitions that were created."""
    now = now or datetime.now(UTC)
    created: list[str] = []
    bind.execute(text(f'CREATE TABLE IF NOT EXISTS "{table}_default" PARTITION OF "{table}" DEFAULT'))
    for offset in range(months_ahead + 1):
        year, month = add_months(now.year, now.month, offset)
        next_year, next_month = add_months(year, month, 1)
        name = f"{table}_p{year:04d}{month:02d}"
        exists = bind.execute(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar()
        if exists:
            continue
        bind.execute(
            text(
                f'CREATE TABLE "{name}" PARTITION OF "{table}" '
                f"FOR VALUES FROM ({month_start(year, month)}) TO ({month_start(next_year, next_month)})"
            )
        )
        created.append(name)
    return created
