"""log_counts: the PostgreSQL insert trigger stands by for the batch writer's own inserts

Replaces the function behind the PostgreSQL triggers on ``logs`` (``log_counts_apply``) with one
that, for an INSERT or COPY statement run while the transaction-local setting
``tollway.log_counts_paused`` is ``'on'``, only sets it back to ``'off'``: the batch writer sets it
right before its own COPY and adds its batch to the summaries itself, with one upsert per table
(``tollway.usage.log_counts``). Every other insert, and every DELETE, UPDATE and TRUNCATE, is
counted by the triggers as before. ``CREATE OR REPLACE FUNCTION`` swaps the body in place (the
triggers keep pointing at it), and writers only pause once they see the new body, so servers may
keep writing logs meanwhile. A no-op on SQLite and MySQL/MariaDB.

The downgrade restores the function of 0002, after which writers stop pausing and the triggers
count everything again (run it with the servers stopped: a batch that paused just before would
otherwise be counted twice).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

from tollway.usage.log_counts import replace_pg_function

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    replace_pg_function(op.get_bind(), standby=True)


def downgrade() -> None:
    # Not destructive: it only puts back the trigger function of 0002.
    replace_pg_function(op.get_bind(), standby=False)
