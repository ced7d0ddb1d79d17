"""SQLite storage for selfMCP: schema, migrations, connections, transactions.

No business rules live here. `connect()` gives a connection configured the same way
every time (WAL, busy timeout, foreign keys, explicit transactions, a bounded write-ahead
log); `migrate()` brings the schema to the newest version, one numbered step at a time.

`Database` is the one connection policy, and the guard of the file: it refuses to open a file
that is not a healthy selfMCP database (`OpenFailed`, one line saying what to do), and refuses
writes (`StorageUnavailable`) once the file at its path was removed, replaced or overwritten, so
no write is acknowledged into a file that a restart would not find.

The file holds OAuth clients and token hashes and every skill, so it is the owner's alone:
`connect()` creates a missing directory 0700 and the file 0600 before SQLite opens it (SQLite
gives its -wal and -shm files the database file's mode), tightens an existing file, its -wal
and -shm to 0600, and removes write access for others from its directory when this process owns
it (a sticky directory such as /tmp is left alone, with a warning).

Migration N takes `PRAGMA user_version` from N-1 to N. Append only: never edit a
migration that has shipped, because databases in the field have already run it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("selfmcp.db")

BUSY_TIMEOUT_MS = 5000
FILE_MODE = 0o600
DIR_MODE = 0o700
# A committed write survives power loss (WAL with synchronous=full syncs the log on every commit).
SYNCHRONOUS = "full"
# Checkpoint every ~1 MiB of log and cut the log back to 1 MiB after one: a burst of writes on a
# small disk cannot leave a log so large that the database file has no room to take it back.
WAL_AUTOCHECKPOINT_PAGES = 256
JOURNAL_SIZE_LIMIT_BYTES = 1 << 20
SQLITE_MAGIC = b"SQLite format 3\x00"


class StorageUnavailable(sqlite3.OperationalError):
    """The database file is gone, replaced or overwritten: writes are refused rather than lost."""


class OpenFailed(Exception):
    """The database cannot be opened; the message is one line: what is wrong and what to do."""


@dataclass(frozen=True)
class Migration:
    """One schema step: its statements run in one transaction with `PRAGMA user_version = N`."""

    name: str
    statements: Sequence[str]


# selfmcp/documents.agent_name() in SQL, for a skill name (letters, digits, '_', '.', '-', at most 64): lower
# case, each '_' or '.' a '-', runs of '-' made one (six halvings cover 64), '-' trimmed at both ends,
# 'skill' if nothing is left. Only built-in deterministic functions, so it can be indexed.
AGENT_NAME_SQL = ("coalesce(nullif(trim(" + "replace(" * 6 + "replace(replace(lower(name), '_', '-'), '.', '-')"
                  + ", '--', '-')" * 6 + ", '-'), ''), 'skill')")

# Entry N-1 takes user_version from N-1 to N, so a crash mid-migration leaves the previous version.
MIGRATIONS: list[Migration] = [
    Migration("m001_initial_schema", (
        """
        create table skills (
            id integer primary key,
            name text not null unique,
            description text not null,
            body text not null,
            dependencies_json text not null default '[]',
            auth_config_json text,
            version integer not null default 1,
            is_active integer not null default 1,
            is_core integer not null default 0,
            created_at text not null,
            updated_at text not null
        )
        """,
        """
        create table skill_versions (
            id integer primary key,
            skill_id integer not null references skills(id),
            version integer not null,
            name text not null,
            description text not null,
            body text not null,
            dependencies_json text not null default '[]',
            auth_config_json text,
            changed_at text not null,
            unique (skill_id, version)
        )
        """,
        # Own-content FTS table: skills.py writes the search text (names split into
        # words, frontmatter tags) rather than the raw columns.
        """
        create virtual table skills_fts using fts5(
            name, description, tags,
            tokenize = 'porter unicode61'
        )
        """,
        """
        create table skill_embeddings (
            skill_id integer primary key references skills(id),
            vector blob not null,
            dim integer not null,
            model text not null,
            content_hash text not null,
            updated_at text not null
        )
        """,
        "create index skill_embeddings_model on skill_embeddings(model)",
        """
        create table skill_credentials (
            skill_id integer not null references skills(id),
            key text not null,
            value text not null,
            created_at text not null,
            primary key (skill_id, key)
        )
        """,
        # One row per skill (id = skill id): a write touches its own row only.
        """
        create table skill_summary_cache (
            id integer primary key references skills(id),
            summary_json text not null,
            updated_at text not null
        )
        """,
    )),
    Migration("m002_params_schema_and_run_history", (
        "alter table skills add column params_schema_json text",
        "alter table skill_versions add column params_schema_json text",
        """
        create table skill_runs (
            id integer primary key,
            skill_id integer not null references skills(id),
            version integer not null,
            started_at text not null,
            duration_ms real not null,
            exit_code integer,
            timed_out integer not null default 0,
            cancelled integer not null default 0,
            stdout_bytes integer not null default 0,
            stderr_bytes integer not null default 0,
            error text
        )
        """,
        "create index skill_runs_skill on skill_runs(skill_id, id)",
    )),
    # The built-in OAuth server (selfmcp/remote/oauth.py): clients, one-time codes, hashed tokens, owner password.
    Migration("m003_oauth_server", (
        """
        create table oauth_clients (
            client_id text primary key,
            info_json text not null,
            created_at integer not null,
            last_used_at integer
        )
        """,
        """
        create table oauth_codes (
            code_hash text primary key,
            client_id text not null references oauth_clients(client_id) on delete cascade,
            grant_id text not null,
            data_json text not null,
            expires_at real not null,
            used_at integer
        )
        """,
        # An access token and its refresh token share a grant_id: revoking one revokes both.
        """
        create table oauth_tokens (
            token_hash text primary key,
            kind text not null check (kind in ('access', 'refresh')),
            client_id text not null references oauth_clients(client_id) on delete cascade,
            grant_id text not null,
            scopes text not null,
            resource text,
            expires_at integer not null,
            created_at integer not null,
            rotated_at integer
        )
        """,
        "create index oauth_tokens_grant on oauth_tokens(grant_id)",
        """
        create table oauth_owner (
            id integer primary key check (id = 1),
            password_hash text not null,
            created_at text not null
        )
        """,
    )),
    # Counting and paging active skills reads a small partial index, not the table.
    Migration("m004_active_skills_index", (
        "create index skills_active on skills(id) where is_active = 1",
    )),
    # A skill's supporting files (selfmcp/documents.py): the skill row and each version row keep a
    # manifest (path, size, digest); the bytes live once per digest, so versions share unchanged files.
    Migration("m005_skill_files", (
        "alter table skills add column files_json text",
        "alter table skill_versions add column files_json text",
        # Where an imported skill came from: {source, ref?, commit?, path} (selfmcp/transfer.py).
        "alter table skills add column source_json text",
        """
        create table skill_blobs (
            digest text primary key,
            size integer not null,
            content blob not null
        )
        """,
    )),
    # Names are unique without regard to case. Databases that already hold two spellings of one
    # name keep the oldest as it is; the others get "~<id>" appended ('~' is never in a valid
    # name, so the result clashes with nothing) and can be renamed with skill_update.
    Migration("m006_case_insensitive_names", (
        """
        update skills
        set name = name || '~' || id
        where exists (
            select 1
            from skills as older
            where older.name = skills.name collate nocase
              and older.id < skills.id
        )
        """,
        "create unique index skills_name_nocase on skills(name collate nocase)",
    )),
    # What made each version (created, updated, restored, reactivated) and which version a restore copied.
    Migration("m007_version_changes", (
        "alter table skill_versions add column change text",
        "alter table skill_versions add column restored_from integer",
    )),
    # Active skills by Agent Skills name (AGENT_NAME_SQL), so the check that a new or renamed skill keeps
    # its name to itself is one index lookup, not a scan of every name (~10 ms a create at 10,000 skills).
    Migration("m008_agent_name_index", (
        f"create index skills_active_agent_name on skills({AGENT_NAME_SQL}) where is_active = 1",
    )),
]


def _owner_only(path: Path) -> None:
    """Create `path`'s directory (0700) and file (0600) if missing; tighten them if they exist."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_mode & stat.S_IWOTH:
        if info.st_mode & stat.S_ISVTX or info.st_uid != os.geteuid():
            log.warning("the database directory %s is writable by every user; keep the database in a "
                        "directory of its own (SELFMCP_DB_PATH)", directory)
        else:
            os.chmod(directory, stat.S_IMODE(info.st_mode) & ~(stat.S_IWOTH | stat.S_IWGRP))
    # O_EXCL: never open (and close) a descriptor of a database this process may have open, as
    # closing any descriptor of a file drops every POSIX lock the process holds on it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            mode = stat.S_IMODE(name.stat().st_mode)
            if mode & 0o077:
                os.chmod(name, mode & 0o700)



def connect(path: str | os.PathLike[str], *, migrate_schema: bool = True) -> sqlite3.Connection:
    """Open the database at `path`, configured for selfMCP, migrated unless told not to."""
    path = Path(path)
    if str(path) != ":memory:":
        _owner_only(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"pragma busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("pragma journal_mode = wal")
    conn.execute(f"pragma synchronous = {SYNCHRONOUS}")
    conn.execute(f"pragma wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"pragma journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES}")
    conn.execute("pragma foreign_keys = on")
    # 16 MB of page cache per connection (one per thread): keyword search runs on an in-memory index
    # (selfmcp/bm25.py) and reads FTS5 doclists only until it is built; at 64 MB a connection, the threads
    # that read every row once (that build, loading the vectors) kept ~130 MB more at 100,000 skills.
    conn.execute("pragma cache_size = -16384")
    if migrate_schema:
        migrate(conn)
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("pragma user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration; return the resulting schema version."""
    while True:
        with transaction(conn):
            current = schema_version(conn)
            if current >= len(MIGRATIONS):
                return current
            for statement in MIGRATIONS[current].statements:
                conn.execute(statement)
            conn.execute(f"pragma user_version = {current + 1}")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` if the block raises."""
    conn.execute("begin immediate")
    try:
        yield conn
    except BaseException:
        # SQLite has already rolled back after some errors (SQLITE_FULL, SQLITE_IOERR); a second
        # rollback would raise and hide the error that matters.
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    try:
        conn.execute("commit")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise


def describe_open_failure(path: str | os.PathLike[str], exc: BaseException) -> str:
    """One line for a database that cannot be opened: what is wrong and what to do. The file is never touched."""
    code = getattr(exc, "sqlite_errorcode", None)
    untouched = "the file was left as it is"
    if code == sqlite3.SQLITE_NOTADB:
        return (f"{path} is not a SQLite database (damaged or overwritten): move it aside and restore a backup, "
                f"or start with a new path; {untouched}.")
    if code == sqlite3.SQLITE_CORRUPT:
        return (f"{path} is damaged ({exc}): move it aside and restore a backup (`sqlite3 {path} .recover` may "
                f"save what is left); {untouched}.")
    if code == sqlite3.SQLITE_FULL:
        return f"the disk holding {path} is full: free some space and start again; {untouched}."
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return f"{path} is locked by another process: stop the other server using it and start again."
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM) or isinstance(exc, OSError):
        return (f"{path} cannot be opened for writing ({exc}): make sure its directory exists and this user may "
                f"write the file and create {Path(path).name}-wal and {Path(path).name}-shm beside it.")
    return f"{path} cannot be opened ({exc}); {untouched}."


def open_checked(path: str | os.PathLike[str]) -> None:
    """Check that `path` is a healthy database (creating it if absent) and migrate it; raise OpenFailed if not."""
    if str(path) != ":memory:" and Path(path).is_dir():
        raise OpenFailed(f"{path} is a directory: give the path of a database file, e.g. {Path(path) / 'selfmcp.db'}.")
    try:
        with contextlib.closing(connect(path, migrate_schema=False)) as conn:
            verdict = [row[0] for row in conn.execute("pragma quick_check(3)")]
            if verdict != ["ok"]:
                found = " ".join(" ".join(verdict).split())[:200]  # one line, however SQLite words it
                raise OpenFailed(f"{path} is damaged (integrity check: {found}): move it aside and "
                                 f"restore a backup; the file was left as it is.")
            migrate(conn)
    except (sqlite3.Error, OSError) as exc:
        raise OpenFailed(describe_open_failure(path, exc)) from exc


class Database:
    """The one connection policy of the program: migrate once when opened, then one connection per thread.

    MCPServer runs sync tools in worker threads and a connection must stay in the thread that made it;
    keeping one per thread spares every call the cost of opening and configuring a new one. The skill
    store and the OAuth store share one `Database`, so no request ever runs a migration.

    It also watches the file: a descriptor held open since the start tells whether the path still
    names the same file with an SQLite header (`problem()`); `write()` checks that first and raises
    StorageUnavailable otherwise, and a full disk triggers a checkpoint so writes resume once space
    is back.
    """

    def __init__(self, path: str | os.PathLike[str], *, migrate_schema: bool = True) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._reported: str | None = None
        if migrate_schema:
            open_checked(path)
            self._watch()

    @classmethod
    def of(cls, source: Database | str | os.PathLike[str]) -> Database:
        """`source` itself when it is a Database, else a Database opened on that path."""
        return source if isinstance(source, Database) else cls(source)

    def _watch(self) -> None:
        """Hold the file open to know it again (never closed before the connections: POSIX locks)."""
        if self._fd is not None or str(self.path) == ":memory:":
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
            self._fd, self._identity = fd, (st.st_dev, st.st_ino)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, migrate_schema=False)
            with self._lock:
                self._all.append(conn)
                self._watch()
        return conn

    def problem(self) -> str | None:
        """Why writes would not be durable (file removed, replaced, overwritten), or None when all is well."""
        if self._fd is None:
            return None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self._identity:
                problem = f"the database file {self.path} was replaced by another file while the server was running"
            elif os.pread(self._fd, len(SQLITE_MAGIC), 0) != SQLITE_MAGIC:
                problem = f"the database file {self.path} was overwritten while the server was running"
            else:
                problem = None
        except FileNotFoundError:
            problem = f"the database file {self.path} was removed while the server was running"
        except OSError as exc:
            problem = f"the database file {self.path} cannot be checked ({exc.strerror})"
        if problem != self._reported:
            self._reported = problem
            if problem:
                log.error("%s; writes are refused until it is restored and the server restarted", problem)
            else:
                log.warning("the database file %s is back; writes are accepted again", self.path)
        return problem

    def check(self) -> None:
        """Raise StorageUnavailable when the file at the path is not the one this process writes."""
        problem = self.problem()
        if problem:
            raise StorageUnavailable(f"{problem[0].upper()}{problem[1:]}; writes are refused so that none is lost.")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        yield self.connection()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside `BEGIN IMMEDIATE` ... `COMMIT` (`ROLLBACK` if the block raises)."""
        self.check()
        conn = self.connection()
        try:
            with transaction(conn):
                yield conn
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                self.checkpoint()  # move the log into the file, so the next write has room once space is back
            raise

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and truncate it; False when that could not finish now."""
        try:
            busy, _, _ = self.connection().execute("pragma wal_checkpoint(truncate)").fetchone()
        except sqlite3.Error as exc:
            log.warning("checkpoint failed: %s", exc)
            return False
        return not busy

    def close(self) -> None:
        """Close every connection this Database opened (in any thread), then the watched file."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
