"""Database backup and restore: SQLite online copies, and the pg_dump / mysqldump command lines.

SQLite copies use the online backup API while the server keeps writing. The copy reads one
consistent snapshot: the source connection holds a read transaction for the whole copy, so in WAL
mode writers carry on and the step-wise copy never restarts. Every copy is written to a temporary
file beside its destination, checked with ``PRAGMA integrity_check`` (or ``quick_check``) and then
renamed into place, so a destination is either the old file or a complete, verified new one.

A restore checks the backup first, refuses a database that another process has open (an idle
server included) unless forced, keeps the replaced file as ``<name>.before-restore-<timestamp>``
and removes its stale ``-wal``/``-shm``/``-journal`` files.

PostgreSQL and MySQL/MariaDB are copied by their own tools: :func:`external_backup_command` and
:func:`external_restore_command` build the command lines, with the password in the environment
(never in the arguments), and :func:`external_backup` runs a dump into a file renamed on success.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import quote

from tollway.db.dsn import DatabaseUrl

Progress = Callable[[int, int], None]
"""Called after each step with (pages copied so far, total pages)."""

SIDE_FILES = ("-wal", "-shm", "-journal")
BACKUP_EXTENSIONS = {"sqlite": "db", "postgresql": "dump", "mysql": "sql"}
_CHECK_ROWS = 20  # integrity problems quoted in an error message


class BackupError(Exception):
    """A backup or restore could not be made; the message says why, in one line."""


class DatabaseInUseError(BackupError):
    """The restore target is open in another process (a running server)."""


class UnreadableDatabaseError(BackupError):
    """The restore target is not a readable SQLite database (damaged, or not SQLite at all)."""


# ----------------------------------------------------------------------------- SQLite


def sqlite_file(url: DatabaseUrl) -> Path:
    """The file behind a SQLite database URL."""
    database = url.url.database
    if not url.is_sqlite or not database or database == ":memory:":
        raise BackupError(f"{url.masked()} is not a SQLite database file")
    return Path(database).expanduser()


def backup_sqlite(
    source: Path,
    target: Path,
    *,
    pages_per_step: int = 1024,
    progress: Progress | None = None,
    overwrite: bool = False,
    quick_check: bool = False,
    busy_timeout: float = 5.0,
) -> None:
    """Copy the live SQLite database ``source`` to ``target`` (a self-contained file, no WAL).

    Consistent while other connections write: the copy is the database as of the moment this
    function starts reading. Refuses an existing ``target`` unless ``overwrite``.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    if _same_file(source, target):
        raise BackupError(f"the backup target {target} is the database itself")
    if target.exists() and not overwrite:
        raise BackupError(f"{target} already exists (choose another name or allow overwriting)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _connect(source, "rw", busy_timeout) as src, _temp_beside(target) as temp:
        src.execute("BEGIN")  # one read snapshot for every step (WAL: writers are not blocked)
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _copy(src, temp, pages_per_step, progress)
        src.execute("COMMIT")
        verify_sqlite(temp, quick=quick_check)
        _publish(temp, target, overwrite=overwrite)


def verify_sqlite(path: Path, *, quick: bool = False) -> None:
    """Raise :class:`BackupError` unless ``path`` is a SQLite database passing the integrity check."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        with _connect(Path(path), "ro", 5.0) as conn:
            rows = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}({_CHECK_ROWS})")]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from None
    if rows != ["ok"]:
        raise BackupError(f"{path} failed PRAGMA {pragma}: " + "; ".join(rows[:3]))


def check_sqlite_backup(backup: Path, *, quick: bool = False, require_tables: Collection[str] = ()) -> None:
    """Raise :class:`BackupError` unless ``backup`` passes the integrity check and has those tables."""
    verify_sqlite(backup, quick=quick)
    missing = sorted(set(require_tables) - _tables(Path(backup)))
    if missing:
        raise BackupError(f"{backup} has no table {', '.join(missing)}: not a backup of this database")


def _tables(path: Path) -> set[str]:
    with _connect(path, "ro", 5.0) as conn:
        return {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def database_in_use(target: Path, *, timeout: float = 0.5) -> bool:
    """True when another connection has ``target`` open (or writes to it) for ``timeout`` seconds.

    Raises :class:`UnreadableDatabaseError` when ``target`` is not a readable SQLite database.
    """
    if not Path(target).exists():
        return False
    try:
        with _exclusive(Path(target), timeout):
            return False
    except DatabaseInUseError:
        return True


def restore_sqlite(
    backup: Path,
    target: Path,
    *,
    force: bool,
    quick_check: bool = False,
    lock_timeout: float = 0.5,
    require_tables: Collection[str] = (),
) -> Path | None:
    """Replace the SQLite database ``target`` with the verified copy ``backup``.

    Refuses while another process has ``target`` open, or when ``target`` is damaged, unless
    ``force``; refuses a backup lacking any of ``require_tables``. The replaced database is kept
    beside it as ``<name>.before-restore-<timestamp>`` (a damaged one as raw files); that path is
    returned (None when there was none). The restored file takes the replaced one's permissions.
    """
    backup, target = Path(backup), Path(target)
    if not backup.is_file():
        raise BackupError(f"no backup file at {backup}")
    if _same_file(backup, target):
        raise BackupError(f"{backup} is the database itself")
    check_sqlite_backup(backup, quick=quick_check, require_tables=require_tables)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temp_beside(target) as temp:
        with _connect(backup, "ro", lock_timeout) as src:
            _copy(src, temp, -1, None)
        verify_sqlite(temp, quick=True)
        if not target.exists():
            _remove_side_files(target)
            _publish(temp, target, overwrite=False)
            return None
        _copy_permissions(target, temp)
        with _lock_unless_forced(target, lock_timeout, force=force) as current:
            kept = _keep_copy(current, target)
        # The lock connection is closed: as the last user it checkpointed and removed the WAL.
        _remove_side_files(target)
        _publish(temp, target, overwrite=True)
        _remove_side_files(target)
    return kept


def _copy(src: sqlite3.Connection, temp: Path, pages: int, progress: Progress | None) -> None:
    def step(_status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    with _connect(temp, "rwc", 5.0) as dst:
        try:
            src.backup(dst, pages=pages if pages > 0 else -1, progress=step)
        except sqlite3.Error as exc:
            raise BackupError(f"copy failed: {exc}") from None
        # A self-contained file: no -wal beside it, whatever the source's journal mode.
        dst.execute("PRAGMA journal_mode=DELETE").fetchone()


def _keep_copy(current: sqlite3.Connection | None, target: Path) -> Path:
    """Save the database about to be replaced; ``current`` None: it is unreadable, copy raw files."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = target.with_name(f"{target.name}.before-restore-{stamp}")
    suffix = 1
    while kept.exists():
        suffix += 1
        kept = target.with_name(f"{target.name}.before-restore-{stamp}-{suffix}")
    if current is None:
        for side in ("", *SIDE_FILES):
            if Path(f"{target}{side}").exists():
                shutil.copy2(f"{target}{side}", f"{kept}{side}")
        return kept
    with _temp_beside(kept) as temp:
        _copy(current, temp, -1, None)
        _publish(temp, kept, overwrite=False)
    return kept


@contextlib.contextmanager
def _lock_unless_forced(target: Path, timeout: float, *, force: bool) -> Iterator[sqlite3.Connection | None]:
    """The exclusive connection; when forced, a plain one (in use) or None (unreadable)."""
    try:
        with _exclusive(target, timeout) as conn:
            yield conn
            return
    except UnreadableDatabaseError as exc:
        if not force:
            raise UnreadableDatabaseError(f"{exc}; force replaces it (its files are kept)") from None
        yield None
        return
    except DatabaseInUseError:
        if not force:
            raise
    with _connect(target, "rw", timeout) as conn:  # forced: copy what is there, however busy
        yield conn


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[sqlite3.Connection]:
    """A connection holding the exclusive lock on ``path`` until it closes.

    In WAL mode ``BEGIN EXCLUSIVE`` alone succeeds beside idle readers; with
    ``locking_mode=EXCLUSIVE`` it needs the file lock that every other open connection blocks,
    and keeps that lock after ``COMMIT`` (the backup API cannot read from a write transaction).
    """
    with _connect(path, "rw", timeout) as conn:
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchone()
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise DatabaseInUseError(
                    f"{path} is in use by another process ({exc}); stop the server first, or force"
                ) from None
            if isinstance(exc, sqlite3.OperationalError):
                raise BackupError(f"cannot lock {path}: {exc}") from None
            raise UnreadableDatabaseError(f"{path} is not a readable SQLite database ({exc})") from None
        yield conn


@contextlib.contextmanager
def _connect(path: Path, mode: Literal["ro", "rw", "rwc"], timeout: float) -> Iterator[sqlite3.Connection]:
    uri = f"file:{quote(str(path.absolute()))}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {path}: {exc}") from None
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """A fresh temporary path in ``target``'s folder, removed (with side files) unless renamed."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        _remove_side_files(temp)


def _publish(temp: Path, target: Path, *, overwrite: bool) -> None:
    """Make ``temp`` durable and rename it to ``target`` atomically."""
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    if overwrite:
        os.replace(temp, target)
    else:
        try:
            os.link(temp, target)  # atomic and never clobbers
        except FileExistsError:
            raise BackupError(f"{target} already exists") from None
        except OSError:  # no hard links on this file system
            if target.exists():
                raise BackupError(f"{target} already exists") from None
            os.replace(temp, target)
        else:
            temp.unlink()
    _fsync_dir(target.parent)


def _copy_permissions(source: Path, target: Path) -> None:
    """Give ``target`` the mode (and, when allowed, the owner) of ``source``."""
    info = source.stat()
    os.chmod(target, info.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        os.chown(target, info.st_uid, info.st_gid)


def _remove_side_files(path: Path) -> None:
    for suffix in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


# ----------------------------------------------------------------------------- PostgreSQL, MySQL


class ExternalCommand(NamedTuple):
    """A client tool's command line; ``env`` (the password) is added to the inherited environment."""

    argv: list[str]
    env: dict[str, str]
    stdin: Path | None = None

    @property
    def tool(self) -> str:
        return self.argv[0]

    def available(self) -> bool:
        return shutil.which(self.tool) is not None

    def display(self) -> str:
        """The command as a shell line, secrets shown as ``***``."""
        env = " ".join(f"{name}=***" for name in self.env if name in _SECRET_ENV)
        line = shlex.join(self.argv)
        if self.stdin is not None:
            line += f" < {shlex.quote(str(self.stdin))}"
        return f"{env} {line}" if env else line

    def run(self) -> None:
        """Run the tool; raise :class:`BackupError` with its last error line when it fails."""
        executable = shutil.which(self.tool)
        if executable is None:
            raise BackupError(f"{self.tool} is not installed (or not on PATH)")
        # The child needs PATH, HOME, locale… from our environment, plus the password.
        env = {**os.environ, **self.env}
        stdin = open(self.stdin, "rb") if self.stdin is not None else None  # noqa: SIM115
        try:
            done = subprocess.run(  # noqa: S603 - an argument list, no shell
                [executable, *self.argv[1:]], env=env, stdin=stdin, capture_output=True, check=False
            )
        except OSError as exc:
            raise BackupError(f"cannot run {self.tool}: {exc}") from None
        finally:
            if stdin is not None:
                stdin.close()
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.decode(errors="replace").splitlines()]
            message = " ".join(line for line in lines if line)[:300] or "no output"
            raise BackupError(f"{self.tool} failed (exit {done.returncode}): {message}")


_SECRET_ENV = frozenset({"PGPASSWORD", "MYSQL_PWD"})


def external_backup_command(url: DatabaseUrl, target: Path) -> ExternalCommand:
    """``pg_dump`` (custom format) or ``mysqldump`` (SQL) writing the database ``url`` to ``target``."""
    if url.dialect == "postgresql":
        return ExternalCommand(
            ["pg_dump", "--format=custom", "--no-owner", f"--file={target}", *_pg_args(url)],
            _pg_env(url),
        )
    if url.dialect == "mysql":
        return ExternalCommand(
            [
                "mysqldump",
                "--single-transaction",
                "--quick",
                "--routines",
                "--triggers",
                "--hex-blob",
                "--no-tablespaces",
                f"--result-file={target}",
                *_mysql_args(url),
            ],
            _mysql_env(url),
        )
    raise BackupError("SQLite databases are copied with backup_sqlite, not an external tool")


def external_backup(url: DatabaseUrl, target: Path, *, overwrite: bool = False) -> None:
    """Run :func:`external_backup_command` into a temporary file, renamed to ``target`` on success."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise BackupError(f"{target} already exists (choose another name or allow overwriting)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temp_beside(target) as temp:
        command = external_backup_command(url, temp)
        if not command.available():
            raise BackupError(f"{command.tool} is not installed (or not on PATH)")
        command.run()
        if temp.stat().st_size == 0:
            raise BackupError(f"{command.tool} wrote nothing")
        _publish(temp, target, overwrite=overwrite)


def external_restore_command(url: DatabaseUrl, backup: Path) -> ExternalCommand:
    """``pg_restore`` or ``mysql`` loading ``backup`` into the (existing) database ``url``."""
    if url.dialect == "postgresql":
        return ExternalCommand(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
                *_pg_args(url),
                str(backup),
            ],
            _pg_env(url),
        )
    if url.dialect == "mysql":
        return ExternalCommand(["mysql", *_mysql_args(url)], _mysql_env(url), stdin=Path(backup))
    raise BackupError("SQLite databases are restored with restore_sqlite, not an external tool")


def default_backup_path(folder: Path, url: DatabaseUrl, *, now: datetime | None = None) -> Path:
    """``<folder>/tollway-<UTC timestamp>.<db|dump|sql>`` for the database ``url``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path(folder) / f"tollway-{stamp}.{BACKUP_EXTENSIONS[url.dialect]}"


def _pg_args(url: DatabaseUrl) -> list[str]:
    u = url.url
    args: list[str] = []
    if u.host:
        args += ["--host", u.host]
    if u.port:
        args += ["--port", str(u.port)]
    if u.username:
        args += ["--username", u.username]
    args.append("--no-password")  # never prompt: the password comes from PGPASSWORD or ~/.pgpass
    args.append(f"--dbname={u.database or 'postgres'}")
    return args


def _pg_env(url: DatabaseUrl) -> dict[str, str]:
    env = {"PGCONNECT_TIMEOUT": "10"}
    if url.url.password:
        env["PGPASSWORD"] = str(url.url.password)
    ssl = url.url.query.get("ssl")
    if isinstance(ssl, str) and ssl:
        env["PGSSLMODE"] = ssl
    return env


def _mysql_args(url: DatabaseUrl) -> list[str]:
    u = url.url
    socket = u.query.get("unix_socket")
    args: list[str] = []
    if isinstance(socket, str) and socket:
        args.append(f"--socket={socket}")
    else:
        args += ["--host", u.host or "127.0.0.1", "--port", str(u.port or 3306), "--protocol=TCP"]
    if u.username:
        args += ["--user", u.username]
    charset = u.query.get("charset")
    args.append(f"--default-character-set={charset if isinstance(charset, str) else 'utf8mb4'}")
    if not u.database:
        raise BackupError(f"{url.masked()} names no database")
    args.append(u.database)
    return args


def _mysql_env(url: DatabaseUrl) -> dict[str, str]:
    return {"MYSQL_PWD": str(url.url.password)} if url.url.password else {}
