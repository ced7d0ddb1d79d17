"""The skill registry in plain Python: validation, errors, queries, search, execution.

Usable from a REPL with no MCP in sight:

    >>> reg = Registry("skills.db", HashEmbedder())
    >>> reg.create("hello", "Say hello.", "print('hi')")["id"]
    1

Every write happens in one transaction: the skill row, its version row, its FTS row,
its embedding and its summary row change together or not at all. Embeddings are
computed before the transaction starts, so no network call ever holds the write lock.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import json
import logging
import os
import re
import secrets
import sqlite3
import statistics
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import core_skills
import db
import depenv
import executor
import redact
import skillmd
from embeddings import Embedder, QueryCache, VectorIndex, content_hash, decode, embed_with_model, encode
from static_embedder import STOP_WORDS as ENGLISH_STOP_WORDS

log = logging.getLogger("selfmcp.skills")

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_BODY_BYTES = 256 * 1024
MAX_DESCRIPTION_BYTES = 4 * 1024
MAX_PARAMS_BYTES = 1024 * 1024
MAX_QUERY_CHARS = 4096
MAX_DEPENDENCIES = 64
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 600
DEFAULT_TIMEOUT_S = 30
MAX_TOP_K = 50
SEARCH_MODES = ("keyword", "vector", "hybrid")
SUMMARY_DEFAULT_LIMIT = 100
SUMMARY_MAX_LIMIT = 1000
SHORT_DESCRIPTION_CHARS = 120
# Hybrid score = VECTOR_WEIGHT * minmax(cosine) + (1 - VECTOR_WEIGHT) * bm25 / best bm25.
VECTOR_WEIGHT = 0.7
# Core skills are about the server itself; keep them from crowding ordinary results.
CORE_SCORE_FACTOR = 0.6
KEYWORD_CANDIDATES = 200
VECTOR_CANDIDATES = 100


# ----------------------------------------------------------------------------- errors

class SkillError(Exception):
    """A failure the caller can act on. `code` is stable API; `hint` is the next step."""

    code = "skill_error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.hint = hint or self.hint
        self.details = details

    def payload(self) -> dict[str, Any]:
        # The specification puts some extras (`missing`, `name`) at the top level.
        return {"error": self.code, "message": str(self), "hint": self.hint, **self.details}


class InvalidArgument(SkillError):
    code = "invalid_argument"
    hint = "Fix the argument named in the message and call again."


class InvalidName(SkillError):
    code = "invalid_name"
    hint = "Use 1-64 characters: letters, digits, '_', '-' or '.'; no spaces or slashes."


class InvalidDescription(SkillError):
    code = "invalid_description"
    hint = "Give a non-empty description of at most 4 KiB saying what the skill does and when to use it."


class InvalidBody(SkillError):
    code = "invalid_body"
    hint = "Give a non-empty body of at most 256 KiB: a Python script, or a SKILL.md with ```python blocks."


class InvalidCode(SkillError):
    code = "invalid_code"
    hint = "Fix the syntax error at the line given and call again."


class InvalidDependency(SkillError):
    code = "invalid_dependency"
    hint = "Give dependencies as a list of pip requirement strings such as 'requests>=2'."


class InvalidAuthConfig(SkillError):
    code = "invalid_auth_config"
    hint = ('Use {"type": "api_key", "env_var": "X_API_KEY", "instructions": "..."} or '
            '{"type": "oauth2", "auth_url": "https://...", "client_id_env": "X_CLIENT_ID", "scopes": [...]}.')


class InvalidParams(SkillError):
    code = "invalid_params"
    hint = "Pass params as a JSON object of at most 1 MiB."


class InvalidTimeout(SkillError):
    code = "invalid_timeout"
    hint = f"Use a timeout between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} seconds."


class InvalidMode(SkillError):
    code = "invalid_mode"
    hint = "Use mode 'hybrid' (default), 'keyword' or 'vector'."


class InvalidTopK(SkillError):
    code = "invalid_top_k"
    hint = f"Use top_k between 1 and {MAX_TOP_K}."


class InvalidQuery(SkillError):
    code = "invalid_query"
    hint = f"Use a query of at most {MAX_QUERY_CHARS} characters."


class InvalidCursor(SkillError):
    code = "invalid_cursor"
    hint = "Pass the next_cursor value from the previous skill_list_summary call, or omit it."


class InvalidLimit(SkillError):
    code = "invalid_limit"
    hint = f"Use a limit between 1 and {SUMMARY_MAX_LIMIT}."


class SkillNotFound(SkillError):
    code = "skill_not_found"
    hint = "Call skill_search or skill_list_summary to find the right id."


class SkillExists(SkillError):
    code = "skill_exists"
    hint = "Call skill_update on the existing skill, or choose another name."


class NothingToUpdate(SkillError):
    code = "nothing_to_update"
    hint = "Pass at least one of name, description, body, dependencies, auth_config, params_schema."


class CannotDeleteCoreSkill(SkillError):
    code = "cannot_delete_core_skill"
    hint = "Core skills stay in the registry; update their body or description instead."


class CannotRenameCoreSkill(SkillError):
    code = "cannot_rename_core_skill"
    hint = "Core skills keep their names; leave name out of the update."


class MissingCredentials(SkillError):
    code = "missing_credentials"


class NoAuthConfig(SkillError):
    code = "no_auth_config"
    hint = "This skill declares no auth_config, so it needs no setup; call skill_execute directly."


class NotExecutable(SkillError):
    code = "not_executable"
    hint = "Read the body with skill_get_detail and follow it, or update it to add a ```python block."


class InvalidParamsSchema(SkillError):
    code = "invalid_params_schema"
    hint = ('Give a JSON Schema object, e.g. {"type": "object", "properties": {"city": {"type": "string"}}, '
            '"required": ["city"]}, or {} for none.')


class DependencyInstallFailed(SkillError):
    code = "dependency_install_failed"
    hint = ("Check the requirement names and versions in `installer_tail`, fix them with skill_update, "
            "and call skill_execute again.")


# ------------------------------------------------------------------------ text helpers

# Query words that say nothing about which skill is wanted: English stop words, plus the
# words people use to ask for a tool at all.
STOP_WORDS = ENGLISH_STOP_WORDS | frozenset("want need like get use using tool tools help find".split())

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_CAMEL_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_A-Za-z]+", re.UNICODE)


def split_words(text: str) -> list[str]:
    """Words of `text`, with snake_case, kebab-case and CamelCase split apart, lowercased."""
    words: list[str] = []
    for token in _WORD_RE.findall(text):
        parts = _CAMEL_RE.findall(token) or [token]
        words.extend(p.lower() for p in parts)
    return words


def fts_terms(query: str) -> list[str]:
    """The query's words as FTS5 terms: stop words dropped, each quoted.

    Quoting makes FTS syntax in the query (NOT, OR, -, *, :, quotes) words to search
    for, never operators. A query of stop words only keeps them all. No prefix
    matching: the porter stemmer already joins inflections, and on the dev set prefix
    terms left hybrid recall unchanged while making keyword search ~10% slower.
    """
    words = split_words(query)
    terms = list(dict.fromkeys(w for w in words if w not in STOP_WORDS)) or list(dict.fromkeys(words))
    return [f'"{w}"' for w in terms[:32]]


def short_description(description: str) -> str:
    text = " ".join(description.split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(first) > SHORT_DESCRIPTION_CHARS:
        first = first[: SHORT_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return first


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loads(text: str | None, default: Any) -> Any:
    return default if text is None else json.loads(text)


# -------------------------------------------------------------------------- validation

def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidName(f"Invalid skill name {name!r}.")
    return name


def validate_description(description: Any) -> str:
    if not isinstance(description, str) or not description.strip():
        raise InvalidDescription("The description is empty.")
    if len(description.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise InvalidDescription(f"The description is {len(description.encode())} bytes; the limit is 4 KiB.")
    return description


def validate_body(body: Any) -> str:
    if not isinstance(body, str) or not body.strip():
        raise InvalidBody("The body is empty.")
    size = len(body.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise InvalidBody(f"The body is {size} bytes; the limit is 256 KiB.")
    code = skillmd.parse_body(body).code
    if code is not None:
        try:
            compile(code, "<skill>", "exec")
        except SyntaxError as exc:
            raise InvalidCode(f"Python syntax error at line {exc.lineno}: {exc.msg}.",
                              line=exc.lineno) from None
        except ValueError as exc:  # e.g. a NUL byte in the source
            raise InvalidCode(f"The code cannot be compiled: {exc}.") from None
    return body


def validate_dependencies(dependencies: Any) -> list[str]:
    if dependencies is None:
        return []
    if not isinstance(dependencies, list) or len(dependencies) > MAX_DEPENDENCIES:
        raise InvalidDependency(f"dependencies must be a list of at most {MAX_DEPENDENCIES} strings.")
    out: list[str] = []
    for dep in dependencies:
        if not isinstance(dep, str) or not dep.strip():
            raise InvalidDependency(f"Invalid requirement {dep!r}.")
        try:
            depenv.normalise_requirement(dep)
        except depenv.InvalidRequirement as exc:
            raise InvalidDependency(str(exc), requirement=exc.requirement) from None
        out.append(dep.strip())
    return out


def validate_auth_config(auth_config: Any) -> dict[str, Any] | None:
    if auth_config is None or auth_config == {}:
        return None
    if not isinstance(auth_config, dict):
        raise InvalidAuthConfig("auth_config must be an object.")
    kind = auth_config.get("type")
    if kind == "api_key":
        env_var = auth_config.get("env_var")
        if not isinstance(env_var, str) or not ENV_NAME_RE.match(env_var):
            raise InvalidAuthConfig(f"api_key auth_config needs env_var, an environment variable name; got {env_var!r}.")
    elif kind == "oauth2":
        auth_url = auth_config.get("auth_url")
        if not isinstance(auth_url, str) or urllib.parse.urlsplit(auth_url).scheme not in ("http", "https"):
            raise InvalidAuthConfig(f"oauth2 auth_config needs auth_url, an http(s) URL; got {auth_url!r}.")
        for key in ("client_id_env", "client_secret_env", "token_env"):
            value = auth_config.get(key)
            if (value is not None or key == "client_id_env") and (
                    not isinstance(value, str) or not ENV_NAME_RE.match(value)):
                raise InvalidAuthConfig(f"oauth2 auth_config {key} must be an environment variable name; got {value!r}.")
        scopes = auth_config.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidAuthConfig("oauth2 auth_config scopes must be a list of strings.")
    else:
        raise InvalidAuthConfig(f"Unknown auth_config type {kind!r}; use 'api_key' or 'oauth2'.")
    return auth_config


def validate_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidParams(f"params must be a JSON object, not {type(params).__name__}.")
    return params


def validate_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S):
        raise InvalidTimeout(f"Invalid timeout {timeout!r}.")
    return float(timeout)


def required_env_vars(auth_config: Mapping[str, Any] | None) -> list[str]:
    """Environment variables a skill's auth_config says must be set before it runs."""
    if not auth_config:
        return []
    if auth_config.get("type") == "api_key":
        return [auth_config["env_var"]]
    names = [auth_config.get(k) for k in ("client_id_env", "client_secret_env", "token_env")]
    return [n for n in names if n]


# ---------------------------------------------------------------------------- registry

def _row_to_detail(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "body": row["body"],
        "dependencies": _loads(row["dependencies_json"], []),
        "auth_config": _loads(row["auth_config_json"], None),
        "params_schema": _loads(row["params_schema_json"], None),
        "version": row["version"],
        "is_core": bool(row["is_core"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def index_texts(name: str, description: str, body: str) -> tuple[tuple[str, str, str], str]:
    """What a skill is found by, from one parse of its body.

    Returns the (name, description, tags) fields of its FTS row and the text it is
    embedded from.
    """
    words = " ".join(split_words(name))
    tags = skillmd.frontmatter_search_text(skillmd.parse_body(body).frontmatter)
    text = " ".join(part for part in (words, description, tags) if part)
    return (f"{name} {words}", description, tags), text


class Registry:
    """All registry operations over one SQLite file.

    Holds the database *path* and one connection per thread (tools run in worker threads,
    and a connection must stay in the thread that made it); reusing it keeps a search
    from paying for a new connection every call.
    """

    def __init__(self, db_path: str | os.PathLike[str], embedder: Embedder, *,
                 environ: Mapping[str, str] | None = None, python: str | None = None) -> None:
        self.db_path = db_path
        self.embedder = embedder
        self.environ = os.environ if environ is None else environ
        self.python = python
        self._query_cache = QueryCache()
        self._indexes: dict[str, VectorIndex] = {}
        self._index_lock = threading.Lock()
        self._local = threading.local()
        self._reembed_lock = threading.Lock()
        if hasattr(embedder, "on_recovered"):
            embedder.on_recovered = self.reembed_in_background
        with contextlib.closing(db.connect(db_path, migrate_schema=True)) as conn:
            self._core_ids = {r[0] for r in conn.execute("select id from skills where is_core = 1")}

    # -- plumbing

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = db.connect(self.db_path, migrate_schema=False)
        yield conn

    def _get_row(self, conn: sqlite3.Connection, skill_id: Any, *, active: bool = True) -> sqlite3.Row:
        if isinstance(skill_id, bool) or not isinstance(skill_id, int):
            raise SkillNotFound(f"Invalid skill id {skill_id!r}; ids are integers.")
        row = conn.execute("select * from skills where id = ?", (skill_id,)).fetchone()
        if row is None or (active and not row["is_active"]):
            raise SkillNotFound(f"No active skill with id {skill_id}.")
        return row

    def _embed_one(self, text: str) -> tuple[np.ndarray | None, str | None]:
        try:
            vectors, model = embed_with_model(self.embedder, [text])
        except Exception as exc:  # an embedder that cannot embed must not lose the write
            log.warning("could not embed skill text (%s); it will be embedded later", type(exc).__name__)
            return None, None
        return vectors[0], model

    def _write_derived(self, conn: sqlite3.Connection, skill_id: int, name: str, description: str,
                       fields: tuple[str, str, str], embedding: tuple[np.ndarray | None, str | None],
                       text_hash: str, now: str) -> None:
        """Refresh a skill's FTS row, summary row and (when given) embedding, in the caller's transaction."""
        fname, fdesc, ftags = fields
        conn.execute("delete from skills_fts where rowid = ?", (skill_id,))
        conn.execute("insert into skills_fts(rowid, name, description, tags) values (?, ?, ?, ?)",
                     (skill_id, fname, fdesc, ftags))
        summary = {"id": skill_id, "name": name, "short_description": short_description(description)}
        conn.execute(
            """
            insert into skill_summary_cache(id, summary_json, updated_at) values (?, ?, ?)
            on conflict(id) do update set summary_json = excluded.summary_json, updated_at = excluded.updated_at
            """,
            (skill_id, json.dumps(summary, ensure_ascii=False, separators=(",", ":")), now))
        vector, model = embedding
        if vector is not None:
            conn.execute(
                """
                insert into skill_embeddings(skill_id, vector, dim, model, content_hash, updated_at)
                values (?, ?, ?, ?, ?, ?)
                on conflict(skill_id) do update set vector = excluded.vector, dim = excluded.dim,
                    model = excluded.model, content_hash = excluded.content_hash, updated_at = excluded.updated_at
                """,
                (skill_id, encode(vector), int(vector.shape[0]), model, text_hash, now))

    def _archive_version(self, conn: sqlite3.Connection, skill_id: int, now: str) -> None:
        """Record the skill's current row as its version in skill_versions (once per version)."""
        conn.execute(
            """
            insert or ignore into skill_versions(skill_id, version, name, description, body,
                dependencies_json, auth_config_json, params_schema_json, changed_at)
            select id, version, name, description, body, dependencies_json, auth_config_json,
                params_schema_json, ?
            from skills
            where id = ?
            """,
            (now, skill_id))

    def _index_after_write(self, skill_id: int, vector: np.ndarray | None, model: str | None,
                           active: bool) -> None:
        with self._index_lock:
            for index in self._indexes.values():
                index.remove(skill_id)
            if active and vector is not None and model in self._indexes:
                self._indexes[model].upsert(skill_id, vector)

    # -- CRUD

    def create(self, name: Any, description: Any, body: Any, dependencies: Any = None,
               auth_config: Any = None, params_schema: Any = None, *, is_core: bool = False) -> dict[str, Any]:
        name = validate_name(name)
        description = validate_description(description)
        body = validate_body(body)
        deps = validate_dependencies(dependencies)
        auth = validate_auth_config(auth_config)
        schema = self._validate_params_schema(params_schema)
        fields, text = index_texts(name, description, body)
        vector, model = self._embed_one(text)
        now = _now()
        with self._connect() as conn, db.transaction(conn):
            row = conn.execute("select id, is_active, version from skills where name = ?", (name,)).fetchone()
            values = (description, body, json.dumps(deps), json.dumps(auth) if auth else None,
                      json.dumps(schema) if schema is not None else None)
            if row is not None and row["is_active"]:
                raise SkillExists(f"An active skill named {name!r} already exists (id {row['id']}).",
                                  skill_id=row["id"])
            if row is not None:
                skill_id, version, status = row["id"], row["version"] + 1, "reactivated"
                conn.execute(
                    """
                    update skills set description = ?, body = ?, dependencies_json = ?, auth_config_json = ?,
                        params_schema_json = ?, version = ?, is_active = 1, is_core = ?, updated_at = ?
                    where id = ?
                    """,
                    (*values, version, int(is_core), now, skill_id))
            else:
                version, status = 1, "created"
                skill_id = conn.execute(
                    """
                    insert into skills(name, description, body, dependencies_json, auth_config_json,
                        params_schema_json, version, is_active, is_core, created_at, updated_at)
                    values (?, ?, ?, ?, ?, ?, 1, 1, ?, ?, ?)
                    """,
                    (name, *values, int(is_core), now, now)).lastrowid
            self._archive_version(conn, skill_id, now)
            self._write_derived(conn, skill_id, name, description, fields, (vector, model),
                                content_hash(text), now)
        self._index_after_write(skill_id, vector, model, active=True)
        return {"id": skill_id, "name": name, "version": version, "status": status}

    def update(self, skill_id: Any, *, name: Any = None, description: Any = None, body: Any = None,
               dependencies: Any = None, auth_config: Any = None, params_schema: Any = None) -> dict[str, Any]:
        patch: dict[str, Any] = {}
        if name is not None:
            patch["name"] = validate_name(name)
        if description is not None:
            patch["description"] = validate_description(description)
        if body is not None:
            patch["body"] = validate_body(body)
        if dependencies is not None:
            patch["dependencies_json"] = json.dumps(validate_dependencies(dependencies))
        if auth_config is not None:
            auth = validate_auth_config(auth_config)
            patch["auth_config_json"] = json.dumps(auth) if auth else None
        if params_schema is not None:
            schema = self._validate_params_schema(params_schema)
            patch["params_schema_json"] = json.dumps(schema) if schema else None
        if not patch:
            raise NothingToUpdate("No field to update was given.")

        with self._connect() as conn:
            current = self._get_row(conn, skill_id)
            stored = conn.execute("select content_hash, model from skill_embeddings where skill_id = ?",
                                  (skill_id,)).fetchone()
        if "name" in patch and patch["name"] != current["name"] and current["is_core"]:
            raise CannotRenameCoreSkill(f"{current['name']!r} is a core skill and cannot be renamed.")
        merged = {k: patch.get(k, current[k]) for k in ("name", "description", "body")}
        _, text = index_texts(merged["name"], merged["description"], merged["body"])
        current_vector = (stored is not None and stored["content_hash"] == content_hash(text)
                          and stored["model"] == self.embedder.model_id)
        vector, model = (None, None) if current_vector else self._embed_one(text)
        now = _now()
        with self._connect() as conn, db.transaction(conn):
            row = self._get_row(conn, skill_id)
            if "name" in patch and patch["name"] != row["name"]:
                clash = conn.execute("select id from skills where name = ? and id != ?",
                                     (patch["name"], skill_id)).fetchone()
                if clash is not None:
                    raise SkillExists(f"Another skill (id {clash['id']}) is named {patch['name']!r}.",
                                      hint="Choose another name; deleted skills keep their names for reactivation.",
                                      skill_id=clash["id"])
            self._archive_version(conn, skill_id, now)
            assignments = ", ".join(f"{column} = ?" for column in patch)
            conn.execute(f"update skills set {assignments}, version = version + 1, updated_at = ? where id = ?",
                         (*patch.values(), now, skill_id))
            new = conn.execute("select * from skills where id = ?", (skill_id,)).fetchone()
            self._archive_version(conn, skill_id, now)
            final_fields, final_text = index_texts(new["name"], new["description"], new["body"])
            final_hash = content_hash(final_text)
            if vector is not None and content_hash(text) != final_hash:
                vector = None  # a concurrent update changed the text we embedded
            stale = vector is None and conn.execute(
                "select 1 from skill_embeddings where skill_id = ? and content_hash != ?",
                (skill_id, final_hash)).fetchone() is not None
            if stale:  # a missing vector is what the re-embed pass looks for
                conn.execute("delete from skill_embeddings where skill_id = ?", (skill_id,))
            self._write_derived(conn, skill_id, new["name"], new["description"], final_fields,
                                (vector, model), final_hash, now)
        if vector is not None or stale:
            self._index_after_write(skill_id, vector, model, active=True)
        return {"id": skill_id, "name": new["name"], "version": new["version"],
                "updated_fields": sorted(k.removesuffix("_json") for k in patch)}

    def delete(self, skill_id: Any) -> dict[str, Any]:
        now = _now()
        with self._connect() as conn, db.transaction(conn):
            row = self._get_row(conn, skill_id)
            if row["is_core"]:
                raise CannotDeleteCoreSkill(f"{row['name']!r} is a core skill and cannot be deleted.")
            self._archive_version(conn, skill_id, now)
            conn.execute("update skills set is_active = 0, updated_at = ? where id = ?", (now, skill_id))
            conn.execute("delete from skills_fts where rowid = ?", (skill_id,))
        self._index_after_write(skill_id, None, None, active=False)
        return {"id": skill_id, "name": row["name"], "version": row["version"], "deleted": True}

    def _validate_params_schema(self, schema: Any) -> dict[str, Any] | None:
        if schema is None or schema == {}:
            return None
        if not isinstance(schema, dict):
            raise InvalidParamsSchema(f"params_schema must be a JSON Schema object, not {type(schema).__name__}.")
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            where = _json_path(exc.path)
            raise InvalidParamsSchema(f"params_schema is not a valid JSON Schema at {where}: {exc.message}",
                                      path=where) from None
        return schema

    # -- reads

    def get_detail(self, skill_id: Any) -> dict[str, Any]:
        if self._runtime is not None:
            self._runtime.flush_history()
        with self._connect() as conn:
            row = self._get_row(conn, skill_id)
            versions = [r[0] for r in conn.execute(
                "select version from skill_versions where skill_id = ? order by version", (skill_id,))]
            runs = self._run_stats(conn, skill_id)
        detail = _row_to_detail(row)
        detail["versions"] = versions
        detail["runs"] = runs
        return detail

    def count_active(self) -> int:
        with self._connect() as conn:
            return conn.execute("select count(*) from skills where is_active = 1").fetchone()[0]

    def list_summary(self, limit: Any = None, cursor: Any = None) -> dict[str, Any]:
        limit = SUMMARY_DEFAULT_LIMIT if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SUMMARY_MAX_LIMIT:
            raise InvalidLimit(f"Invalid limit {limit!r}.")
        after = 0
        if cursor not in (None, ""):
            if not isinstance(cursor, str) or not cursor.isdigit():
                raise InvalidCursor(f"Invalid cursor {cursor!r}.")
            after = int(cursor)
        with self._connect() as conn:
            rows = conn.execute(
                """
                select s.id, c.summary_json
                from skills s
                join skill_summary_cache c on c.id = s.id
                where s.is_active = 1 and s.id > ?
                order by s.id
                limit ?
                """,
                (after, limit + 1)).fetchall()
            total = conn.execute("select count(*) from skills where is_active = 1").fetchone()[0]
        more = len(rows) > limit
        rows = rows[:limit]
        result: dict[str, Any] = {"skills": [json.loads(r[1]) for r in rows], "total": total,
                                  "next_cursor": str(rows[-1][0]) if more else None}
        if more:
            result["hint"] = "More skills exist: call skill_list_summary again with cursor=next_cursor, or use skill_search."
        return result

    # -- search

    def search(self, query: Any, mode: Any = "hybrid", top_k: Any = 10) -> dict[str, Any]:
        if not isinstance(query, str):
            raise InvalidQuery(f"The query must be a string, not {type(query).__name__}.")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"The query is {len(query)} characters long.")
        if mode not in SEARCH_MODES:
            raise InvalidMode(f"Unknown search mode {mode!r}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidTopK(f"Invalid top_k {top_k!r}.")
        keyword = self._keyword_scores(query) if mode != "vector" else {}
        vector: dict[int, float] = {}
        vector_used = False
        if mode != "keyword":
            found = self._vector_scores(query, VECTOR_CANDIDATES if mode == "hybrid" else top_k)
            if found is not None:
                vector, vector_used = found, True
        if mode == "keyword" or (mode == "hybrid" and not vector_used):
            scores = keyword
        elif mode == "vector":
            scores = {i: max(0.0, s) for i, s in vector.items()}
        else:
            scores = self._fuse(keyword, vector)
        results = self._rank(scores, top_k)
        out: dict[str, Any] = {"query": query, "mode": mode, "results": results}
        if mode != "keyword" and not vector_used:
            out["note"] = "The query could not be embedded; results are keyword matches only."
        return out

    def _keyword_scores(self, query: str) -> dict[int, float]:
        terms = fts_terms(query)
        if not terms:
            return {}
        match = " OR ".join(terms)
        with self._connect() as conn:
            rows = conn.execute(
                """
                select rowid, bm25(skills_fts, 1.0, 1.0, 0.5) as rank
                from skills_fts
                where skills_fts match ?
                order by rank
                limit ?
                """,
                (match, KEYWORD_CANDIDATES)).fetchall()
        if not rows:
            return {}
        best = -rows[0][1]
        if best <= 0:
            return {r[0]: 1.0 for r in rows}
        return {r[0]: max(0.0, -r[1]) / best for r in rows}

    def _query_vector(self, query: str) -> tuple[np.ndarray, str] | None:
        cached = self._query_cache.get(query)
        if cached is not None:
            return cached
        try:
            vectors, model = embed_with_model(self.embedder, [query])
        except Exception as exc:
            log.warning("could not embed the query (%s)", type(exc).__name__)
            return None
        item = (vectors[0], model)
        if model == self.embedder.model_id:  # don't cache fallback vectors past an outage
            self._query_cache.put(query, item)
        return item

    def _index(self, model: str, dim: int) -> VectorIndex:
        """The in-memory index of `model`'s vectors, loaded from the database on first use."""
        with self._index_lock:
            index = self._indexes.get(model)
            if index is not None and index.dim == dim:
                return index
            index = VectorIndex(model, dim)
            with self._connect() as conn:
                for skill_id, blob in conn.execute(
                        """
                        select e.skill_id, e.vector
                        from skill_embeddings e
                        join skills s on s.id = e.skill_id
                        where s.is_active = 1 and e.model = ? and e.dim = ?
                        """,
                        (model, dim)):
                    index.upsert(skill_id, decode(blob))
            self._indexes[model] = index
            return index

    def _vector_scores(self, query: str, candidates: int) -> dict[int, float] | None:
        """Cosine similarity of the best `candidates` skills; None when the query can't be embedded.

        In hybrid mode the scores are min-max normalised over every skill of the model.
        """
        found = self._query_vector(query)
        if found is None:
            return None
        qvec, model = found
        if not np.any(qvec):
            return {}
        ids, sims = self._index(model, int(qvec.shape[0])).similarities(qvec)
        if len(ids) == 0:
            return {}
        take = min(candidates, len(ids))
        top = np.argpartition(-sims, take - 1)[:take]
        if candidates == VECTOR_CANDIDATES:
            lo, hi = float(sims.min()), float(sims.max())
            span = hi - lo if hi > lo else 1.0
            return {int(ids[i]): (float(sims[i]) - lo) / span for i in top}
        return {int(ids[i]): float(sims[i]) for i in top}

    @staticmethod
    def _fuse(keyword: dict[int, float], vector: dict[int, float]) -> dict[int, float]:
        ids = set(keyword) | set(vector)
        return {i: VECTOR_WEIGHT * vector.get(i, 0.0) + (1 - VECTOR_WEIGHT) * keyword.get(i, 0.0) for i in ids}

    def _rank(self, scores: dict[int, float], top_k: int) -> list[dict[str, Any]]:
        """The `top_k` best of `scores` (ties by id) as summary records with their score."""
        if not scores:
            return []
        adjusted = dict(scores)
        for i in self._core_ids & adjusted.keys():
            adjusted[i] *= CORE_SCORE_FACTOR
        # Deleted skills are already out of the FTS table and the vector index; fetching a
        # few spare rows covers one deleted between the index lookup and this query.
        best = heapq.nsmallest(top_k + 5, adjusted.items(), key=lambda item: (-item[1], item[0]))
        ordered = [i for i, _ in best]
        marks = ",".join("?" * len(ordered))
        with self._connect() as conn:
            found = dict(conn.execute(
                f"""
                select s.id, c.summary_json
                from skills s
                join skill_summary_cache c on c.id = s.id
                where s.is_active = 1 and s.id in ({marks})
                """,
                ordered).fetchall())
        results = []
        for i in ordered:
            if i in found and len(results) < top_k:
                item = json.loads(found[i])
                item["score"] = round(min(1.0, max(0.0, adjusted[i])), 4)
                results.append(item)
        return results

    # -- embeddings upkeep

    def stale_embeddings(self, limit: int | None = None) -> list[int]:
        """Active skills with no vector of the active model (missing, or another model's).

        Writes keep vectors in step with the text, deleting a vector they could not
        refresh, so this needs no text comparison and stays one indexed query.
        """
        with self._connect() as conn:
            rows = conn.execute(
                """
                select s.id
                from skills s
                left join skill_embeddings e on e.skill_id = s.id
                where s.is_active = 1 and (e.skill_id is null or e.model != ?)
                order by s.id
                limit ?
                """,
                (self.embedder.model_id, -1 if limit is None else limit)).fetchall()
        return [r[0] for r in rows]

    def reembed_stale(self, batch_size: int = 64,
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Re-embed every stale vector with the active model, in batches; return how many were done.

        Searches keep working meanwhile: each batch commits on its own, and vector search
        uses the vectors of the active model that exist so far.
        """
        stale = self.stale_embeddings()
        done = 0
        for start in range(0, len(stale), batch_size):
            chunk = stale[start:start + batch_size]
            with self._connect() as conn:
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"select id, name, description, body from skills where id in ({marks})",
                                    chunk).fetchall()
            texts = [index_texts(r["name"], r["description"], r["body"])[1] for r in rows]
            vectors, model = embed_with_model(self.embedder, texts)
            if model != self.embedder.model_id:
                log.warning("re-embedding paused: the active model is not answering")
                break
            now = _now()
            with self._connect() as conn, db.transaction(conn):
                for row, text, vector in zip(rows, texts, vectors, strict=True):
                    conn.execute(
                        """
                        insert into skill_embeddings(skill_id, vector, dim, model, content_hash, updated_at)
                        values (?, ?, ?, ?, ?, ?)
                        on conflict(skill_id) do update set vector = excluded.vector, dim = excluded.dim,
                            model = excluded.model, content_hash = excluded.content_hash,
                            updated_at = excluded.updated_at
                        """,
                        (row["id"], encode(vector), int(vector.shape[0]), model, content_hash(text), now))
            for row, vector in zip(rows, vectors, strict=True):
                self._index_after_write(row["id"], vector, model, active=True)
            done += len(rows)
            if progress is not None:
                progress(done, len(stale))
        return done

    def reembed_in_background(self) -> threading.Thread | None:
        """Start re-embedding stale vectors in a daemon thread, unless a pass is already running."""
        if not self._reembed_lock.acquire(blocking=False):
            return None

        def work() -> None:
            try:
                count = self.reembed_stale(progress=lambda done, total: log.info(
                    "re-embedded %d/%d skills with %s", done, total, self.embedder.model_id))
                if count:
                    log.info("re-embedding finished: %d skills", count)
            except Exception:
                log.exception("re-embedding failed; vector search covers the skills embedded so far")
            finally:
                self._reembed_lock.release()

        thread = threading.Thread(target=work, name="selfmcp-reembed", daemon=True)
        thread.start()
        return thread

    # -- core skills

    def seed_core_skills(self) -> None:
        """Create the core skills if missing; reactivate them if found deleted."""
        for spec in core_skills.CORE_SKILLS:
            with self._connect() as conn:
                row = conn.execute("select id, is_active, is_core from skills where name = ?",
                                   (spec["name"],)).fetchone()
            if row is None or not row["is_active"]:
                self.create(spec["name"], spec["description"], spec["body"], is_core=True)
            elif not row["is_core"]:
                with self._connect() as conn, db.transaction(conn):
                    conn.execute("update skills set is_core = 1 where id = ?", (row["id"],))
        with self._connect() as conn:
            self._core_ids = {r[0] for r in conn.execute("select id from skills where is_core = 1")}

    # -- credentials and execution

    def _replit_secrets_url(self) -> str | None:
        owner, slug = self.environ.get("REPL_OWNER"), self.environ.get("REPL_SLUG")
        if owner and slug:
            return f"https://replit.com/@{urllib.parse.quote(owner)}/{urllib.parse.quote(slug)}#secrets"
        return None

    def missing_env_vars(self, auth_config: Mapping[str, Any] | None) -> list[str]:
        return [n for n in required_env_vars(auth_config) if not self.environ.get(n)]

    def auth_url(self, skill_id: Any) -> dict[str, Any]:
        with self._connect() as conn:
            row = self._get_row(conn, skill_id)
        auth = _loads(row["auth_config_json"], None)
        if not auth:
            raise NoAuthConfig(f"Skill {row['name']!r} declares no auth_config.")
        missing = self.missing_env_vars(auth)
        replit = self._replit_secrets_url()
        where = f"add it in the Replit Secrets panel ({replit}) and restart" if replit else \
            "set it in the server's environment (or the env block of your MCP client config) and restart the server"
        out: dict[str, Any] = {"skill_id": row["id"], "name": row["name"], "type": auth["type"],
                               "env_vars": required_env_vars(auth), "missing": missing,
                               "ready": not missing}
        if auth["type"] == "api_key":
            extra = auth.get("instructions") or "Get an API key from the service's developer console."
            out["instructions"] = f"{extra} Then {where}: {auth['env_var']}=<your key>."
        else:
            client_id = self.environ.get(auth["client_id_env"])
            if client_id:
                query = {"client_id": client_id, "response_type": "code",
                         "scope": " ".join(auth.get("scopes", [])), "state": secrets.token_urlsafe(16)}
                if auth.get("redirect_uri"):
                    query["redirect_uri"] = auth["redirect_uri"]
                if auth.get("extra_params") and isinstance(auth["extra_params"], dict):
                    query.update({str(k): str(v) for k, v in auth["extra_params"].items()})
                sep = "&" if urllib.parse.urlsplit(auth["auth_url"]).query else "?"
                out["auth_url"] = auth["auth_url"] + sep + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
                out["state"] = query["state"]
                out["instructions"] = (
                    "Open auth_url, approve access, and exchange the returned code at "
                    f"{auth.get('token_url', 'the token endpoint')}. Then {where}"
                    + (f": {auth['token_env']}=<access token>." if auth.get("token_env") else "."))
            else:
                out["auth_url"] = None
                out["instructions"] = (f"Register an OAuth client with the provider, then {where}: "
                                       f"{auth['client_id_env']}=<client id>"
                                       + (f" and {auth['client_secret_env']}=<client secret>"
                                          if auth.get("client_secret_env") else "")
                                       + ". Call skill_auth_url again for the authorization link.")
        if replit:
            out["replit_secrets_url"] = replit
        return out

    _runtime: _ExecutionRuntime | None = None

    def configure_execution(self, config: ExecutionConfig | None = None) -> dict[str, Any]:
        """Set how skills run (limits, sandbox, dependency environments); return what was settled.

        Raises ExecutionConfigError for a setting that cannot work (SELFMCP_SANDBOX=bwrap without bwrap).
        """
        try:
            self._runtime = _ExecutionRuntime(config or ExecutionConfig(), self.db_path, self.environ)
        except (RuntimeError, ValueError) as exc:
            raise ExecutionConfigError(str(exc)) from None
        return self._runtime.describe()

    def execution_info(self) -> dict[str, Any]:
        """How skills run (sandbox, limits, environments), for the start-up log."""
        if self._runtime is None:
            self.configure_execution()
        assert self._runtime is not None
        return self._runtime.describe()

    async def _execution(self) -> _ExecutionRuntime:
        if self._runtime is None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.configure_execution)
        assert self._runtime is not None
        return self._runtime

    def prepare_execution(self, skill_id: Any, params: Any, timeout: Any) -> PreparedRun:
        """Check everything that can be checked before a run: timeout, params, credentials, code, dependencies."""
        timeout_s = validate_timeout(timeout)
        params = validate_params(params)
        params_json = json.dumps(params, ensure_ascii=False)
        if len(params_json.encode("utf-8")) > MAX_PARAMS_BYTES:
            raise InvalidParams(f"params are {len(params_json.encode())} bytes as JSON; the limit is 1 MiB.")
        with self._connect() as conn:
            row = self._get_row(conn, skill_id)
        schema = _loads(row["params_schema_json"], None)
        if schema:
            _check_params(schema, params, row["id"])
        auth = _loads(row["auth_config_json"], None)
        missing = self.missing_env_vars(auth)
        if missing:
            hint = f"Call skill_auth_url(skill_id={row['id']}) for setup instructions."
            replit = self._replit_secrets_url()
            if replit:
                hint += f" On Replit, add the missing vars at: {replit}"
            raise MissingCredentials(f"Skill {row['name']!r} needs {', '.join(missing)}, which "
                                     f"{'is' if len(missing) == 1 else 'are'} not set on the server.",
                                     hint=hint, missing=missing)
        code = skillmd.parse_body(row["body"]).code
        if code is None:
            raise NotExecutable(f"Skill {row['name']!r} is a SKILL.md with no ```python block to run.")
        try:
            requirements = depenv.normalise_requirements(_loads(row["dependencies_json"], []))
        except depenv.InvalidRequirement as exc:
            raise InvalidDependency(
                f"Skill {row['name']!r} cannot run: {exc}",
                hint=(f"Fix it with skill_update(skill_id={row['id']}, dependencies=[...]): package names with "
                      "optional versions such as 'requests>=2'; installer options, paths and URLs are refused."),
                requirement=exc.requirement) from None
        return PreparedRun(row, code, params_json, timeout_s, requirements, tuple(required_env_vars(auth)))

    def skill_environment(self, prepared: PreparedRun, mode: str) -> dict[str, str]:
        """The environment a run gets: the server's whole environment, or only the declared part."""
        if mode == "inherit":
            return {k: v for k, v in self.environ.items() if k not in SERVER_ONLY_ENV}
        names = (*DECLARED_BASELINE_ENV, *prepared.auth_vars)
        return {n: self.environ[n] for n in names if n in self.environ and n not in SERVER_ONLY_ENV}

    async def execute(self, skill_id: Any, params: Any = None, timeout: Any = DEFAULT_TIMEOUT_S, *,
                      progress: Progress | None = None) -> dict[str, Any]:
        """Run a skill; install its dependencies first if their environment is not built yet.

        `progress(done, total, message)` hears about a dependency installation. Every run is
        recorded in skill_runs (by a writer thread, off the reply's path; reads of the history
        wait for it); secrets are redacted from everything returned.
        """
        import anyio
        import anyio.to_thread

        runtime = await self._execution()
        redactor = runtime.redactor
        try:
            prepared = await anyio.to_thread.run_sync(self.prepare_execution, skill_id, params, timeout)
        except SkillError as exc:  # its message may quote params, which may hold a secret
            raise _redacted(exc, redactor) from None
        row = prepared.row
        started_at, started = _now(), time.perf_counter()

        def record(**fields: Any) -> None:
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            runtime.record_later(self.record_run, row["id"], row["version"], started_at,
                                 fields.pop("duration_ms", elapsed), **fields)

        try:
            python, read_only, environment = self.python or sys.executable, (), None
            if prepared.requirements:
                try:
                    built = await runtime.envs.ensure(prepared.requirements, progress)
                except depenv.InstallFailed as exc:
                    record(error=DependencyInstallFailed.code)
                    raise DependencyInstallFailed(
                        redactor.redact(f"Installing {', '.join(prepared.requirements)} failed: {exc}"),
                        installer_tail=[redactor.redact(line) for line in exc.tail],
                        requirements=list(prepared.requirements)) from None
                python, read_only = built.python, (str(built.path),)
                environment = {"requirements": list(built.requirements), "key": built.key,
                               "installed_now": built.built_now}
                if built.built_now:
                    environment["install_ms"] = built.build_ms
            result = await runtime.runner.run(
                prepared.code, prepared.params_json, env=self.skill_environment(prepared, runtime.config.skill_env),
                timeout_s=prepared.timeout_s, python=python, read_only=read_only)
        except anyio.get_cancelled_exc_class():
            record(cancelled=True)
            raise
        record(duration_ms=result.duration_ms, exit_code=result.exit_code, timed_out=result.timed_out,
               stdout_bytes=result.stdout_bytes, stderr_bytes=result.stderr_bytes)
        out: dict[str, Any] = {
            "skill_id": row["id"], "name": row["name"], "version": row["version"],
            "stdout": redactor.redact(result.stdout, truncated=result.stdout_truncated),
            "stderr": redactor.redact(result.stderr, truncated=result.stderr_truncated),
            "exit_code": result.exit_code, "timed_out": result.timed_out, "duration_ms": result.duration_ms,
            "stdout_bytes": result.stdout_bytes, "stderr_bytes": result.stderr_bytes,
            "stdout_truncated": result.stdout_truncated, "stderr_truncated": result.stderr_truncated,
            "sandbox": result.sandbox,
        }
        if result.queued_ms >= 1:
            out["queued_ms"] = result.queued_ms
        if environment is not None:
            out["environment"] = environment
        if result.stdout_truncated or result.stderr_truncated:
            out["note"] = (f"Output beyond {runtime.runner.limits.max_output_bytes} bytes per stream was dropped; "
                           "stdout_bytes and stderr_bytes say how much the skill wrote.")
        return out

    # -- run history

    def record_run(self, skill_id: int, version: int, started_at: str, duration_ms: float, *,
                   exit_code: int | None = None, timed_out: bool = False, cancelled: bool = False,
                   stdout_bytes: int = 0, stderr_bytes: int = 0, error: str | None = None) -> None:
        """Add a run to skill_runs, keeping only the newest RUN_HISTORY_PER_SKILL of the skill."""
        with self._connect() as conn, db.transaction(conn):
            conn.execute(
                """
                insert into skill_runs(skill_id, version, started_at, duration_ms, exit_code, timed_out,
                    cancelled, stdout_bytes, stderr_bytes, error)
                values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (skill_id, version, started_at, duration_ms, exit_code, int(timed_out), int(cancelled),
                 stdout_bytes, stderr_bytes, error))
            conn.execute(
                """
                delete from skill_runs
                where skill_id = ? and id <= (
                    select id from skill_runs where skill_id = ? order by id desc limit 1 offset ?)
                """,
                (skill_id, skill_id, RUN_HISTORY_PER_SKILL))

    @staticmethod
    def _run_stats(conn: sqlite3.Connection, skill_id: int) -> dict[str, Any]:
        rows = conn.execute(
            """
            select started_at, duration_ms, exit_code, timed_out, cancelled, error
            from skill_runs
            where skill_id = ?
            order by id desc
            """,
            (skill_id,)).fetchall()
        if not rows:
            return {"count": 0, "success_rate": None, "last_run_at": None, "last_exit_code": None,
                    "median_duration_ms": None}
        ok = sum(1 for r in rows if r["exit_code"] == 0 and not r["timed_out"] and not r["cancelled"]
                 and r["error"] is None)
        return {"count": len(rows), "success_rate": round(ok / len(rows), 3), "last_run_at": rows[0]["started_at"],
                "last_exit_code": rows[0]["exit_code"],
                "median_duration_ms": round(statistics.median(r["duration_ms"] for r in rows), 1)}


# ------------------------------------------------------------------------------ execution

RUN_HISTORY_PER_SKILL = 100
SKILL_ENV_MODES = ("inherit", "declared")
# What a run gets under SELFMCP_SKILL_ENV=declared, besides the variables its auth_config names.
DECLARED_BASELINE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
                         "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# The server's own credentials: a skill holding them could sign in as the owner, so no run
# ever gets them, whatever SELFMCP_SKILL_ENV says.
SERVER_ONLY_ENV = frozenset({"SELFMCP_AUTH_TOKEN", "SELFMCP_OWNER_PASSWORD"})

Progress = Callable[[float, float | None, str], Awaitable[None]]


class ExecutionConfigError(ValueError):
    """An execution setting that cannot work here (the server should not start with it)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """How skill_execute runs code; server.Settings fills it from the SELFMCP_* variables."""

    env_dir: Path | None = None  # None: "envs" beside the database
    memory_mb: int = 1024
    max_output_bytes: int = 1 << 20
    concurrency: int = 4
    sandbox: str = "auto"  # auto | bwrap | none
    sandbox_network: bool = True
    skill_env: str = "inherit"  # inherit | declared


@dataclass(frozen=True)
class PreparedRun:
    row: sqlite3.Row
    code: str
    params_json: str
    timeout_s: float
    requirements: tuple[str, ...]
    auth_vars: tuple[str, ...]


class _ExecutionRuntime:
    """What runs need across calls: the runner (and its concurrency slots), environments, the redactor."""

    def __init__(self, config: ExecutionConfig, db_path: str | os.PathLike[str], environ: Mapping[str, str]) -> None:
        if config.skill_env not in SKILL_ENV_MODES:
            raise ValueError(f"Unknown skill environment mode {config.skill_env!r}; use inherit or declared.")
        self.config = config
        db_dir = Path(os.path.abspath(db_path)).parent
        hidden = [db_dir, Path(__file__).resolve().parent, Path.cwd()]
        self.sandbox = executor.resolve_sandbox(config.sandbox, network=config.sandbox_network, hidden=hidden)
        self.runner = executor.Runner(
            limits=executor.Limits(memory_mb=config.memory_mb, max_output_bytes=config.max_output_bytes),
            sandbox=self.sandbox, concurrency=config.concurrency)
        self.envs = depenv.EnvCache(config.env_dir or db_dir / "envs", environ=environ)
        self.redactor = redact.Redactor.from_environ(environ)
        # One writer for skill_runs, so records land in order and a flush is one no-op task.
        self._history = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfmcp-runs")

    def record_later(self, write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Queue a run record; the caller does not wait for the database."""
        self._history.submit(_log_failure, write, *args, **kwargs)

    def flush_history(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued run record is written."""
        self._history.submit(lambda: None).result(timeout_s)

    def describe(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox.mode, "sandbox_note": self.sandbox.note,
                "sandbox_network": self.sandbox.network, "skill_env": self.config.skill_env,
                "memory_mb": self.config.memory_mb, "max_output_bytes": self.config.max_output_bytes,
                "concurrency": self.config.concurrency, "env_dir": str(self.envs.root),
                "installer": self.envs.installer, "redacted_variables": len(self.redactor.names)}


def _redacted(exc: SkillError, redactor: redact.Redactor) -> SkillError:
    """`exc` with secret values hidden in its message, hint and details."""
    if redactor:
        exc.args = (redactor.redact(str(exc)),)
        exc.hint = redactor.redact(exc.hint)
        exc.details = redactor.redact_obj(exc.details)
    return exc


def _log_failure(write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    try:
        write(*args, **kwargs)
    except sqlite3.Error:
        log.warning("could not record a skill run", exc_info=True)


def _json_path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _check_params(schema: dict[str, Any], params: dict[str, Any], skill_id: int) -> None:
    """Raise InvalidParams, naming the offending field, when `params` do not fit `schema`."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    error = best_match(validator_for(schema)(schema).iter_errors(params))
    if error is None:
        return
    parts = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        absent = [k for k in error.validator_value if k not in error.instance]
        parts += absent[:1]
    path = _json_path(parts)
    raise InvalidParams(f"params do not match the skill's params_schema at {path}: {error.message}",
                        hint=f"Read params_schema with skill_get_detail(skill_id={skill_id}) and fix {path}.",
                        path=path, validator=str(error.validator))
