"""The skill registry's use cases in plain Python: errors, validation, and one method per unit of work.

Usable from a REPL with no MCP in sight:

    >>> reg = Registry("skills.db", HashEmbedder())
    >>> reg.create("hello", "Say hello.", "print('hi')")["id"]
    1

Below it (imported only from here and from server.py) the `selfmcp` package holds the rooms:
the store (every SQL statement), search (indexes, scoring, re-embedding), the runtime (runs,
history), SKILL.md parsing, credentials, redaction and the remote side. Every write happens in one
transaction: the skill row, its version row, its FTS row, its embedding and its summary row change
together or not at all; embeddings are computed before it starts, so no model call holds the lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from embeddings import Embedder
from selfmcp import core_skills, credentials, depenv, folders, history, skillmd
from selfmcp.secret_links import SecretLinks
from selfmcp.errors import (CannotDeleteCoreSkill, CannotRenameCoreSkill, DependencyInstallFailed, InvalidArgument,
                            InvalidAuthConfig, InvalidBody, InvalidCode, InvalidCursor, InvalidDependency,
                            InvalidDescription, InvalidLimit, InvalidMode, InvalidName, InvalidParams,
                            InvalidParamsSchema, InvalidQuery, InvalidTimeout, InvalidTopK, MissingCredentials,
                            NoAuthConfig, NotExecutable, NothingToUpdate, SkillError, SkillExists, SkillNotFound,
                            VersionConflict as VersionConflict, VersionNotFound as VersionNotFound)
from selfmcp.runtime import (RUN_HISTORY_PER_SKILL as RUN_HISTORY_PER_SKILL, SKILL_ENV_MODES as SKILL_ENV_MODES,
                             ExecutionConfig, ExecutionConfigError, PreparedRun, Progress, Runtime, prepare,
                             run_stats)
from selfmcp.schemas import validated_schema as validate_params_schema
from selfmcp.search import SEARCH_MODES, UPDATE_ATTEMPTS, Search, TextMoved, split_words as split_words
from selfmcp.store import SkillStore, Statements, now_text
from selfmcp.vault import Vault

__all__ = ["CannotDeleteCoreSkill", "CannotRenameCoreSkill", "DependencyInstallFailed", "ExecutionConfig",
           "ExecutionConfigError", "InvalidArgument", "InvalidAuthConfig", "InvalidBody", "InvalidCode",
           "InvalidCursor", "InvalidDependency", "InvalidDescription", "InvalidLimit", "InvalidMode", "InvalidName",
           "InvalidParams", "InvalidParamsSchema", "InvalidQuery", "InvalidTimeout", "InvalidTopK",
           "MissingCredentials", "NoAuthConfig", "NotExecutable", "NothingToUpdate", "Registry", "SkillError",
           "SkillExists", "SkillNotFound", "VersionConflict", "VersionNotFound"]

log = logging.getLogger("selfmcp.skills")

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # fullmatch: `$` would let "weather\n" through
_CURSOR_RE = re.compile(r"[0-9]{1,19}")  # not str.isdigit(): it accepts '²' and '①', which int() refuses
MAX_BODY_BYTES = 256 * 1024
MAX_DESCRIPTION_BYTES = 4 * 1024
MAX_PARAMS_BYTES = 1024 * 1024
MAX_QUERY_CHARS = 4096
MAX_DEPENDENCIES = 64
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 600
DEFAULT_TIMEOUT_S = 30
MAX_TOP_K = 50
MIN_SKILL_ID, MAX_SKILL_ID = -(2**63), 2**63 - 1  # SQLite's INTEGER range: no row has a larger id
SUMMARY_DEFAULT_LIMIT = 100
SUMMARY_MAX_LIMIT = 1000


# -------------------------------------------------------------------------- validation

def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name := skillmd.nfc(name)):
        raise InvalidName(f"Invalid skill name {name!r}.")
    return name


def validate_description(description: Any) -> str:
    if not isinstance(description, str) or not description.strip():
        raise InvalidDescription("The description is empty.")
    if len(description.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise InvalidDescription(f"The description is {len(description.encode())} bytes; the limit is 4 KiB.")
    return description


def validate_body(body: Any) -> skillmd.ParsedBody:
    """The parsed body (frontmatter and code), after checking its size and that its code compiles."""
    if not isinstance(body, str) or not body.strip():
        raise InvalidBody("The body is empty.")
    size = len(body.encode("utf-8"))
    if size > MAX_BODY_BYTES:
        raise InvalidBody(f"The body is {size} bytes; the limit is 256 KiB.")
    parsed = skillmd.parse_body(body)
    if parsed.code is not None:
        try:
            compile(parsed.code, "<skill>", "exec")
        except SyntaxError as exc:
            raise InvalidCode(f"Python syntax error at line {exc.lineno}: {exc.msg}.", line=exc.lineno) from None
        except (ValueError, RecursionError, MemoryError) as exc:  # a NUL byte; nesting that overflows the compiler
            raise InvalidCode(f"The code cannot be compiled: {exc or 'it is nested too deeply'}.") from None
    return parsed


def validate_dependencies(dependencies: Any) -> list[str]:
    """The requirements in canonical form (what is stored, and what a run installs)."""
    if dependencies is None:
        return []
    if not isinstance(dependencies, list) or len(dependencies) > MAX_DEPENDENCIES:
        raise InvalidDependency(f"dependencies must be a list of at most {MAX_DEPENDENCIES} strings.")
    for dep in dependencies:
        if not isinstance(dep, str) or not dep.strip():
            raise InvalidDependency(f"Invalid requirement {dep!r}.")
    try:
        return list(depenv.normalise_requirements(dependencies))
    except depenv.InvalidRequirement as exc:
        raise InvalidDependency(str(exc), requirement=exc.requirement) from None


def validate_auth_config(auth_config: Any) -> dict[str, Any] | None:
    if auth_config is None or auth_config == {}:
        return None
    _json_text(auth_config, InvalidAuthConfig, "auth_config")
    problem = credentials.auth_config_problem(auth_config)
    if problem:
        raise InvalidAuthConfig(problem)
    return auth_config


def validate_params(params: Any) -> str:
    """`params` as the JSON text a run receives."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParams(f"params must be a JSON object, not {type(params).__name__}.")
    text = _json_text(params, InvalidParams, "params")
    if len(text.encode("utf-8")) > MAX_PARAMS_BYTES:
        raise InvalidParams(f"params are {len(text.encode())} bytes as JSON; the limit is 1 MiB.")
    return text


def validate_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            MIN_TIMEOUT_S <= timeout <= MAX_TIMEOUT_S):
        raise InvalidTimeout(f"Invalid timeout {timeout!r}.")
    return float(timeout)


def _json_text(value: Any, error: type[SkillError], what: str) -> str:
    """`value` as JSON text; `error` when it nests past the recursion limit or holds an integer over 4300 digits."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (RecursionError, ValueError):
        raise error(f"{what} is nested too deeply or holds a number too large to store.") from None


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value else None


# ---------------------------------------------------------------------------- registry

class Registry:
    """All registry operations over one SQLite file: each public method is one unit of work."""

    def __init__(self, db_path: str | os.PathLike[str], embedder: Embedder, *,
                 environ: Mapping[str, str] | None = None, python: str | None = None,
                 execution: ExecutionConfig | None = None, secret_key: str | None = None) -> None:
        self.db_path = db_path
        self.environ = os.environ if environ is None else environ
        self.store = SkillStore(db_path)
        self.vault = Vault(self.store, secret_key=secret_key)
        self.links = SecretLinks()  # server.py gives it the base URL when it serves the secrets page
        self.search_index = Search(self.store, embedder)
        self._python = python
        self._execution = execution or ExecutionConfig()
        self._runtime: Runtime | None = None
        self._runtime_lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        return self.search_index.embedder

    @staticmethod
    def _active_row(tx: Statements, skill_id: Any) -> Any:
        if isinstance(skill_id, bool) or not isinstance(skill_id, int) or not MIN_SKILL_ID <= skill_id <= MAX_SKILL_ID:
            raise InvalidArgument(f"Invalid skill id {skill_id!r}; ids are integers of at most 64 bits.",
                                  hint="Pass the numeric id from skill_list_summary or skill_search.")
        row = tx.skill(skill_id)
        if row is None or not row["is_active"]:
            raise SkillNotFound(f"No active skill with id {skill_id}.")
        return row

    # -- writes

    def create(self, name: Any, description: Any, body: Any, dependencies: Any = None, auth_config: Any = None,
               params_schema: Any = None, *, files: Any = None, is_core: bool = False) -> dict[str, Any]:
        name = validate_name(name)
        description = validate_description(description)
        parsed = validate_body(body)
        file_map = folders.validate_folder(files, body)
        values = (description, body, json.dumps(validate_dependencies(dependencies)),
                  _json_or_none(validate_auth_config(auth_config)), _json_or_none(validate_params_schema(params_schema)))
        entry = self.search_index.prepare(name, description, parsed.frontmatter)
        now = now_text()
        with self.store.write() as tx:
            row = tx.skill_by_name(name)
            if row is not None and row["is_active"]:
                raise SkillExists(f"An active skill named {row['name']!r} already exists (id {row['id']}); "
                                  "names are unique without regard to case.", skill_id=row["id"])
            if row is not None:
                skill_id, version, status = row["id"], row["version"] + 1, "reactivated"
                tx.reactivate_skill(skill_id, name, values, version=version, is_core=is_core, now=now)
            else:
                version, status = 1, "created"
                skill_id = tx.insert_skill(name, values, is_core=is_core, now=now)
            folders.write_files(tx, name, skill_id, file_map)
            tx.record_version(skill_id, now=now, change=status)
            self.search_index.write(tx, skill_id, name, description, entry, now=now)
        self.search_index.after_commit(skill_id, entry.vector, entry.model, active=True)
        return {"id": skill_id, "name": name, "version": version, "status": status}

    def update(self, skill_id: Any, *, name: Any = None, description: Any = None, body: Any = None, files: Any = None,
               dependencies: Any = None, auth_config: Any = None, params_schema: Any = None,
               restore_version: Any = None, expected_version: Any = None) -> dict[str, Any]:
        patch: dict[str, Any] = {}
        parsed = None
        if name is not None:
            patch["name"] = validate_name(name)
        if description is not None:
            patch["description"] = validate_description(description)
        if body is not None:
            parsed = validate_body(body)
            patch["body"] = body
        if dependencies is not None:
            patch["dependencies_json"] = json.dumps(validate_dependencies(dependencies))
        if auth_config is not None:
            patch["auth_config_json"] = _json_or_none(validate_auth_config(auth_config))
        if params_schema is not None:
            patch["params_schema_json"] = _json_or_none(validate_params_schema(params_schema))
        expected_version = history.check_update(bool(patch) or files is not None, restore_version, expected_version)
        if not patch and files is None and restore_version is None:
            raise NothingToUpdate("No field to update was given.")

        with self.store.read() as tx:
            current = self._active_row(tx, skill_id)
            patch, parsed = history.prepare_update(tx, current, patch, parsed, restore_version, expected_version)
        if "name" in patch and patch["name"] != current["name"] and current["is_core"]:
            raise CannotRenameCoreSkill(f"{current['name']!r} is a core skill and cannot be renamed.")
        new_files = folders.SkillFolders(self.store).merged_files(current, files, body, patch)
        texts = (patch.get("name", current["name"]), patch.get("description", current["description"]),
                 (parsed or skillmd.parse_body(current["body"])).frontmatter)
        for attempt in range(UPDATE_ATTEMPTS):  # again when a concurrent update moved the text under us
            entry = self.search_index.prepare_unless_current(skill_id, *texts)
            now = now_text()
            try:
                with self.store.write() as tx:
                    row = self._active_row(tx, skill_id)
                    history.check_expected(row, expected_version)
                    if "name" in patch and patch["name"] != row["name"]:
                        clash = tx.other_skill_named(patch["name"], skill_id)
                        if clash is not None:
                            raise SkillExists(f"Another skill (id {clash['id']}) is named {clash['name']!r}.",
                                              hint="Choose another name (case does not count); deleted skills "
                                                   "keep theirs.", skill_id=clash["id"])
                    changed = history.changed_fields(row, patch, restored=restore_version is not None)
                    tx.archive_version(skill_id, now=now)  # a database from before every version was recorded
                    tx.patch_skill(skill_id, patch, now=now)
                    folders.write_files(tx, patch.get("name"), skill_id, new_files)
                    new = tx.skill(skill_id)
                    tx.record_version(skill_id, now=now, restored_from=restore_version)
                    texts = (new["name"], new["description"], skillmd.parse_body(new["body"]).frontmatter)
                    entry, stale, moved = self.search_index.settle(tx, skill_id, entry, texts,
                                                                   retry=attempt + 1 < UPDATE_ATTEMPTS)
                    self.search_index.write(tx, skill_id, new["name"], new["description"], entry, now=now)
            except TextMoved:
                continue
            break
        if entry.vector is not None or stale:
            self.search_index.after_commit(skill_id, entry.vector, entry.model, active=True)
        if stale and moved:  # the text kept moving under us: the upkeep embeds it now, not at the next restart
            self.search_index.reembed_in_background()
        return {"id": skill_id, "name": new["name"], "version": new["version"], "previous_version": row["version"],
                "updated_fields": changed, **({"restored_from": restore_version} if restore_version else {})}

    def delete(self, skill_id: Any) -> dict[str, Any]:
        now = now_text()
        with self.store.write() as tx:
            row = self._active_row(tx, skill_id)
            if row["is_core"]:
                raise CannotDeleteCoreSkill(f"{row['name']!r} is a core skill and cannot be deleted.")
            tx.archive_version(skill_id, now=now)
            tx.deactivate_skill(skill_id, now=now)
        self.search_index.after_commit(skill_id, None, None, active=False)
        return {"id": skill_id, "name": row["name"], "version": row["version"], "deleted": True}

    def seed_core_skills(self) -> None:
        """Create the core skills if missing; reactivate them if found deleted."""
        core_skills.seed(self.store, self.search_index, lambda spec: self.create(
            spec["name"], spec["description"], spec["body"], is_core=True))

    # -- reads

    def get_detail(self, skill_id: Any, *, version: Any = None, include_history: bool = False,
                   diff_from: Any = None) -> dict[str, Any]:
        """The current record, or `version`'s (historical); `include_history`/`diff_from` add history/a diff."""
        if self._runtime is not None:
            self._runtime.flush_history()
        with self.store.read() as tx:
            row = self._active_row(tx, skill_id)
            out = history.detail(tx, row, run_stats(tx, row["id"]), version=version, include_history=include_history,
                                 diff_from=diff_from)
        return out if version is not None else {**out, **folders.detail(row)}

    def list_summary(self, limit: Any = None, cursor: Any = None) -> dict[str, Any]:
        limit = SUMMARY_DEFAULT_LIMIT if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SUMMARY_MAX_LIMIT:
            raise InvalidLimit(f"Invalid limit {limit!r}.")
        after = 0
        if cursor not in (None, ""):
            if not isinstance(cursor, str) or not _CURSOR_RE.fullmatch(cursor) or int(cursor) > MAX_SKILL_ID:
                raise InvalidCursor(f"Invalid cursor {cursor[:40] if isinstance(cursor, str) else cursor!r}.")
            after = int(cursor)
        with self.store.read() as tx:
            rows = tx.summary_page(after, limit + 1)
            total = tx.count_active()
        more = len(rows) > limit
        rows = rows[:limit]
        result: dict[str, Any] = {"skills": [json.loads(r[1]) for r in rows], "total": total,
                                  "next_cursor": str(rows[-1][0]) if more else None}
        if more:
            result["hint"] = "More skills exist: call skill_list_summary again with cursor=next_cursor, or use skill_search."
        return result

    def search(self, query: Any, mode: Any = "hybrid", top_k: Any = 10) -> dict[str, Any]:
        if not isinstance(query, str):
            raise InvalidQuery(f"The query must be a string, not {type(query).__name__}.")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidQuery(f"The query is {len(query)} characters long.")
        if mode not in SEARCH_MODES:
            raise InvalidMode(f"Unknown search mode {mode!r}.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise InvalidTopK(f"Invalid top_k {top_k!r}.")
        return self.search_index.search(query, mode, top_k)

    def reembed_in_background(self) -> threading.Thread | None:
        return self.search_index.reembed_in_background()

    def auth_url(self, skill_id: Any) -> dict[str, Any]:
        with self.store.read() as tx:
            row = self._active_row(tx, skill_id)
        auth = json.loads(row["auth_config_json"]) if row["auth_config_json"] else None
        if not auth:
            raise NoAuthConfig(f"Skill {row['name']!r} declares no auth_config.")
        validate_auth_config(auth)  # again: a row stored before a rule existed may name a forbidden variable
        return {"skill_id": row["id"], "name": row["name"], **credentials.auth_instructions(
            auth, self.environ, have=self.vault.values_for(row["id"], auth), url=self.links.offer(row["id"])[1])}

    # -- execution

    def runtime(self) -> Runtime:
        """The execution runtime, built once on first use; raises ExecutionConfigError for a setting that cannot work."""
        with self._runtime_lock:
            if self._runtime is None:
                self._runtime = Runtime(self._execution, self.store, self.environ, python=self._python)
            return self._runtime

    def configure_execution(self, config: ExecutionConfig) -> dict[str, Any]:
        """Replace how skills run (limits, sandbox, environments); return what was settled."""
        runtime = Runtime(config, self.store, self.environ, python=self._python)
        with self._runtime_lock:
            self._execution, self._runtime = config, runtime
        return runtime.describe()

    def prepare_execution(self, skill_id: Any, params: Any, timeout: Any) -> PreparedRun:
        """Check everything that can be checked before a run; the time checking params takes counts against the run."""
        started = time.monotonic()
        timeout_s, params_json = validate_timeout(timeout), validate_params(params)
        with self.store.read() as tx:
            row = self._active_row(tx, skill_id)
        return prepare(row, params_json, timeout_s, started, store=self.store, vault=self.vault, links=self.links,
                       environ=self.environ)

    async def execute(self, skill_id: Any, params: Any = None, timeout: Any = DEFAULT_TIMEOUT_S, *,
                      progress: Progress | None = None) -> dict[str, Any]:
        """Run a skill; install its dependencies first if their environment is not built yet.

        `progress(done, total, message)` hears about a dependency installation. Secrets are
        redacted from everything returned, errors included (their messages may quote params).
        """
        import anyio.to_thread

        runtime = await anyio.to_thread.run_sync(self.runtime)
        try:
            prepared = await anyio.to_thread.run_sync(self.prepare_execution, skill_id, params, timeout)
        except SkillError as exc:
            raise exc.redacted(runtime.redactor) from None
        try:
            return await runtime.run(prepared, progress)
        except depenv.InstallFailed as exc:
            raise DependencyInstallFailed(str(exc), installer_tail=exc.tail,
                                          requirements=list(prepared.requirements)) from None
