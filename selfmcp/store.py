"""Every SQL statement on the skill tables, behind the program's one connection policy.

Rows in, rows out: no validation and no domain errors here (skills.py decides what a missing
row means). A unit of work is `with store.write() as tx:` (one `BEGIN IMMEDIATE` transaction)
or `with store.read() as tx:`; both give a `Statements` bound to this thread's connection.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import db

# Columns a skill_update may assign; update_skill() refuses any other name.
PATCHABLE_COLUMNS = frozenset({"name", "description", "body", "dependencies_json", "auth_config_json",
                               "params_schema_json", "files_json"})


def now_text() -> str:
    """The timestamp every row is written with: UTC, milliseconds, ISO 8601 with a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Statements:
    """The skill tables' statements on one connection (inside the caller's transaction, if any)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- skills

    def skill(self, skill_id: int) -> sqlite3.Row | None:
        return self.conn.execute("select * from skills where id = ?", (skill_id,)).fetchone()

    # Names are unique without regard to case (the skills_name_nocase index): "Weather" is "weather".
    def skill_by_name(self, name: str) -> sqlite3.Row | None:
        return self.conn.execute("select * from skills where name = ? collate nocase", (name,)).fetchone()

    def other_skill_named(self, name: str, skill_id: int) -> sqlite3.Row | None:
        return self.conn.execute("select id, name from skills where name = ? collate nocase and id != ?",
                                 (name, skill_id)).fetchone()

    def insert_skill(self, name: str, values: Sequence[Any], *, is_core: bool, now: str) -> int:
        """A new active skill at version 1; `values` are description, body and the three JSON columns."""
        return self.conn.execute(
            """
            insert into skills(name, description, body, dependencies_json, auth_config_json,
                params_schema_json, version, is_active, is_core, created_at, updated_at)
            values (?, ?, ?, ?, ?, ?, 1, 1, ?, ?, ?)
            """,
            (name, *values, int(is_core), now, now)).lastrowid

    def reactivate_skill(self, skill_id: int, name: str, values: Sequence[Any], *, version: int, is_core: bool,
                         now: str) -> None:
        self.conn.execute(
            """
            update skills set name = ?, description = ?, body = ?, dependencies_json = ?, auth_config_json = ?,
                params_schema_json = ?, version = ?, is_active = 1, is_core = ?, updated_at = ?
            where id = ?
            """,
            (name, *values, version, int(is_core), now, skill_id))

    def patch_skill(self, skill_id: int, patch: dict[str, Any], *, now: str) -> None:
        """Assign `patch` (column -> value) and bump the version by one."""
        unknown = set(patch) - PATCHABLE_COLUMNS
        if unknown:
            raise ValueError(f"not patchable: {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ?" for column in patch)
        self.conn.execute(f"update skills set {assignments}, version = version + 1, updated_at = ? where id = ?",
                          (*patch.values(), now, skill_id))

    def deactivate_skill(self, skill_id: int, *, now: str) -> None:
        self.conn.execute("update skills set is_active = 0, updated_at = ? where id = ?", (now, skill_id))
        self.conn.execute("delete from skills_fts where rowid = ?", (skill_id,))

    def mark_core(self, skill_id: int) -> None:
        self.conn.execute("update skills set is_core = 1 where id = ?", (skill_id,))

    def core_ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("select id from skills where is_core = 1")}

    def active_ids(self) -> list[int]:
        return [r[0] for r in self.conn.execute("select id from skills where is_active = 1 order by id")]

    def count_active(self) -> int:
        return self.conn.execute("select count(*) from skills where is_active = 1").fetchone()[0]

    def active_skills(self) -> list[sqlite3.Row]:
        """Every active skill's row, by id (what the Skills-over-MCP catalogue and export read)."""
        return self.conn.execute("select * from skills where is_active = 1 order by id").fetchall()

    def set_files(self, skill_id: int, files_json: str | None) -> None:
        """Set the skill's file manifest (in the transaction that writes its version)."""
        self.conn.execute("update skills set files_json = ? where id = ?", (files_json, skill_id))

    def set_source(self, skill_id: int, source_json: str | None) -> None:
        self.conn.execute("update skills set source_json = ? where id = ?", (source_json, skill_id))

    def active_with_agent_name(self, agent_name: str) -> list[sqlite3.Row]:
        """Active skills whose Agent Skills name is `agent_name` (db.AGENT_NAME_SQL: one index lookup)."""
        return self.conn.execute(f"select id, name from skills where is_active = 1 and {db.AGENT_NAME_SQL} = ? "
                                 "order by id", (agent_name,)).fetchall()

    # -- file contents, one row per digest (shared by every version that has the file)

    def put_blobs(self, blobs: dict[str, bytes]) -> None:
        """Store `blobs` (digest -> bytes); a digest already stored is left as it is."""
        self.conn.executemany("insert or ignore into skill_blobs(digest, size, content) values (?, ?, ?)",
                              [(d, len(b), b) for d, b in blobs.items()])

    def blobs(self, digests: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start:start + 500])
            marks = ",".join("?" * len(chunk))
            out.update(self.conn.execute(f"select digest, content from skill_blobs where digest in ({marks})",
                                         chunk).fetchall())
        return out

    def texts(self, ids: Sequence[int]) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(ids))
        return self.conn.execute(f"select id, name, description, body from skills where id in ({marks})",
                                 list(ids)).fetchall()

    # -- versions

    def archive_version(self, skill_id: int, *, now: str) -> None:
        """Record the skill's current row as its version in skill_versions (once per version)."""
        self.conn.execute(
            """
            insert or ignore into skill_versions(skill_id, version, name, description, body,
                dependencies_json, auth_config_json, params_schema_json, files_json, changed_at)
            select id, version, name, description, body, dependencies_json, auth_config_json,
                params_schema_json, files_json, ?
            from skills
            where id = ?
            """,
            (now, skill_id))

    def record_version(self, skill_id: int, *, now: str, change: str = "updated",
                       restored_from: int | None = None) -> None:
        """Record the skill's current row as a new version (`change` is "restored" when `restored_from` is
        given); a version already recorded is an error, never silently kept (history is append-only, so two
        writers can never share a version number)."""
        self.conn.execute(
            """
            insert into skill_versions(skill_id, version, name, description, body, dependencies_json,
                auth_config_json, params_schema_json, files_json, changed_at, change, restored_from)
            select id, version, name, description, body, dependencies_json, auth_config_json,
                params_schema_json, files_json, ?, ?, ?
            from skills
            where id = ?
            """,
            (now, "restored" if restored_from is not None else change, restored_from, skill_id))

    def version_numbers(self, skill_id: int) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "select version from skill_versions where skill_id = ? order by version", (skill_id,))]

    def version(self, skill_id: int, version: int) -> sqlite3.Row | None:
        return self.conn.execute("select * from skill_versions where skill_id = ? and version = ?",
                                 (skill_id, version)).fetchone()

    def version_summaries(self, skill_id: int) -> list[sqlite3.Row]:
        """One row per version, oldest first: number, time, change, body size and which fields differ from
        the version before (null on the first)."""
        return self.conn.execute(
            """
            select version, changed_at, change, restored_from, length(cast(body as blob)) as size,
                lag(version) over w as previous,
                name is not lag(name) over w as name,
                files_json is not lag(files_json) over w as files,
                description is not lag(description) over w as description,
                body is not lag(body) over w as body,
                dependencies_json is not lag(dependencies_json) over w as dependencies,
                auth_config_json is not lag(auth_config_json) over w as auth_config,
                params_schema_json is not lag(params_schema_json) over w as params_schema
            from skill_versions
            where skill_id = ?
            window w as (order by version)
            order by version
            """,
            (skill_id,)).fetchall()

    # -- derived rows: FTS, summary, embedding

    def write_search_row(self, skill_id: int, fields: tuple[str, str, str], summary_json: str, *, now: str) -> None:
        """Replace the skill's FTS row (name, description, tags) and its summary row."""
        fname, fdesc, ftags = fields
        self.conn.execute("delete from skills_fts where rowid = ?", (skill_id,))
        self.conn.execute("insert into skills_fts(rowid, name, description, tags) values (?, ?, ?, ?)",
                          (skill_id, fname, fdesc, ftags))
        self.conn.execute(
            """
            insert into skill_summary_cache(id, summary_json, updated_at) values (?, ?, ?)
            on conflict(id) do update set summary_json = excluded.summary_json, updated_at = excluded.updated_at
            """,
            (skill_id, summary_json, now))

    def upsert_embedding(self, skill_id: int, blob: bytes, dim: int, model: str, text_hash: str, *,
                         now: str) -> None:
        self.conn.execute(
            """
            insert into skill_embeddings(skill_id, vector, dim, model, content_hash, updated_at)
            values (?, ?, ?, ?, ?, ?)
            on conflict(skill_id) do update set vector = excluded.vector, dim = excluded.dim,
                model = excluded.model, content_hash = excluded.content_hash, updated_at = excluded.updated_at
            """,
            (skill_id, blob, dim, model, text_hash, now))

    def embedding_state(self, skill_id: int) -> sqlite3.Row | None:
        return self.conn.execute("select content_hash, model from skill_embeddings where skill_id = ?",
                                 (skill_id,)).fetchone()

    def delete_embedding(self, skill_id: int) -> None:
        self.conn.execute("delete from skill_embeddings where skill_id = ?", (skill_id,))

    def active_vectors(self, model: str, dim: int) -> Iterator[tuple[int, bytes]]:
        yield from self.conn.execute(
            """
            select e.skill_id, e.vector
            from skill_embeddings e
            join skills s on s.id = e.skill_id
            where s.is_active = 1 and e.model = ? and e.dim = ?
            """,
            (model, dim))

    def stale_embedding_ids(self, model: str, limit: int | None = None) -> list[int]:
        """Active skills with no vector of `model` (missing, or another model's)."""
        rows = self.conn.execute(
            """
            select s.id
            from skills s
            left join skill_embeddings e on e.skill_id = s.id
            where s.is_active = 1 and (e.skill_id is null or e.model != ?)
            order by s.id
            limit ?
            """,
            (model, -1 if limit is None else limit)).fetchall()
        return [r[0] for r in rows]

    # -- reading summaries and keyword matches

    def summary_page(self, after: int, limit: int) -> list[tuple[int, str]]:
        return self.conn.execute(
            """
            select s.id, c.summary_json
            from skills s
            join skill_summary_cache c on c.id = s.id
            where s.is_active = 1 and s.id > ?
            order by s.id
            limit ?
            """,
            (after, limit)).fetchall()

    def active_summaries(self, ids: Sequence[int]) -> dict[int, str]:
        marks = ",".join("?" * len(ids))
        return dict(self.conn.execute(
            f"""
            select s.id, c.summary_json
            from skills s
            join skill_summary_cache c on c.id = s.id
            where s.is_active = 1 and s.id in ({marks})
            """,
            list(ids)).fetchall())

    def keyword_matches(self, match: str, limit: int) -> list[tuple[int, float]]:
        """FTS5 rows matching `match` (already quoted), best bm25 first."""
        return self.conn.execute(
            """
            select rowid, bm25(skills_fts, 1.0, 1.0, 0.5) as rank
            from skills_fts
            where skills_fts match ?
            order by rank
            limit ?
            """,
            (match, limit)).fetchall()

    # -- run history

    def insert_run(self, skill_id: int, version: int, started_at: str, duration_ms: float, *, keep: int,
                   exit_code: int | None = None, timed_out: bool = False, cancelled: bool = False,
                   stdout_bytes: int = 0, stderr_bytes: int = 0, error: str | None = None) -> None:
        """Add a run, keeping only the newest `keep` runs of the skill."""
        self.conn.execute(
            """
            insert into skill_runs(skill_id, version, started_at, duration_ms, exit_code, timed_out,
                cancelled, stdout_bytes, stderr_bytes, error)
            values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (skill_id, version, started_at, duration_ms, exit_code, int(timed_out), int(cancelled),
             stdout_bytes, stderr_bytes, error))
        self.conn.execute(
            """
            delete from skill_runs
            where skill_id = ? and id <= (
                select id from skill_runs where skill_id = ? order by id desc limit 1 offset ?)
            """,
            (skill_id, skill_id, keep))

    def runs(self, skill_id: int) -> list[sqlite3.Row]:
        return self.conn.execute(
            """
            select started_at, duration_ms, exit_code, timed_out, cancelled, error
            from skill_runs
            where skill_id = ?
            order by id desc
            """,
            (skill_id,)).fetchall()

    # -- credentials (the vault's rows: values arrive already encrypted)

    def credentials(self, skill_id: int) -> list[sqlite3.Row]:
        return self.conn.execute(
            """
            select key, value
            from skill_credentials
            where skill_id = ?
            order by key
            """,
            (skill_id,)).fetchall()

    def all_credentials(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            """
            select c.skill_id, s.name, c.key, c.value
            from skill_credentials c
            join skills s on s.id = c.skill_id
            order by c.skill_id, c.key
            """).fetchall()

    def put_credential(self, skill_id: int, key: str, value: str, *, now: str) -> None:
        self.conn.execute(
            """
            insert into skill_credentials(skill_id, key, value, created_at)
            values (?, ?, ?, ?)
            on conflict(skill_id, key) do update set value = excluded.value, created_at = excluded.created_at
            """,
            (skill_id, key, value, now))

    def delete_credential(self, skill_id: int, key: str) -> bool:
        return self.conn.execute("delete from skill_credentials where skill_id = ? and key = ?",
                                 (skill_id, key)).rowcount > 0


class SkillStore:
    """The skill tables of one database, read and written through `Statements`."""

    def __init__(self, database: db.Database | str | os.PathLike[str]) -> None:
        self.db = db.Database.of(database)

    @contextlib.contextmanager
    def read(self) -> Iterator[Statements]:
        with self.db.read() as conn:
            yield Statements(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[Statements]:
        with self.db.write() as conn:
            yield Statements(conn)
