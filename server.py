"""selfMCP: a self-extending MCP server. This module is the process entry and the MCP wiring.

`Settings.from_env()` reads every SELFMCP_* setting; `create_server()` builds the MCPServer
whose eight tools call `skills.Registry`; `SelfMCPServer.call_tool` is the one place where a
failure becomes the error payload; `main()` picks the transport. Run it with `python3 server.py`
(streamable HTTP on 0.0.0.0:8000/mcp by default) or `SELFMCP_TRANSPORT=stdio python3 server.py`.
"""

from __future__ import annotations

import inspect
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from pydantic import Field, ValidationError

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import ToolAnnotations

import skills
from embeddings import Embedder, make_embedder
from selfmcp import config, redact, serverlock, upkeep
from selfmcp.config import ConfigError
from selfmcp.core_skills import INSTRUCTIONS
from selfmcp.errors import (DatabaseOpenFailed, InternalError, UnknownTool, argument_error, error_result,
                            storage_error)
from selfmcp.extension import SkillsServerMixin
from selfmcp.folders import FILES_HELP
from selfmcp.remote import consent, http_security, oauth, secrets_page, serving, stdio_transport

log = logging.getLogger("selfmcp")

TRANSPORTS = ("streamable-http", "sse", "stdio")



@dataclass
class Settings:
    db_path: Path = Path("selfmcp.db")
    transport: str = "streamable-http"
    host: str = "0.0.0.0"
    port: int = 8000
    embed_model: str | None = None
    embed_api_base: str | None = None
    use_litellm: bool = False
    auth_token: str | None = None
    auth: str = "none"  # oauth | token | none; from_env() picks oauth (token on loopback with a token)
    owner_password: str | None = None
    secret_key: str | None = None  # SELFMCP_SECRET_KEY: the vault key (else a key file beside the database)
    cimd_loopback: bool = False  # SELFMCP_CIMD_LOOPBACK=1: client metadata documents on loopback (tests)
    public_url: str | None = None  # https://host clients use; None: this machine's own address
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose X-Forwarded-For is believed
    log_level: str = "INFO"
    execution: skills.ExecutionConfig = field(default_factory=skills.ExecutionConfig)
    embedder: Embedder | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        transport = env.get("SELFMCP_TRANSPORT", "streamable-http").strip().lower()
        if transport not in TRANSPORTS:
            raise ConfigError(f"SELFMCP_TRANSPORT={transport!r} is not one of {', '.join(TRANSPORTS)}.")
        port_text = env.get("SELFMCP_PORT") or env.get("PORT") or "8000"
        try:
            port = int(port_text)
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise ConfigError(f"SELFMCP_PORT/PORT={port_text!r} is not a port number (1-65535).")
        host = env.get("SELFMCP_HOST", "0.0.0.0").strip()
        if not host:
            raise ConfigError("SELFMCP_HOST is empty; use an address such as 127.0.0.1 or 0.0.0.0.")
        level = env.get("SELFMCP_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"SELFMCP_LOG_LEVEL={level!r} is not a logging level.")
        return cls(
            db_path=Path(env.get("SELFMCP_DB_PATH") or "selfmcp.db"),
            transport=transport,
            host=host,
            port=port,
            embed_model=env.get("SELFMCP_EMBED_MODEL") or None,
            embed_api_base=env.get("SELFMCP_EMBED_API_BASE") or None,
            use_litellm=bool(env.get("OPENAI_API_KEY") or env.get("SELFMCP_USE_LITELLM")),
            log_level=level,
            environ=env,
            **config.remote_settings(env, transport, host, port),
            execution=config.execution_settings(env, public=transport != "stdio" and not http_security.is_loopback(host)),
        )

    @property
    def base_url(self) -> str:
        """Where clients reach this server: the OAuth issuer; the MCP endpoint is base_url + /mcp."""
        return self.public_url or http_security.default_public_url(self.host, self.port)

    @property
    def is_loopback(self) -> bool:
        return http_security.is_loopback(self.host)

    def host_allow_list(self) -> http_security.HostAllowList:
        """Host headers answered: loopback, the public URL's host, SELFMCP_ALLOWED_HOSTS (and Replit's domains)."""
        return http_security.HostAllowList.for_server(self.host, self.base_url, self.allowed_hosts)


# ------------------------------------------------------------------------------ errors

def failure_payload(exc: BaseException) -> dict[str, Any] | None:
    """The error payload for what a tool call raised (None: not a failure we know how to explain)."""
    if isinstance(exc, skills.SkillError):
        return exc.payload()
    if isinstance(exc, ValidationError):
        return argument_error(exc)
    if isinstance(exc, sqlite3.Error):
        log.warning("storage error: %s", exc)
        return storage_error(exc).payload()
    return None


class SelfMCPServer(SkillsServerMixin, MCPServer):
    """MCPServer over one registry (also served as Agent Skills); failures as the error payload; redacted."""

    def __init__(self, registry: skills.Registry, remote: oauth.RemoteAuth, **kwargs: Any) -> None:
        super().__init__("selfmcp", instructions=INSTRUCTIONS, version="0.1.0", **kwargs, **remote.server_kwargs)
        self.registry = registry
        self.remote_auth = remote
        self.redactor = redact.Redactor.from_environ(registry.environ)
        self.install_skills()  # the Skills-over-MCP extension, skill:// resources, knowledge-skill prompts

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None):
        """Every failure becomes `{error, message, hint}`: internal_error (logged, never shown) as the last resort."""
        try:
            return self.redactor.redact_tool_result(await super().call_tool(name, arguments, context))
        except MCPError:
            raise
        except Exception as exc:  # noqa: BLE001 - the one conversion of any failure; cancellation is not caught
            if isinstance(exc, ToolError) and exc.__cause__ is None and self._tool_manager.get_tool(name) is None:
                return self.redactor.redact_tool_result(error_result(UnknownTool(f"No tool named {name!r}.").payload()))
            cause = exc.__cause__ if isinstance(exc, ToolError) and exc.__cause__ is not None else exc
            while isinstance(cause, ToolError) and cause.__cause__ is not None:  # a nested tool's wrapper
                cause = cause.__cause__
            payload = failure_payload(cause)
            if payload is None:
                log.error("tool %r failed unexpectedly", name, exc_info=cause)
                payload = InternalError(f"{name} failed because of an unexpected error in the server.").payload()
            return self.redactor.redact_tool_result(error_result(payload))


# ------------------------------------------------------------------------------- tools

SkillId = Annotated[int, Field(description="The skill's numeric id, from skill_list_summary or skill_search.",
                               strict=True, ge=skills.MIN_SKILL_ID, le=skills.MAX_SKILL_ID)]  # strict: no "1"/true
Version = Annotated[int | None, Field(ge=1, le=skills.MAX_SKILL_ID, strict=True,
                                      description="A version number, from skill_get_detail's `versions`.")]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def create_server(settings: Settings, registry: skills.Registry | None = None) -> SelfMCPServer:
    """Build the MCP server for `settings`; tests may pass their own registry."""
    if registry is None:
        embedder = settings.embedder or make_embedder(settings.embed_model, use_remote=settings.use_litellm,
                                                   api_base=settings.embed_api_base)
        registry = skills.Registry(settings.db_path, embedder, environ=settings.environ, execution=settings.execution,
                                   secret_key=settings.secret_key)
        registry.seed_core_skills()
    remote = oauth.RemoteAuth.create(
        settings.auth if settings.transport != "stdio" else "none", base_url=settings.base_url,
        mcp_path="/sse" if settings.transport == "sse" else "/mcp", database=registry.store.db,
        auth_token=settings.auth_token, owner_password=settings.owner_password, cimd_loopback=settings.cimd_loopback)
    mcp = SelfMCPServer(registry, remote, log_level=settings.log_level)
    page = secrets_page.attach(mcp, registry, remote, settings.owner_password, served=settings.transport != "stdio")

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            mcp.add_tool(fn, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
            return fn
        return register

    @tool(ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False))
    def skill_create(
        name: Annotated[str, Field(description="Unique name: 1-64 letters, digits, '_', '-' or '.'. "
                                               "Reusing a deleted skill's name reactivates it.")],
        description: Annotated[str, Field(description="What the skill does and when to use it (<= 4 KiB). "
                                                      "Search matches on this, so name the task in plain words.")],
        body: Annotated[str, Field(description="A Python script, or a SKILL.md whose ```python blocks run. "
                                               "Read params with json.loads(os.environ['SELFMCP_PARAMS']); "
                                               "print the result. <= 256 KiB.")],
        dependencies: Annotated[list[str] | None, Field(description="pip requirement strings the code imports, "
                                                                    "e.g. ['requests>=2'].")] = None,
        auth_config: Annotated[dict[str, Any] | None, Field(description=(
            'Credentials the skill needs: {"type": "api_key", "env_var": "X_API_KEY", "instructions": "..."} '
            'or {"type": "oauth2", "auth_url": ..., "token_url": ..., "scopes": [...], '
            '"client_id_env": "X_CLIENT_ID", "client_secret_env": ..., "token_env": "X_ACCESS_TOKEN"}. '
            'client_id_env must end in _CLIENT_ID (its value is shown in skill_auth_url); no SELFMCP_* variable '
            'may be named.'))] = None,
        params_schema: Annotated[dict[str, Any] | None, Field(description=(
            "Optional JSON Schema of the params object the skill accepts."))] = None,
        files: Annotated[dict[str, str | dict[str, str] | None] | None, Field(description=FILES_HELP)] = None,
    ) -> dict[str, Any]:
        """Store a new skill in the registry so it can be found and run in any later session.

        Call this only after skill_search found nothing suitable. Returns {id, name, version, status}
        where status is "created", or "reactivated" when a deleted skill had this name (same id,
        history kept, version continues). A skill with no code to run (no ```python block, no scripts/main.py
        or `metadata.entrypoint` script in files) is a knowledge skill. Errors: skill_exists, invalid_name,
        invalid_description, invalid_body, invalid_code (syntax error, with the line), invalid_frontmatter,
        invalid_files, invalid_dependency, invalid_auth_config, invalid_params_schema (e.g. a
        $ref outside the schema), storage_full, storage_unavailable.
        """
        return registry.create(name, description, body, dependencies, auth_config, params_schema, files=files)

    @tool(ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False))
    def skill_update(
        skill_id: SkillId,
        name: Annotated[str | None, Field(description="New name (core skills cannot be renamed).")] = None,
        description: Annotated[str | None, Field(description="New description.")] = None,
        body: Annotated[str | None, Field(description="New body (Python script or SKILL.md).")] = None,
        dependencies: Annotated[list[str] | None, Field(description="New list of pip requirements.")] = None,
        auth_config: Annotated[dict[str, Any] | None, Field(description="New auth_config; {} removes it.")] = None,
        params_schema: Annotated[dict[str, Any] | None, Field(description="New params JSON Schema; {} removes it.")] = None,
        files: Annotated[dict[str, str | dict[str, str] | None] | None, Field(description=FILES_HELP)] = None,
        restore_version: Version = None, expected_version: Version = None,
    ) -> dict[str, Any]:
        """Change some fields of a skill; the others stay as they are. The version goes up by one.

        Pass expected_version (the version you read): if it changed, nothing is written (version_conflict).
        restore_version=N alone makes version N's content the new version. Returns {id, name, version, previous_version,
        updated_fields}. Errors: skill_not_found, version_conflict, version_not_found, skill_exists, invalid_*.
        """
        return registry.update(skill_id, name=name, description=description, body=body, files=files,
                               dependencies=dependencies, auth_config=auth_config, params_schema=params_schema,
                               restore_version=restore_version, expected_version=expected_version)

    @tool(ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=False))
    def skill_delete(skill_id: SkillId) -> dict[str, Any]:
        """Soft-delete a skill: it disappears from search and listings, its history is kept.

        skill_create with the same name later reactivates it (same id, version continues).
        Returns {id, name, version, deleted}. Errors: skill_not_found, cannot_delete_core_skill, invalid_argument.
        """
        return registry.delete(skill_id)

    @tool(ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=True))
    async def skill_execute(
        skill_id: SkillId,
        params: Annotated[dict[str, Any] | None, Field(description=(
            "JSON object passed to the skill in the SELFMCP_PARAMS environment variable."))] = None,
        timeout: Annotated[float, Field(description="Seconds before the run and every process it started "
                                                    "are killed (1-600).", ge=1, le=600)] = skills.DEFAULT_TIMEOUT_S,
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Run a skill's Python code in an isolated subprocess and return what it printed.

        Read the skill with skill_get_detail first to know its params (and params_schema, checked before the run). The
        first run of a skill with dependencies installs them, with progress notifications; later runs reuse them. Each
        run gets a fresh working directory, limits on time, memory and output, and the server's environment; secret
        values are shown as [REDACTED:NAME]. Returns {stdout, stderr, exit_code, timed_out, duration_ms, stdout_bytes,
        stderr_bytes, stdout_truncated, stderr_truncated, sandbox, skill_id, name, version, environment?}; a non-zero
        exit_code or timed_out=true is a result, not an error. A missing key is asked of the user by URL-mode
        elicitation when the client supports it. Errors: skill_not_found, missing_credentials (with `missing` and
        `url`: show the link to the user, then run again), invalid_params (with `path`), invalid_timeout,
        invalid_dependency, dependency_install_failed (with `installer_tail`), not_executable.
        """
        return await secrets_page.run_asking_for_secrets(registry, page, ctx, skill_id, params, timeout)

    @tool(READ_ONLY)
    def skill_list_summary(
        limit: Annotated[int | None, Field(description=f"Skills per page (1-{skills.SUMMARY_MAX_LIMIT}, "
                                                       f"default {skills.SUMMARY_DEFAULT_LIMIT}).")] = None,
        cursor: Annotated[str | None, Field(description="next_cursor of the previous page; omit for the first.")] = None,
    ) -> dict[str, Any]:
        """List the registry's skills compactly: id, name and a one-line description each.

        Start here to see what exists; use skill_search to find skills for a task when the registry is
        large. Returns {skills: [{id, name, short_description}], total, next_cursor}; next_cursor is null
        on the last page. Errors: invalid_limit, invalid_cursor.
        """
        return registry.list_summary(limit, cursor)

    @tool(READ_ONLY)
    def skill_get_detail(skill_id: SkillId, version: Version = None, include_history: bool = False,
                         diff_from: Version = None) -> dict[str, Any]:
        """Load one skill's full record: body, dependencies, auth_config, params_schema, version, timestamps.

        Call it before skill_execute to learn what params the skill reads, or to reuse its code. Returns the record
        with `versions`, `agent_name` (its files are skill://<agent_name>/<path> resources), `files` ([{path, size,
        digest}]), `format` ("python" or "skill_md") and for a SKILL.md `code`: exactly the Python that runs.
        version=N: that version's content (historical=true); include_history adds `history`; diff_from=A adds `diff`
        (unified diff from version A). Errors: skill_not_found, version_not_found.
        """
        return registry.get_detail(skill_id, version=version, include_history=include_history, diff_from=diff_from)

    @tool(READ_ONLY)
    def skill_search(
        query: Annotated[str, Field(description="What you need, in plain words (e.g. 'convert a CSV file to JSON').")],
        mode: Annotated[Literal["hybrid", "keyword", "vector"], Field(description=(
            "hybrid (default): meaning and keywords combined; keyword: exact words (FTS5 bm25); "
            "vector: meaning only."))] = "hybrid",
        top_k: Annotated[int, Field(description=f"How many results (1-{skills.MAX_TOP_K}).",
                                    ge=1, le=skills.MAX_TOP_K)] = 10,
    ) -> dict[str, Any]:
        """Find skills that fit a task, best first.

        Use before writing a new skill: if a result fits, call skill_get_detail then skill_execute.
        Returns {query, mode, results: [{id, name, short_description, score}]} with scores in [0, 1].
        Errors: invalid_mode, invalid_top_k, invalid_query.
        """
        return registry.search(query, mode, top_k)

    @tool(READ_ONLY)
    def skill_auth_url(skill_id: SkillId) -> dict[str, Any]:
        """Tell the user how to provide the credentials a skill needs (API key or OAuth2 grant).

        Call it after skill_execute returned missing_credentials, and show the instructions and `url` (a
        single-use link where the user enters the key or connects the account) to the user. Returns
        {type, env_vars, missing, ready, instructions, url?, auth_url?, replit_secrets_url?}. Errors:
        skill_not_found, no_auth_config, invalid_auth_config.
        """
        return registry.auth_url(skill_id)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(request):  # noqa: ANN001 - Starlette request
        from starlette.responses import JSONResponse

        status, body = await anyio.to_thread.run_sync(upkeep.health, registry.store)  # 503 when the database cannot serve
        return JSONResponse({**body, "transport": settings.transport}, status_code=status)

    if settings.transport != "stdio":
        consent.add_routes(mcp, remote)  # consent page, root resource metadata, landing
    return mcp


# ------------------------------------------------------------------------------ start-up

def announce_auth(settings: Settings, remote: oauth.RemoteAuth) -> None:
    """Log how clients connect and warn about open or weak settings."""
    serving.log_auth(remote, host=settings.host, port=settings.port, loopback=settings.is_loopback,
                     hosts=settings.host_allow_list(), auth_token=settings.auth_token,
                     owner_password=settings.owner_password, public_url=settings.public_url)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:  # a `selfmcp` command (selfmcp/cli), with what only this entry builds: settings, registry, serving
        from selfmcp import cli  # not on the server's start-up path
        return cli.main(args, cli.Backend(Settings.from_env, ConfigError, create_server, main))
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"selfmcp: configuration error: {exc}", file=sys.stderr)
        return 2
    # Before anything is imported or seeded: a library that prints (LiteLLM's logger does)
    # must not write into the protocol stream.
    protocol_fds = stdio_transport.claim_stdio() if settings.transport == "stdio" else None
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact.install_log_redaction(redact.Redactor.from_environ(settings.environ))
    try:
        serving_lock = serverlock.hold_while_serving(settings.db_path)  # `selfmcp restore` checks it  # noqa: F841
        mcp = create_server(settings)
    except (DatabaseOpenFailed, sqlite3.Error, OSError) as exc:
        return serving.database_fault(settings.db_path, exc)
    registry: skills.Registry = mcp.registry
    try:
        execution = registry.runtime().describe()
    except skills.ExecutionConfigError as exc:
        print(f"selfmcp: configuration error: {exc}", file=sys.stderr)
        return 2
    upkeep.start(registry.store.db, registry.search_index)  # now (re-embedding what is missing), then every 30 s
    log.info("selfMCP: %s, database %s, embeddings %s", settings.transport, settings.db_path, registry.embedder.model_id)
    serving.log_execution(execution)
    if protocol_fds is not None:
        anyio.run(serving.serve_stdio, mcp, protocol_fds)
        return 0
    announce_auth(settings, mcp.remote_auth)
    serving.ensure_owner_password(mcp.remote_auth, settings.owner_password,
                                  reachable=bool(settings.public_url or settings.is_loopback))
    import uvicorn

    log.info("serving on http://%s:%d%s", settings.host, settings.port,
             "/sse" if settings.transport == "sse" else "/mcp")
    app = serving.http_app(mcp, transport=settings.transport, host=settings.host, hosts=settings.host_allow_list(),
                           remote=mcp.remote_auth, proxies=settings.trusted_proxies)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                timeout_graceful_shutdown=2, proxy_headers=bool(settings.trusted_proxies),
                forwarded_allow_ips=list(settings.trusted_proxies) or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
