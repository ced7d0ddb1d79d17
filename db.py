"""SQLite storage for selfMCP: schema, migrations, connections, transactions.

No business rules live here. `connect()` gives a connection configured the same way
every time (WAL, busy timeout, foreign keys, explicit transactions); `migrate()` brings
the schema to the newest version, one numbered step at a time.

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

BUSY_TIMEOUT_MS = 5000
FILE_MODE = 0o600
DIR_MODE = 0o700

log = logging.getLogger("selfmcp.db")


@dataclass(frozen=True)
class Migration:
    """One schema step: its statements run in one transaction with `PRAGMA user_version = N`."""

    name: str
    statements: Sequence[str]


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
    conn.execute("pragma synchronous = normal")
    conn.execute("pragma foreign_keys = on")
    # Keep the FTS index and hot pages in memory: keyword search reads many doclists.
    conn.execute("pragma cache_size = -65536")
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
        conn.execute("rollback")
        raise
    conn.execute("commit")


class Database:
    """The one connection policy of the program: migrate once when opened, then one connection per thread.

    MCPServer runs sync tools in worker threads and a connection must stay in the thread that made it;
    keeping one per thread spares every call the cost of opening and configuring a new one. The skill
    store and the OAuth store share one `Database`, so no request ever runs a migration.
    """

    def __init__(self, path: str | os.PathLike[str], *, migrate_schema: bool = True) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if migrate_schema:
            with contextlib.closing(connect(path, migrate_schema=True)):
                pass

    @classmethod
    def of(cls, source: Database | str | os.PathLike[str]) -> Database:
        """`source` itself when it is a Database, else a Database opened on that path."""
        return source if isinstance(source, Database) else cls(source)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, migrate_schema=False)
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        yield self.connection()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection inside `BEGIN IMMEDIATE` ... `COMMIT` (`ROLLBACK` if the block raises)."""
        with transaction(self.connection()) as conn:
            yield conn

    def close(self) -> None:
        """Close every connection this Database opened (in any thread)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
