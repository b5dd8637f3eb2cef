"""Shared body of the two Alembic environments (main database and log database).

Migrations run on a connection Tollway opened itself (``config.attributes["connection"]``), so
the same code serves ``tollway migrate``, start-up on a master node and the tests.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData


def run(metadata: MetaData, version_table: str) -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - only reachable from the alembic CLI
        raise RuntimeError("run Tollway migrations with `tollway migrate`")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=version_table,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
