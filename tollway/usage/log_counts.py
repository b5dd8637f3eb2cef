"""The hourly summaries of ``logs`` and how they are kept exact.

Three tables, each ``count``, ``quota``, ``prompt_tokens`` and ``completion_tokens`` summed per key,
where the hour bucket is ``floor(created_at / 3600) * 3600`` (written with ``%`` so that it floors
on every database):

* ``log_type_counts``: (hour, type) — what unfiltered lists and statistics read;
* ``log_dim_counts``: (dim, value, hour, type), one row per filterable column (``DIM_CODES``) and
  value — what a list filtered on one column (a user, a model, a channel…) reads;
* ``log_counts``: (hour, type, user_id, token_id, channel_id, model_name, username, token_name,
  group) — what several filters at once read.

Database triggers on ``logs`` keep them in the transaction of the statement that changed the logs:
whatever writes or deletes log rows (the batch writer, an audit log, the retention purge, an
operator's SQL), the summaries move with it, with no window in which a reader sees one without the
other. Rows whose count drops to zero are deleted. Per database:

* PostgreSQL: one statement-level trigger per INSERT / DELETE / UPDATE on ``logs`` with transition
  tables, which sums the statement's rows per key and applies one upsert per table (keys in a
  fixed order, so concurrent writers take the row locks in the same order); TRUNCATE of ``logs``
  empties them. Statements naming one partition (the default-partition move of ``partition_jobs``)
  do not fire them, which is right: moving rows between partitions changes no count. Dropping a
  partition fires nothing either: the retention purge deletes that range's summary rows itself.
* SQLite and MySQL/MariaDB: row-level triggers doing the same per row.

The batch writer (SQLite and PostgreSQL) does its own inserts' share itself, with one upsert per
table per batch (:class:`BatchCounts`; on PostgreSQL tables and keys in the trigger's order, so
that writers and triggers lock rows in one order), while the insert trigger stands by:

* SQLite: while ``log_counts_paused`` holds a row, which only the writer's transaction ever sees.
* PostgreSQL (logs migration 0003): for an INSERT or COPY statement run while the setting
  ``PG_SETTING`` is ``'on'``, which the trigger then sets back to ``'off'``: the writer sets it
  (``PG_PAUSE``, ``set_config(…, true)``: local to its transaction, invisible to other sessions,
  undone by commit or rollback) right before its one ``COPY``, so the pause covers that statement
  only. ``PG_PAUSE`` sets it only when the insert trigger is enabled and its function knows the
  setting, and the writer sums its batch only then: it counts its rows exactly when the trigger
  would not, also against a database without migration 0003 (the trigger counts them) or while
  the insert trigger is disabled for a bulk load (nothing does, as before). A row in
  ``log_counts_paused`` would do on PostgreSQL too, but concurrent writers, each inserting that
  row, would wait for one another's commit. The transition table is filled all the same
  (PostgreSQL captures it for every statement that fires the trigger); what the pause saves is the
  trigger's per-statement grouping and upserts.

On MySQL with binary logging on, creating triggers needs SUPER or
``log_bin_trust_function_creators=1``.

:func:`rebuild` recomputes the tables from ``logs`` (the migration's backfill; a bulk load that
dropped the triggers uses it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

BUCKET_SECONDS = 3600
TRIGGER_NAMES = ("trg_logs_counts_insert", "trg_logs_counts_delete", "trg_logs_counts_update")
PG_FUNCTION = "log_counts_apply"
PG_TRUNCATE_TRIGGER = "trg_logs_counts_truncate"

DIMENSIONS = (
    "type",
    "user_id",
    "token_id",
    "channel_id",
    "model_name",
    "username",
    "token_name",
    "group_name",
)  # the key after the bucket, in the unique index's order
SUMS = ("quota", "prompt_tokens", "completion_tokens")
DIM_CODES = {
    "user_id": 1,
    "username": 2,
    "token_id": 3,
    "token_name": 4,
    "channel_id": 5,
    "model_name": 6,
    "group_name": 7,
}  # log_dim_counts.dim: which column ``value`` holds
DIM_KEY = ("dim", "value", "bucket", "type")
INTEGER_DIMS = frozenset({"user_id", "token_id", "channel_id"})


def _as_text(d: str, expression: str, column: str) -> str:
    """``expression`` as ``log_dim_counts.value`` holds it: integers as decimal text. (On MySQL
    ``CONCAT``, whose result yields to the column's collation, where a ``CAST`` would clash.)"""
    if column not in INTEGER_DIMS:
        return expression
    return f"CONCAT({expression})" if d == "mysql" else f"CAST({expression} AS TEXT)"


def _dim_rows(d: str, source: str, bucket: str, extra: str) -> str:
    """``SELECT dim, value, bucket, type, <extra> FROM source`` once per dimension, UNION ALL."""
    q = _q
    return " UNION ALL ".join(
        f"SELECT {code} AS {q(d, 'dim')}, {_as_text(d, q(d, column), column)} AS {q(d, 'value')}, "
        f"{bucket} AS {q(d, 'bucket')}, {q(d, 'type')}, {extra} FROM {source}"
        for column, code in DIM_CODES.items()
    )


def bucket_of(timestamp: int) -> int:
    """The start of the UTC hour holding ``timestamp`` (floor, also for negative values)."""
    return timestamp - timestamp % BUCKET_SECONDS


def bucket_sql(column: str) -> str:
    """SQL for :func:`bucket_of`: SQL's ``%`` keeps the dividend's sign, hence the double modulo."""
    size = BUCKET_SECONDS
    return f"({column} - ((({column} % {size}) + {size}) % {size}))"


def _quoter(dialect: str) -> str:
    return "`" if dialect == "mysql" else '"'


def _q(dialect: str, name: str) -> str:
    mark = _quoter(dialect)
    return f"{mark}{name}{mark}"


def _columns(dialect: str, names: tuple[str, ...]) -> str:
    return ", ".join(_q(dialect, name) for name in names)


def _run(conn: Connection, sql: str) -> None:
    """Through ``text()``: it escapes ``%`` for the drivers whose paramstyle uses it."""
    conn.execute(text(sql))


def rebuild(conn: Connection) -> None:
    """Recompute both summaries from the rows of ``logs`` (in the caller's transaction)."""
    d = conn.dialect.name
    q = _q
    key = _columns(d, DIMENSIONS)
    sums = ", ".join(f"SUM({q(d, name)})" for name in SUMS)
    group = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 2))
    _run(conn, f"DELETE FROM {q(d, 'log_counts')}")
    _run(conn, f"DELETE FROM {q(d, 'log_type_counts')}")
    _run(conn, f"DELETE FROM {q(d, 'log_dim_counts')}")
    _run(
        conn,
        f"INSERT INTO {q(d, 'log_counts')} ({q(d, 'bucket')}, {key}, {q(d, 'count')}, {_columns(d, SUMS)}) "
        f"SELECT {bucket_sql(q(d, 'created_at'))}, {key}, COUNT(*), {sums} FROM {q(d, 'logs')} GROUP BY {group}",
    )
    _run(
        conn,
        f"INSERT INTO {q(d, 'log_type_counts')} ({q(d, 'bucket')}, {q(d, 'type')}, {q(d, 'count')}, "
        f"{_columns(d, SUMS)}) SELECT {q(d, 'bucket')}, {q(d, 'type')}, SUM({q(d, 'count')}), {sums} "
        f"FROM {q(d, 'log_counts')} GROUP BY {q(d, 'bucket')}, {q(d, 'type')}",
    )
    carried = f"{q(d, 'count')}, {_columns(d, SUMS)}"
    rows = _dim_rows(d, q(d, "log_counts"), q(d, "bucket"), carried)
    _run(
        conn,
        f"INSERT INTO {q(d, 'log_dim_counts')} ({_columns(d, DIM_KEY)}, {carried}) "
        f"SELECT {_columns(d, DIM_KEY)}, SUM({q(d, 'count')}), {sums} FROM ({rows}) AS parts GROUP BY 1, 2, 3, 4",
    )


def drop_triggers(conn: Connection) -> None:
    """Remove the triggers (a bulk load may then :func:`rebuild` and :func:`create_triggers`)."""
    d = conn.dialect.name
    for name in TRIGGER_NAMES + ((PG_TRUNCATE_TRIGGER,) if d == "postgresql" else ()):
        on = f" ON {_q(d, 'logs')}" if d == "postgresql" else ""
        _run(conn, f"DROP TRIGGER IF EXISTS {_q(d, name)}{on}")
    if d == "postgresql":
        _run(conn, f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()")


def create_triggers(conn: Connection) -> None:
    """Install the triggers that keep both summaries exact (see the module's docstring)."""
    d = conn.dialect.name
    if d == "postgresql":
        for statement in _postgres_statements():
            _run(conn, statement)
        return
    insert, delete = _row_insert(d), _row_delete(d)
    logs = _q(d, "logs")
    bodies = {
        "trg_logs_counts_insert": ("INSERT", insert),
        "trg_logs_counts_delete": ("DELETE", delete),
        "trg_logs_counts_update": ("UPDATE", delete + insert),
    }
    for name, (event, body) in bodies.items():
        statements = " ".join(statement + ";" for statement in body)
        when = f" WHEN NOT EXISTS (SELECT 1 FROM {PAUSED})" if d == "sqlite" and event == "INSERT" else ""
        _run(
            conn,
            f"CREATE TRIGGER {_q(d, name)} AFTER {event} ON {logs} FOR EACH ROW{when} BEGIN {statements} END",
        )


# ----- SQLite and PostgreSQL: the batch writer's own, aggregated maintenance ---------------------

PAUSED = "log_counts_paused"  # SQLite: the table whose row makes the insert trigger stand by
PG_SETTING = "tollway.log_counts_paused"  # PostgreSQL: the transaction-local setting that does
# Sets PG_SETTING until the next INSERT or COPY into logs (whose trigger clears it) or the end of
# the transaction, and returns it: 'on' only while the insert trigger is enabled and runs a
# function that knows the setting (logs migration 0003 applied), so that a writer newer than the
# database, or one running while the triggers are disabled or dropped for a bulk load, leaves the
# counting to whatever the trigger does.
PG_PAUSE = (
    f"SELECT set_config('{PG_SETTING}', CASE WHEN EXISTS (SELECT 1 FROM pg_trigger t "
    f"JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = to_regclass('logs') "
    f"AND t.tgname = '{TRIGGER_NAMES[0]}' AND t.tgenabled <> 'D' "
    f"AND position('{PG_SETTING}' IN p.prosrc) > 0) THEN 'on' ELSE 'off' END, true)"
)
_SUMMED = ("count", *SUMS)


@dataclass(slots=True)
class BatchCounts:
    """A batch of log rows summed per ``log_counts`` key, as the triggers would add them one by
    one; the coarser tables' sums are derived from these few keys when the batch is applied."""

    wide: dict[tuple[int, tuple[Any, ...]], list[int]] = field(default_factory=dict)

    def add(self, created_at: int, dims: tuple[Any, ...], quota: int, prompt: int, completion: int) -> None:
        """One row; ``dims`` holds the row's values of ``DIMENSIONS``, in that order."""
        key = (created_at - created_at % BUCKET_SECONDS, dims)
        found = self.wide.get(key)
        if found is None:
            self.wide[key] = [1, quota, prompt, completion]
        else:
            found[0] += 1
            found[1] += quota
            found[2] += prompt
            found[3] += completion

    def tables(self) -> list[tuple[str, tuple[str, ...], dict[tuple[Any, ...], list[int]]]]:
        """(table, key columns, sums per key) for the three summaries."""
        wide: dict[tuple[Any, ...], list[int]] = {}
        by_type: dict[tuple[Any, ...], list[int]] = {}
        by_dim: dict[tuple[Any, ...], list[int]] = {}
        positions = [(code, DIMENSIONS.index(column)) for column, code in DIM_CODES.items()]
        for (bucket, dims), amounts in self.wide.items():
            kind = dims[0]
            wide[(bucket, *dims)] = amounts
            keys: list[tuple[dict[tuple[Any, ...], list[int]], tuple[Any, ...]]] = [(by_type, (bucket, kind))]
            keys += [(by_dim, (code, str(dims[index]), bucket, kind)) for code, index in positions]
            for table, key in keys:
                found = table.get(key)
                if found is None:
                    table[key] = list(amounts)
                else:
                    for i, amount in enumerate(amounts):
                        found[i] += amount
        return [
            ("log_counts", ("bucket", *DIMENSIONS), wide),
            ("log_type_counts", ("bucket", "type"), by_type),
            ("log_dim_counts", DIM_KEY, by_dim),
        ]


def statement_sizes(rows: int, largest: int) -> list[int]:
    """How many rows each multi-row statement of a batch of ``rows`` takes on SQLite: ``largest``
    as often as it fits, then the rest as powers of two (at most one of each).

    SQLite's driver caches every statement it prepares (128 per connection), and a prepared
    1,000-row INSERT holds about a megabyte: one statement per batch size made a busy worker's
    memory climb by hundreds of megabytes. These sizes are few (about a dozen shapes), and a batch
    still needs few statements, each stepped with the GIL released once (an ``executemany`` would
    wait for the GIL at every row while the event loop is busy).
    """
    sizes = [largest] * (rows // largest)
    rest = rows % largest
    bit = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def sqlite_batch_statements(counts: BatchCounts) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that add ``counts`` to the summaries on SQLite: a few multi-row upserts per
    table, in the sizes of :func:`statement_sizes`."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for table, key_names, rows in counts.tables():
        if not rows:
            continue
        names = (*key_names, *_SUMMED)
        width = len(names)
        sets = ", ".join(f'"{n}" = "{n}" + excluded."{n}"' for n in _SUMMED)
        keys = list(rows.items())
        start = 0
        for size in statement_sizes(len(keys), _largest_power_of_two(30_000 // width)):
            part = keys[start : start + size]
            start += size
            values = ",".join(["(" + ",".join("?" * width) + ")"] * size)
            params = tuple(value for key, amounts in part for value in (*key, *amounts))
            sql = (
                f"INSERT INTO {table} ({_columns('sqlite', names)}) VALUES {values} "
                f"ON CONFLICT ({_columns('sqlite', key_names)}) DO UPDATE SET {sets}"
            )
            statements.append((sql, params))
    return statements


def _largest_power_of_two(limit: int) -> int:
    return 1 << (limit.bit_length() - 1)


_PG_ARRAY_TYPES = {
    "bucket": "int8",
    "dim": "int2",
    "value": "text",
    "type": "int4",
    "user_id": "int4",
    "token_id": "int4",
    "channel_id": "int4",
    "model_name": "text",
    "username": "text",
    "token_name": "text",
    "group_name": "text",
    **{name: "int8" for name in _SUMMED},
}


@cache
def _pg_batch_upsert(table: str, key_names: tuple[str, ...]) -> str:
    """One upsert of ``table`` from one array per column, in the key's order (as the trigger's)."""
    names = (*key_names, *_SUMMED)
    columns = ", ".join(f'"{n}"' for n in names)
    arrays = ", ".join(f"${i}::{_PG_ARRAY_TYPES[n]}[]" for i, n in enumerate(names, 1))
    order = ", ".join(str(i) for i in range(1, len(key_names) + 1))
    adds = ", ".join(f'"{n}" = c."{n}" + EXCLUDED."{n}"' for n in _SUMMED)
    key = ", ".join(f'"{n}"' for n in key_names)
    return (
        f'INSERT INTO "{table}" AS c ({columns}) SELECT * FROM unnest({arrays}) AS d ({columns}) '
        f"ORDER BY {order} ON CONFLICT ({key}) DO UPDATE SET {adds}"
    )


async def apply_batch_postgres(conn: AsyncConnection, counts: BatchCounts) -> None:
    """Add ``counts`` to the summaries with one upsert per table (PostgreSQL), in the tables' and
    keys' order of the trigger, so that concurrent writers and triggers lock rows in one order."""
    for table, key_names, rows in counts.tables():
        if rows:
            columns = zip(*(key + tuple(amounts) for key, amounts in rows.items()), strict=True)
            await conn.exec_driver_sql(_pg_batch_upsert(table, key_names), tuple(map(list, columns)))


# ----- row-level triggers (SQLite, MySQL) -------------------------------------------------------


def _key_match(d: str, row: str) -> str:
    """``bucket = <row's bucket> AND type = <row>.type AND …`` for one summary table."""
    parts = [f"{_q(d, 'bucket')} = {bucket_sql(row + '.' + _q(d, 'created_at'))}"]
    parts += [f"{_q(d, name)} = {row}.{_q(d, name)}" for name in DIMENSIONS]
    return " AND ".join(parts)


def _type_match(d: str, row: str) -> str:
    bucket = bucket_sql(row + "." + _q(d, "created_at"))
    return f"{_q(d, 'bucket')} = {bucket} AND {_q(d, 'type')} = {row}.{_q(d, 'type')}"


def _row_insert(d: str) -> list[str]:
    """Upserts adding ``NEW`` to its summary rows."""
    q = _q
    bucket = bucket_sql("NEW." + q(d, "created_at"))
    adds = ", ".join(
        [f"{q(d, 'count')} = {q(d, 'count')} + 1"]
        + [f"{q(d, name)} = {q(d, name)} + NEW.{q(d, name)}" for name in SUMS]
    )
    new_sums = ", ".join(f"NEW.{q(d, name)}" for name in SUMS)
    statements = []
    for table, key in (("log_counts", DIMENSIONS), ("log_type_counts", ("type",))):
        columns = f"{q(d, 'bucket')}, {_columns(d, key)}, {q(d, 'count')}, {_columns(d, SUMS)}"
        values = f"{bucket}, " + ", ".join(f"NEW.{q(d, name)}" for name in key) + f", 1, {new_sums}"
        if d == "mysql":
            conflict = f"ON DUPLICATE KEY UPDATE {adds}"
        else:
            conflict = f"ON CONFLICT ({q(d, 'bucket')}, {_columns(d, key)}) DO UPDATE SET {adds}"
        statements.append(f"INSERT INTO {q(d, table)} ({columns}) VALUES ({values}) {conflict}")
    rows = ", ".join(
        f"({code}, {_as_text(d, 'NEW.' + q(d, column), column)}, {bucket}, NEW.{q(d, 'type')}, 1, {new_sums})"
        for column, code in DIM_CODES.items()
    )
    if d == "mysql":
        sets = ", ".join(f"{q(d, n)} = {q(d, n)} + VALUES({q(d, n)})" for n in ("count", *SUMS))
        conflict = f"ON DUPLICATE KEY UPDATE {sets}"
    else:
        sets = ", ".join(f"{q(d, n)} = {q(d, n)} + excluded.{q(d, n)}" for n in ("count", *SUMS))
        conflict = f"ON CONFLICT ({_columns(d, DIM_KEY)}) DO UPDATE SET {sets}"
    columns = f"{_columns(d, DIM_KEY)}, {q(d, 'count')}, {_columns(d, SUMS)}"
    statements.append(f"INSERT INTO {q(d, 'log_dim_counts')} ({columns}) VALUES {rows} {conflict}")
    return statements


def _row_delete(d: str) -> list[str]:
    """Updates taking ``OLD`` out of its summary rows, then removal of rows left at zero."""
    q = _q
    subtract = ", ".join(
        [f"{q(d, 'count')} = {q(d, 'count')} - 1"]
        + [f"{q(d, name)} = {q(d, name)} - OLD.{q(d, name)}" for name in SUMS]
    )
    statements = []
    for table, match in (("log_counts", _key_match(d, "OLD")), ("log_type_counts", _type_match(d, "OLD"))):
        statements.append(f"UPDATE {q(d, table)} SET {subtract} WHERE {match}")
        statements.append(f"DELETE FROM {q(d, table)} WHERE {match} AND {q(d, 'count')} <= 0")
    bucket = bucket_sql("OLD." + q(d, "created_at"))
    match = " OR ".join(
        f"({q(d, 'dim')} = {code} AND {q(d, 'value')} = {_as_text(d, 'OLD.' + q(d, column), column)} "
        f"AND {q(d, 'bucket')} = {bucket} AND {q(d, 'type')} = OLD.{q(d, 'type')})"
        for column, code in DIM_CODES.items()
    )
    statements.append(f"UPDATE {q(d, 'log_dim_counts')} SET {subtract} WHERE {match}")
    statements.append(f"DELETE FROM {q(d, 'log_dim_counts')} WHERE ({match}) AND {q(d, 'count')} <= 0")
    return statements


# ----- PostgreSQL: statement-level triggers with transition tables ------------------------------


def _pg_grouped(source: str, key: tuple[str, ...]) -> str:
    """``SELECT bucket, key…, n, sums… FROM source GROUP BY …`` in the unique key's order."""
    columns = ", ".join(f'"{name}"' for name in key)
    sums = ", ".join(f'SUM("{name}") AS "{name}"' for name in SUMS)
    group = ", ".join(str(i) for i in range(1, len(key) + 2))
    return (
        f"SELECT {bucket_sql('created_at')} AS bucket, {columns}, COUNT(*) AS n, {sums} "
        f"FROM {source} GROUP BY {group} ORDER BY {group}"
    )


def _pg_add(table: str, key: tuple[str, ...]) -> str:
    columns = ", ".join(f'"{name}"' for name in key)
    adds = ", ".join(
        ['"count" = c."count" + EXCLUDED."count"'] + [f'"{n}" = c."{n}" + EXCLUDED."{n}"' for n in SUMS]
    )
    sums = ", ".join(f'"{name}"' for name in SUMS)
    return (
        f'INSERT INTO "{table}" AS c (bucket, {columns}, "count", {sums}) '
        f"SELECT bucket, {columns}, n, {sums} FROM ({_pg_grouped('new_rows', key)}) AS d "
        f"ON CONFLICT (bucket, {columns}) DO UPDATE SET {adds}"
    )


def _pg_subtract(table: str, key: tuple[str, ...]) -> list[str]:
    match = " AND ".join(["c.bucket = d.bucket"] + [f'c."{name}" = d."{name}"' for name in key])
    subtract = ", ".join(['"count" = c."count" - d.n'] + [f'"{n}" = c."{n}" - d."{n}"' for n in SUMS])
    return [
        f'UPDATE "{table}" AS c SET {subtract} FROM ({_pg_grouped("old_rows", key)}) AS d WHERE {match}',
        f'DELETE FROM "{table}" AS c WHERE c."count" <= 0 AND c.bucket IN '
        f"(SELECT DISTINCT {bucket_sql('created_at')} FROM old_rows)",
    ]


def _pg_dim_grouped(source: str) -> str:
    sums = ", ".join(f'SUM("{name}") AS "{name}"' for name in SUMS)
    rows = _dim_rows("postgresql", source, bucket_sql("created_at"), ", ".join(f'"{n}"' for n in SUMS))
    return f"SELECT dim, value, bucket, type, COUNT(*) AS n, {sums} FROM ({rows}) AS u GROUP BY 1, 2, 3, 4"


def _pg_dim_statements() -> tuple[str, str]:
    """(add ``new_rows``, subtract ``old_rows``) for ``log_dim_counts``."""
    sums = ", ".join(f'"{name}"' for name in SUMS)
    adds = ", ".join(
        ['"count" = c."count" + EXCLUDED."count"'] + [f'"{n}" = c."{n}" + EXCLUDED."{n}"' for n in SUMS]
    )
    add = (
        f'INSERT INTO log_dim_counts AS c (dim, value, bucket, type, "count", {sums}) '
        f"SELECT dim, value, bucket, type, n, {sums} FROM ({_pg_dim_grouped('new_rows')} ORDER BY 1, 2, 3, 4) AS d "
        f"ON CONFLICT (dim, value, bucket, type) DO UPDATE SET {adds};"
    )
    match = "c.dim = d.dim AND c.value = d.value AND c.bucket = d.bucket AND c.type = d.type"
    subtract_sums = ", ".join(['"count" = c."count" - d.n'] + [f'"{n}" = c."{n}" - d."{n}"' for n in SUMS])
    grouped = _pg_dim_grouped("old_rows")
    subtract = (
        f"UPDATE log_dim_counts AS c SET {subtract_sums} FROM ({grouped}) AS d WHERE {match}; "
        f'DELETE FROM log_dim_counts AS c USING ({grouped}) AS d WHERE {match} AND c."count" <= 0;'
    )
    return add, subtract


def pg_function(*, standby: bool = True) -> str:
    """``CREATE OR REPLACE FUNCTION log_counts_apply()``: the body of every PostgreSQL trigger.

    With ``standby`` (logs migration 0003 on) an INSERT or COPY statement run while ``PG_SETTING``
    is ``'on'`` is left to the writer that set it, and the setting cleared; without, the function
    as logs migration 0002 installed it (what 0003's downgrade restores).
    """
    tables = (("log_counts", DIMENSIONS), ("log_type_counts", ("type",)))
    dim_add, dim_subtract = _pg_dim_statements()
    subtract = (
        " ".join(s + ";" for table, key in tables for s in _pg_subtract(table, key)) + " " + dim_subtract
    )
    add = " ".join(_pg_add(table, key) + ";" for table, key in tables) + " " + dim_add
    stand_by = (
        f"IF TG_OP = 'INSERT' AND current_setting('{PG_SETTING}', true) = 'on' THEN "
        f"PERFORM set_config('{PG_SETTING}', 'off', true); RETURN NULL; END IF; "
        if standby
        else ""
    )
    return (
        f"CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN "
        f"{stand_by}"
        "IF TG_OP = 'TRUNCATE' THEN DELETE FROM log_counts; DELETE FROM log_type_counts; "
        "DELETE FROM log_dim_counts; RETURN NULL; END IF; "
        f"IF TG_OP IN ('DELETE', 'UPDATE') THEN {subtract} END IF; "
        f"IF TG_OP IN ('INSERT', 'UPDATE') THEN {add} END IF; "
        "RETURN NULL; END $body$"
    )


def replace_pg_function(conn: Connection, *, standby: bool) -> None:
    """Install :func:`pg_function` over the current one (PostgreSQL; a no-op elsewhere)."""
    if conn.dialect.name == "postgresql":
        _run(conn, pg_function(standby=standby))


def _postgres_statements() -> list[str]:
    run = f"FOR EACH STATEMENT EXECUTE PROCEDURE {PG_FUNCTION}()"
    return [
        pg_function(),
        f"CREATE TRIGGER trg_logs_counts_insert AFTER INSERT ON logs REFERENCING NEW TABLE AS new_rows {run}",
        f"CREATE TRIGGER trg_logs_counts_delete AFTER DELETE ON logs REFERENCING OLD TABLE AS old_rows {run}",
        "CREATE TRIGGER trg_logs_counts_update AFTER UPDATE ON logs "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows {run}",
        f"CREATE TRIGGER {PG_TRUNCATE_TRIGGER} AFTER TRUNCATE ON logs {run}",
    ]
