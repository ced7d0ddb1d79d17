"""The one error shape every failure reaches a client in, built in one place.

    {"error": "skill_not_found", "message": "No active skill with id 42.",
     "hint": "Call skill_search to find the right id.", ...details}

`error` is a stable snake_case code (API: never renamed); `message` one sentence; `hint` the next
step. Details sit beside them at the top level, as the specification puts `missing` and `name`.
Registry errors (`SkillError`, whose hierarchy is drawn in its docstring), storage errors, argument errors and the HTTP guard's bodies
all come through `error_body`; tests/test_error_shape.py holds every source to it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

import db

if TYPE_CHECKING:
    from selfmcp.redact import Redactor

REQUIRED_KEYS = ("error", "message", "hint")


def error_body(code: str, message: str, hint: str, **details: Any) -> dict[str, Any]:
    """The error payload: code, message and hint first, then any details."""
    return {"error": code, "message": message, "hint": hint, **details}


def error_result(payload: dict[str, Any]) -> Any:
    """The payload as an MCP tool error: the same JSON as text and as structured content, is_error set."""
    from mcp.types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))],
                          structured_content=payload, is_error=True)


def error_json(code: str, message: str, hint: str, **details: Any) -> bytes:
    """`error_body` as UTF-8 JSON, for HTTP responses."""
    return json.dumps(error_body(code, message, hint, **details), ensure_ascii=False).encode()


class SkillError(Exception):
    """A failure the caller can act on. `code` is stable API; `hint` is the next step.

    SkillError
     ├── InvalidArgument and the other invalid_* codes: bad input, nothing changed
     ├── SkillNotFound, SkillExists, NothingToUpdate, VersionNotFound, VersionConflict: the registry's state says no
     ├── CannotDeleteCoreSkill, CannotRenameCoreSkill: core skills are guarded
     ├── MissingCredentials, NoAuthConfig, NotExecutable, DependencyInstallFailed: a run cannot start
     ├── StorageUnavailable, StorageFull: the database cannot take the request (nothing changed)
     └── InternalError, UnknownTool: a bug (logged, never shown) or a tool name the server lacks
    """

    code = "skill_error"
    hint = ""

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.hint = hint or self.hint
        self.details = details

    def payload(self) -> dict[str, Any]:
        return error_body(self.code, str(self), self.hint, **self.details)

    def redacted(self, redactor: Redactor) -> SkillError:
        """This error with secret values hidden in its message, hint and details."""
        if redactor:
            self.args = (redactor.redact(str(self)),)
            self.hint = redactor.redact(self.hint)
            self.details = redactor.redact_obj(self.details)
        return self


def _error(name: str, code: str, hint: str) -> type[SkillError]:
    return type(name, (SkillError,), {"code": code, "hint": hint, "__module__": __name__})


InvalidArgument = _error("InvalidArgument", "invalid_argument", "Fix the argument named in the message and call again.")
InvalidName = _error("InvalidName", "invalid_name",
                     "Use 1-64 characters: letters, digits, '_', '-' or '.'; no spaces or slashes.")
InvalidDescription = _error("InvalidDescription", "invalid_description",
                            "Give a non-empty description of at most 4 KiB saying what the skill does and when "
                            "to use it.")
InvalidBody = _error("InvalidBody", "invalid_body",
                     "Give a non-empty body of at most 256 KiB: a Python script, or a SKILL.md with ```python "
                     "blocks.")
InvalidCode = _error("InvalidCode", "invalid_code", "Fix the syntax error at the line given and call again.")
InvalidDependency = _error("InvalidDependency", "invalid_dependency",
                           "Give dependencies as a list of pip requirement strings such as 'requests>=2'.")
InvalidAuthConfig = _error("InvalidAuthConfig", "invalid_auth_config",
                           'Use {"type": "api_key", "env_var": "X_API_KEY", "instructions": "..."} or '
                           '{"type": "oauth2", "auth_url": "https://...", "client_id_env": "X_CLIENT_ID", '
                           '"scopes": [...]}.')
InvalidParams = _error("InvalidParams", "invalid_params", "Pass params as a JSON object of at most 1 MiB.")
InvalidTimeout = _error("InvalidTimeout", "invalid_timeout",
                        "Use a timeout between 1 and 600 seconds.")
InvalidMode = _error("InvalidMode", "invalid_mode", "Use mode 'hybrid' (default), 'keyword' or 'vector'.")
InvalidTopK = _error("InvalidTopK", "invalid_top_k", "Use top_k between 1 and 50.")
InvalidQuery = _error("InvalidQuery", "invalid_query", "Use a query of at most 4096 characters.")
InvalidCursor = _error("InvalidCursor", "invalid_cursor",
                       "Pass the next_cursor value from the previous skill_list_summary call, or omit it.")
InvalidLimit = _error("InvalidLimit", "invalid_limit", "Use a limit between 1 and 1000.")
InvalidParamsSchema = _error("InvalidParamsSchema", "invalid_params_schema",
                             'Give a JSON Schema object, e.g. {"type": "object", "properties": {"city": {"type": '
                             '"string"}}, "required": ["city"]}, or {} for none.')
SkillNotFound = _error("SkillNotFound", "skill_not_found",
                       "Call skill_search or skill_list_summary to find the right id.")
SkillExists = _error("SkillExists", "skill_exists", "Call skill_update on the existing skill, or choose another name.")
NothingToUpdate = _error("NothingToUpdate", "nothing_to_update",
                         "Pass at least one of name, description, body, files, dependencies, auth_config, params_schema.")
CannotDeleteCoreSkill = _error("CannotDeleteCoreSkill", "cannot_delete_core_skill",
                               "Core skills stay in the registry; update their body or description instead.")
CannotRenameCoreSkill = _error("CannotRenameCoreSkill", "cannot_rename_core_skill",
                               "Core skills keep their names; leave name out of the update.")
MissingCredentials = _error("MissingCredentials", "missing_credentials",
                            "Call skill_auth_url for how to supply the missing credentials, then run it again.")
NoAuthConfig = _error("NoAuthConfig", "no_auth_config",
                      "This skill declares no auth_config, so it needs no setup; call skill_execute directly.")
NotExecutable = _error("NotExecutable", "not_executable",
                       "Read the body with skill_get_detail and follow it, or update it to add a ```python block.")
DependencyInstallFailed = _error("DependencyInstallFailed", "dependency_install_failed",
                                 "Check the requirement names and versions in `installer_tail`, fix them with "
                                 "skill_update, and call skill_execute again.")
VersionNotFound = _error("VersionNotFound", "version_not_found",
                         "Call skill_get_detail with include_history=true to see which versions exist.")
VersionConflict = _error("VersionConflict", "version_conflict",
                         "Re-read the skill with skill_get_detail, apply your change to its current version, and "
                         "call skill_update again with expected_version set to that version.")
SandboxUnavailable = _error("SandboxUnavailable", "sandbox_unavailable",
                            "Install bubblewrap (apt-get install bubblewrap) or run on a kernel with Landlock; or, "
                            "as the owner, accept unconfined runs with SELFMCP_SANDBOX=none, or bind "
                            "SELFMCP_HOST=127.0.0.1.")
InvalidFrontmatter = _error("InvalidFrontmatter", "invalid_frontmatter",
                            "Fix the YAML between the SKILL.md's `---` lines; quote values such as yes, on, 017 "
                            "or dates so every YAML reader sees the same text.")
InvalidFiles = _error("InvalidFiles", "invalid_files",
                      'Give files as {"relative/path": "text"} or {"path": {"base64": "..."}} with relative '
                      "paths (no '..', no leading '/', no backslash), at most 512 files and 16 MiB a skill.")
StorageUnavailable = _error("StorageUnavailable", "storage_unavailable",
                            "Retry in a moment; if it persists, the server's operator must check the database file "
                            "(SELFMCP_DB_PATH) and the server log.")
StorageFull = _error("StorageFull", "storage_full",
                     "The disk holding the skill database is full: the server's operator must free space; writes "
                     "resume by themselves once there is room. Reads and runs still work.")
InternalError = _error("InternalError", "internal_error",
                       "This is a bug in the server, logged with its details; retry once, then report it if it "
                       "persists.")
UnknownTool = _error("UnknownTool", "unknown_tool",
                     "Call tools/list for the tools this server offers (skill_search, skill_execute, ...).")


# The database could not be opened at start-up: one line saying what is wrong and what to do.
DatabaseOpenFailed = db.OpenFailed
describe_open_failure = db.describe_open_failure


def storage_error(exc: sqlite3.Error) -> SkillError:
    """What a failure of the database means to a client: storage_full or storage_unavailable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StorageFull("The disk holding the skill database is full; nothing was changed.")
    if isinstance(exc, db.StorageUnavailable):
        return StorageUnavailable(f"{exc} Nothing was changed.",
                                  hint="The server's operator must put the database file back (or restore a backup) "
                                       "and restart the server; reads and runs still work.")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StorageUnavailable("The skill database file is damaged; the request was not completed.",
                                  hint="The server's operator must restore the database from a backup; see the "
                                       "README's Reliability section.")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StorageUnavailable("The skill database is busy (locked by another writer); nothing was changed.",
                                  hint="Retry in a moment.")
    return StorageUnavailable("The skill database could not complete the request; nothing was changed.")


# Arguments the SDK rejects against a tool's input schema get the codes the registry uses for them.
_ARGUMENT_CODES: dict[str, type[SkillError]] = {
    "name": InvalidName, "description": InvalidDescription, "body": InvalidBody, "dependencies": InvalidDependency,
    "auth_config": InvalidAuthConfig, "params": InvalidParams, "timeout": InvalidTimeout, "mode": InvalidMode,
    "top_k": InvalidTopK, "query": InvalidQuery, "cursor": InvalidCursor, "limit": InvalidLimit,
    "params_schema": InvalidParamsSchema, "files": InvalidFiles,
}
_SKILL_ID_HINT = ("Pass skill_id as a JSON integer (no quotes, not true/false), an id from skill_search or "
                  "skill_list_summary.")


def argument_error(exc: ValidationError) -> dict[str, Any]:
    """The error payload for arguments the SDK's (pydantic) validation refused, named by the first bad field."""
    first = exc.errors()[0]
    field_name = str(first["loc"][0]) if first.get("loc") else ""
    cls = _ARGUMENT_CODES.get(field_name, InvalidArgument)
    hint = _SKILL_ID_HINT if field_name == "skill_id" else cls.hint
    fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
    return error_body(cls.code, f"Invalid value for {field_name or 'the arguments'}: {first['msg']}.", hint,
                      fields=fields)
