"""SQLite backup under a live write load, restore with its safety checks, and the external tools."""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import DatabaseFactory
from tollway.db.dsn import parse_dsn
from tollway.db.engine import Database
from tollway.db.migrate import migrate
from tollway.ops.backup import (
    BACKUP_EXTENSIONS,
    BackupError,
    DatabaseInUseError,
    ExternalCommand,
    UnreadableDatabaseError,
    backup_sqlite,
    database_in_use,
    default_backup_path,
    external_backup,
    external_backup_command,
    external_restore_command,
    restore_sqlite,
    sqlite_file,
    verify_sqlite,
)
from tollway.settings import Settings, load_settings

PREFILL = 20_000  # rows before the load starts: enough pages for a backup of many steps
INSERT = (
    "INSERT INTO logs (user_id, created_at, type, content, username, model_name, quota, other, request_id)"
    " VALUES (?, ?, 2, ?, 'alice', 'gpt-4o-mini', ?, '', ?)"
)


def _content(n: int) -> str:
    return f"row {n} " + "x" * 150


def _migrated(path: Path) -> Path:
    """A SQLite database with Tollway's full schema, made by Tollway's own migrations."""

    async def run() -> None:
        settings = load_settings(_env_file=None, sqlite_path=str(path), session_secret="s", crypto_secret="c")
        db = Database(settings)
        try:
            await migrate(db)
        finally:
            await db.dispose()

    asyncio.run(run())
    return path


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _insert(conn: sqlite3.Connection, n: int) -> int:
    cursor = conn.execute(INSERT, (n % 7, 1_700_000_000 + n, _content(n), n, f"req-{n}"))
    assert cursor.lastrowid is not None
    return cursor.lastrowid


class Writer(threading.Thread):
    """Inserts one logs row per transaction, continuously, recording each id once committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.committed: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = _connect(self.path)
        try:
            n = PREFILL
            while not self.stop.is_set():
                n += 1
                self.committed.append(_insert(conn, n))  # autocommit: committed on return
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database holding PREFILL logs rows, checkpointed into its main file."""
    path = _migrated(tmp_path_factory.mktemp("template") / "tollway.db")
    conn = _connect(path)
    conn.execute("BEGIN")
    for n in range(1, PREFILL + 1):
        _insert(conn, n)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


@pytest.fixture
def live_db(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template at ``<tmp>/data/tollway.db``."""
    path = tmp_path / "data" / "tollway.db"
    path.parent.mkdir()
    path.write_bytes(template.read_bytes())
    return path


@pytest.fixture
def writer(live_db: Path) -> Iterator[Writer]:
    thread = Writer(live_db)
    thread.start()
    deadline = time.monotonic() + 10
    while len(thread.committed) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    yield thread
    thread.stop.set()
    thread.join(10)
    assert thread.error is None, thread.error


def _rows(path: Path) -> dict[int, tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return {row[0]: row[1:] for row in conn.execute("SELECT id, content, quota, request_id FROM logs")}
    finally:
        conn.close()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


# ----------------------------------------------------------------------------- backup


def test_backup_under_write_load_is_a_consistent_snapshot(
    live_db: Path, writer: Writer, tmp_path: Path
) -> None:
    copy = tmp_path / "backups" / "tollway-backup.db"
    committed_before = list(writer.committed)
    steps: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        steps.append((done, total))
        time.sleep(0.0005)  # let the writer commit between steps

    backup_sqlite(live_db, copy, pages_per_step=8, progress=progress)
    committed_after = list(writer.committed)

    # The server kept writing during the copy (WAL: the backup's snapshot does not block writers) …
    assert len(committed_after) > len(committed_before)
    assert len(steps) > 50
    # … and the copy never restarted: one snapshot, pages copied only grow.
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(steps))
    assert steps[-1][0] == steps[-1][1]

    assert _integrity(copy) == "ok"
    header = copy.read_bytes()[:100]
    assert header[18:20] == b"\x01\x01"  # a self-contained rollback-journal file, no WAL needed
    assert not Path(f"{copy}-wal").exists()
    assert _leftovers(copy.parent) == []

    rows = _rows(copy)
    ids = sorted(rows)
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the single writer's commits: consistent
    assert len(ids) >= PREFILL + len(committed_before)
    for row_id in committed_before:
        assert row_id in rows
    # Every copied row is exactly as written.
    for row_id in (1, PREFILL, *committed_before[-5:]):
        n = row_id
        assert rows[row_id] == (_content(n), n, f"req-{n}")


def test_backup_then_restore_into_a_fresh_path(live_db: Path, writer: Writer, tmp_path: Path) -> None:
    copy = tmp_path / "b.db"
    committed_before = list(writer.committed)
    backup_sqlite(live_db, copy, pages_per_step=64, quick_check=True)

    fresh = tmp_path / "restored" / "tollway.db"
    kept = restore_sqlite(copy, fresh, force=False)
    assert kept is None  # nothing was replaced
    assert _integrity(fresh) == "ok"
    restored = _rows(fresh)
    for row_id in [*range(1, PREFILL + 1, 997), *committed_before]:
        assert restored[row_id] == (_content(row_id), row_id, f"req-{row_id}")
    # The schema came along: Tollway's migrations see an up-to-date database.
    conn = sqlite3.connect(fresh)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"users", "tokens", "channels", "logs", "alembic_version"} <= tables
    _migrated(fresh)  # applying the migrations again is a no-op on the restored copy
    assert _integrity(fresh) == "ok"


def test_backup_refuses_to_overwrite_unless_asked(live_db: Path, tmp_path: Path) -> None:
    target = tmp_path / "b.db"
    target.write_bytes(b"precious")
    with pytest.raises(BackupError, match="already exists"):
        backup_sqlite(live_db, target)
    assert target.read_bytes() == b"precious"

    Path(f"{target}-wal").write_bytes(b"stale wal of the old file")
    backup_sqlite(live_db, target, overwrite=True)
    assert _integrity(target) == "ok"
    assert not Path(f"{target}-wal").exists()
    assert len(_rows(target)) == PREFILL
    assert _leftovers(tmp_path) == []


def test_backup_errors(tmp_path: Path, live_db: Path) -> None:
    with pytest.raises(BackupError, match="no SQLite database"):
        backup_sqlite(tmp_path / "missing.db", tmp_path / "out.db")
    with pytest.raises(BackupError, match="is the database itself"):
        backup_sqlite(live_db, live_db, overwrite=True)
    assert not (tmp_path / "out.db").exists()


def test_verify_rejects_damaged_files(tmp_path: Path, live_db: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(BackupError, match="not a readable SQLite database"):
        verify_sqlite(garbage)

    copy = tmp_path / "copy.db"
    backup_sqlite(live_db, copy)
    verify_sqlite(copy)
    verify_sqlite(copy, quick=True)
    # Damage a page in the middle of the file: the integrity check must notice.
    data = bytearray(copy.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle + 16 : middle + page] = os.urandom(page - 16)
    copy.write_bytes(bytes(data))
    with pytest.raises(BackupError):
        verify_sqlite(copy)


# ----------------------------------------------------------------------------- restore


def test_restore_refuses_a_database_in_use_unless_forced(live_db: Path, tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup_sqlite(live_db, backup)

    server = _connect(live_db)  # like an idle server worker: WAL, pooled, open
    server.execute("SELECT count(*) FROM logs").fetchone()
    _insert(server, PREFILL + 1)  # a row the backup does not have
    assert database_in_use(live_db)
    with pytest.raises(DatabaseInUseError, match="in use"):
        restore_sqlite(backup, live_db, force=False, lock_timeout=0.2)
    assert len(_rows(live_db)) == PREFILL + 1  # untouched
    assert [p for p in live_db.parent.iterdir() if ".before-restore-" in p.name] == []

    kept = restore_sqlite(backup, live_db, force=True, lock_timeout=0.2)
    server.close()
    assert kept is not None and kept.exists()
    assert kept.name.startswith("tollway.db.before-restore-")
    assert kept.parent == live_db.parent
    assert len(_rows(kept)) == PREFILL + 1  # the replaced database, its WAL content included
    assert _integrity(kept) == "ok"
    assert len(_rows(live_db)) == PREFILL
    assert _integrity(live_db) == "ok"
    assert _leftovers(live_db.parent) == []


def test_restore_refuses_while_a_write_transaction_is_open(live_db: Path, tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup_sqlite(live_db, backup)
    busy = _connect(live_db)
    busy.execute("BEGIN IMMEDIATE")
    _insert(busy, PREFILL + 1)
    try:
        with pytest.raises(DatabaseInUseError):
            restore_sqlite(backup, live_db, force=False, lock_timeout=0.2)
    finally:
        busy.execute("ROLLBACK")
        busy.close()


def test_restore_of_a_stopped_database_keeps_the_old_one(live_db: Path, tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup_sqlite(live_db, backup)
    # After the backup the server wrote more and then stopped without a checkpoint (crash-like):
    # its rows are in the -wal file only.
    conn = _connect(live_db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for n in range(PREFILL + 1, PREFILL + 11):
        _insert(conn, n)
    wal = Path(f"{live_db}-wal")
    crash_copy = tmp_path / "crash"
    crash_copy.mkdir()
    (crash_copy / live_db.name).write_bytes(live_db.read_bytes())
    Path(f"{crash_copy / live_db.name}-wal").write_bytes(wal.read_bytes())
    conn.close()
    target = crash_copy / live_db.name
    assert Path(f"{target}-wal").exists()
    assert not database_in_use(target)

    kept = restore_sqlite(backup, target, force=False)
    assert kept is not None
    assert len(_rows(kept)) == PREFILL + 10  # the WAL's rows are in the kept copy
    assert len(_rows(target)) == PREFILL
    for suffix in ("-wal", "-shm", "-journal"):
        assert not Path(f"{target}{suffix}").exists()
    assert _integrity(target) == "ok"

    # A second restore in the same second gets its own name.
    kept_again = restore_sqlite(backup, target, force=False)
    assert kept_again is not None and kept_again != kept and kept.exists()


def test_restore_over_a_damaged_database_needs_force_and_keeps_its_files(
    live_db: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "b.db"
    backup_sqlite(live_db, backup)
    damaged = tmp_path / "damaged" / "tollway.db"
    damaged.parent.mkdir()
    damaged.write_bytes(b"this was a database once" * 500)
    with pytest.raises(UnreadableDatabaseError, match="force replaces it"):
        restore_sqlite(backup, damaged, force=False)
    kept = restore_sqlite(backup, damaged, force=True)
    assert kept is not None and kept.read_bytes() == b"this was a database once" * 500
    assert _integrity(damaged) == "ok" and len(_rows(damaged)) == PREFILL


def test_restored_file_keeps_the_replaced_files_permissions(live_db: Path, tmp_path: Path) -> None:
    backup = tmp_path / "b.db"
    backup_sqlite(live_db, backup)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # backups hold secrets: owner only
    live_db.chmod(0o640)
    restore_sqlite(backup, live_db, force=False)
    assert stat.S_IMODE(live_db.stat().st_mode) == 0o640


def bad_schema(folder: Path) -> Path:
    """A healthy SQLite file that is not a Tollway database."""
    path = folder / "other.db"
    if not path.exists():
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE other (x)")
        conn.execute("CREATE TABLE logs (x)")
        conn.commit()
        conn.close()
    return path


def test_restore_verifies_the_backup_before_touching_anything(live_db: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + b"\x00" * 8000)
    before = live_db.read_bytes()
    with pytest.raises(BackupError):
        restore_sqlite(bad, live_db, force=True)
    assert live_db.read_bytes() == before
    assert [p for p in live_db.parent.iterdir() if ".before-restore-" in p.name] == []
    with pytest.raises(BackupError, match="has no table users"):
        restore_sqlite(bad_schema(tmp_path), live_db, force=True, require_tables=("users", "logs"))
    restore_sqlite(bad_schema(tmp_path), tmp_path / "fresh.db", force=False, require_tables=("other",))
    with pytest.raises(BackupError, match="no backup file"):
        restore_sqlite(tmp_path / "missing.db", live_db, force=True)
    with pytest.raises(BackupError, match="is the database itself"):
        restore_sqlite(live_db, live_db, force=True)
    assert _leftovers(live_db.parent) == []


def test_sqlite_file_and_default_names(tmp_path: Path) -> None:
    url = parse_dsn("", sqlite_path=str(tmp_path / "x.db"))
    assert sqlite_file(url) == tmp_path / "x.db"
    with pytest.raises(BackupError):
        sqlite_file(parse_dsn("postgres://u:p@h/db", sqlite_path="x"))
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert default_backup_path(tmp_path, url, now=now) == tmp_path / "tollway-20260102T030405Z.db"
    pg = parse_dsn("postgres://u:p@h/db", sqlite_path="x")
    assert default_backup_path(tmp_path, pg, now=now).name == "tollway-20260102T030405Z.dump"


# ----------------------------------------------------------------------------- PostgreSQL / MySQL


def test_pg_dump_and_restore_commands_keep_the_password_off_the_command_line(tmp_path: Path) -> None:
    url = parse_dsn("postgres://tollway:s3cr%40t@db.internal:5433/tollway?sslmode=require", sqlite_path="x")
    dump = external_backup_command(url, tmp_path / "t.dump")
    argv, env = dump.argv, dump.env
    assert argv[0] == "pg_dump"
    assert "--format=custom" in argv
    assert f"--file={tmp_path / 't.dump'}" in argv
    assert argv[argv.index("--host") : argv.index("--host") + 2] == ["--host", "db.internal"]
    assert argv[argv.index("--port") : argv.index("--port") + 2] == ["--port", "5433"]
    assert argv[argv.index("--username") : argv.index("--username") + 2] == ["--username", "tollway"]
    assert "--dbname=tollway" in argv and "--no-password" in argv
    assert env["PGPASSWORD"] == "s3cr@t"
    assert env["PGSSLMODE"] == "require"
    assert not any("s3cr" in part for part in argv)
    assert "s3cr" not in dump.display() and "PGPASSWORD=***" in dump.display()

    restore = external_restore_command(url, tmp_path / "t.dump")
    assert restore.argv[0] == "pg_restore"
    assert {"--clean", "--if-exists", "--single-transaction", "--exit-on-error"} <= set(restore.argv)
    assert restore.argv[-1] == str(tmp_path / "t.dump")
    assert restore.env["PGPASSWORD"] == "s3cr@t"
    assert not any("s3cr" in part for part in restore.argv)


def test_mysqldump_and_restore_commands(tmp_path: Path) -> None:
    url = parse_dsn(
        "root:pa$$w0rd@tcp(mysql.internal:3307)/tollway?charset=utf8mb4&parseTime=True", sqlite_path="x"
    )
    dump = external_backup_command(url, tmp_path / "t.sql")
    assert dump.argv[0] == "mysqldump"
    assert {"--single-transaction", "--routines", "--triggers", "--no-tablespaces"} <= set(dump.argv)
    assert f"--result-file={tmp_path / 't.sql'}" in dump.argv
    assert dump.argv[-1] == "tollway"
    assert dump.argv[dump.argv.index("--port") : dump.argv.index("--port") + 2] == ["--port", "3307"]
    assert dump.env == {"MYSQL_PWD": "pa$$w0rd"}
    assert not any("w0rd" in part for part in dump.argv)

    restore = external_restore_command(url, tmp_path / "t.sql")
    assert restore.argv[0] == "mysql" and restore.argv[-1] == "tollway"
    assert restore.stdin == tmp_path / "t.sql"
    assert "< " in restore.display() and "MYSQL_PWD=***" in restore.display()

    socket = parse_dsn("app:pw@unix(/run/mysqld/mysqld.sock)/tollway", sqlite_path="x")
    assert "--socket=/run/mysqld/mysqld.sock" in external_backup_command(socket, tmp_path / "s.sql").argv

    with pytest.raises(BackupError):
        external_backup_command(parse_dsn("", sqlite_path=str(tmp_path / "x.db")), tmp_path / "x")


def _fake_pg_dump(bin_dir: Path, *, fail: bool = False) -> None:
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "pg_dump"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "out = [a for a in sys.argv if a.startswith('--file=')][0].split('=', 1)[1]\n"
        "open(out, 'w').write(os.environ['PGPASSWORD'] + ' ' + ' '.join(sys.argv[1:]))\n"
        + ("sys.exit('pg_dump: error: connection refused')\n" if fail else "")
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)


def test_external_command_runs_with_the_password_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_pg_dump(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    url = parse_dsn("postgres://u:hunter2@h:5432/db", sqlite_path="x")
    command = external_backup_command(url, tmp_path / "out.dump")
    assert command.available()
    command.run()
    written = (tmp_path / "out.dump").read_text()
    assert written.startswith("hunter2 ") and "--dbname=db" in written

    # external_backup: into a temporary file first, renamed only when the tool succeeded.
    target = tmp_path / "backups" / "t.dump"
    external_backup(url, target)
    assert target.read_text().startswith("hunter2 ")
    with pytest.raises(BackupError, match="already exists"):
        external_backup(url, target)
    external_backup(url, target, overwrite=True)
    _fake_pg_dump(tmp_path / "bin", fail=True)
    with pytest.raises(BackupError, match="connection refused"):
        external_backup(url, tmp_path / "backups" / "failed.dump")
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.dump"]

    failing = ExternalCommand([sys.executable, "-c", "import sys; sys.exit('boom: no such database')"], {})
    with pytest.raises(BackupError, match="boom: no such database"):
        failing.run()
    missing = ExternalCommand(["tollway-no-such-tool-xyz"], {})
    assert not missing.available()
    with pytest.raises(BackupError, match="not installed"):
        missing.run()


async def test_pg_and_mysql_round_trip_through_their_tools(
    backend: str,
    databases: DatabaseFactory,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """A migrated database with rows, dumped by pg_dump / mysqldump and loaded into a new one."""
    if backend == "sqlite":
        pytest.skip("SQLite is covered by backup_sqlite above")
    source = make_settings(sql_dsn=await databases.create())
    command = external_backup_command(source.database_url, tmp_path / "x")
    if not command.available():
        pytest.skip(f"{command.tool} is not installed")
    db = Database(source)
    try:
        await migrate(db)
        async with db.engine.begin() as conn:
            for n in range(1, 26):
                await conn.execute(
                    text(
                        "INSERT INTO logs (user_id, created_at, type, content, username, model_name,"
                        " quota, other, request_id) VALUES (1, :t, 2, :c, 'alice', 'm', :n, '', :r)"
                    ),
                    {"t": 1_700_000_000 + n, "c": _content(n), "n": n, "r": f"req-{n}"},
                )
    finally:
        await db.dispose()

    dump = tmp_path / f"backup.{BACKUP_EXTENSIONS[backend]}"
    await asyncio.to_thread(external_backup, source.database_url, dump)
    assert dump.stat().st_size > 0

    target = make_settings(sql_dsn=await databases.create())
    await asyncio.to_thread(external_restore_command(target.database_url, dump).run)
    db = Database(target)
    try:
        async with db.engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT quota, content, request_id FROM logs ORDER BY quota"))
            ).all()
    finally:
        await db.dispose()
    assert [tuple(row) for row in rows] == [(n, _content(n), f"req-{n}") for n in range(1, 26)]
