"""selfMCP: a self-extending MCP server. This module is the MCP wiring only.

`Settings.from_env()` reads every SELFMCP_* setting; `create_server()` builds the
MCPServer whose eight tools call `skills.Registry`; `main()` picks the transport.
Run it with `python3 server.py` (streamable HTTP on 0.0.0.0:8000/mcp by default) or
`SELFMCP_TRANSPORT=stdio python3 server.py`.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from pydantic import Field, ValidationError

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations

import skills
from embeddings import Embedder, make_embedder

log = logging.getLogger("selfmcp")

TRANSPORTS = ("streamable-http", "sse", "stdio")
LOOPBACK_NAMES = ("localhost",)

INSTRUCTIONS = """\
selfMCP is a registry of reusable skills (small Python programs or SKILL.md documents) that you can \
search, run, and extend. Workflow:
1. skill_list_summary for a cheap table of contents (paged; a total count tells you how many exist).
2. skill_search(query) to find skills for the task at hand.
3. skill_get_detail(skill_id) to read a promising skill's body, parameters and auth needs.
4. skill_execute(skill_id, params) to run it; params arrive in the skill as JSON in SELFMCP_PARAMS.
When nothing fits, write a skill and store it with skill_create so it is there next time; improve it \
with skill_update. If a run fails with missing_credentials, call skill_auth_url and show the user its \
instructions. Run the core skill selfmcp_env_keys to see which API keys the server has before writing \
a skill that needs one, and selfmcp_about for how this server works."""


class ConfigError(ValueError):
    """An environment setting with a value the server cannot use."""


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
    log_level: str = "INFO"
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
            auth_token=env.get("SELFMCP_AUTH_TOKEN") or None,
            log_level=level,
            environ=env,
        )

    @property
    def is_loopback(self) -> bool:
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


# ------------------------------------------------------------------------------ errors

def error_result(payload: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))],
                          structured_content=payload, is_error=True)


def reports_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a SkillError raised by a tool into an MCP tool error carrying its payload."""
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except skills.SkillError as exc:
                return error_result(exc.payload())
            except sqlite3.OperationalError as exc:
                return error_result(_storage_error(exc))
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except skills.SkillError as exc:
            return error_result(exc.payload())
        except sqlite3.OperationalError as exc:
            return error_result(_storage_error(exc))
    return wrapper


def _storage_error(exc: sqlite3.OperationalError) -> dict[str, Any]:
    log.warning("storage error: %s", exc)
    return {"error": "storage_unavailable", "message": "The skill database could not complete the request.",
            "hint": "Retry in a moment; if it persists, check the server log and SELFMCP_DB_PATH."}


# Arguments the SDK rejects against the input schema get the same codes the registry uses.
_ARGUMENT_CODES = {
    "name": skills.InvalidName, "description": skills.InvalidDescription, "body": skills.InvalidBody,
    "dependencies": skills.InvalidDependency, "auth_config": skills.InvalidAuthConfig,
    "params": skills.InvalidParams, "timeout": skills.InvalidTimeout, "mode": skills.InvalidMode,
    "top_k": skills.InvalidTopK, "query": skills.InvalidQuery, "cursor": skills.InvalidCursor,
    "limit": skills.InvalidLimit, "skill_id": skills.SkillNotFound,
}


def _argument_error(exc: ValidationError) -> dict[str, Any]:
    first = exc.errors()[0]
    field_name = str(first["loc"][0]) if first.get("loc") else ""
    cls = _ARGUMENT_CODES.get(field_name, skills.InvalidArgument)
    if cls is skills.SkillNotFound:
        cls = skills.InvalidArgument
    fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
    return {"error": cls.code, "message": f"Invalid value for {field_name or 'the arguments'}: {first['msg']}.",
            "hint": cls.hint, "fields": fields}


class SelfMCPServer(MCPServer):
    """MCPServer whose argument-validation failures carry the registry's error shape."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None):
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                return error_result(_argument_error(exc.__cause__))
            raise


# ------------------------------------------------------------------------------- tools

SkillId = Annotated[int, Field(description="The skill's numeric id, from skill_list_summary or skill_search.")]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)


def create_server(settings: Settings, registry: skills.Registry | None = None) -> MCPServer:
    """Build the MCP server for `settings`; tests may pass their own registry."""
    if registry is None:
        embedder = settings.embedder or make_embedder(settings.embed_model, use_remote=settings.use_litellm,
                                                   api_base=settings.embed_api_base)
        registry = skills.Registry(settings.db_path, embedder, environ=settings.environ)
        registry.seed_core_skills()
    mcp = SelfMCPServer("selfmcp", instructions=INSTRUCTIONS, version="0.1.0", log_level=settings.log_level)
    mcp.registry = registry  # type: ignore[attr-defined]  # for main() and tests

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            mcp.add_tool(reports_errors(fn), description=inspect.cleandoc(fn.__doc__ or ""),
                         annotations=annotations)
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
            '"client_id_env": ..., "client_secret_env": ...}.'))] = None,
        params_schema: Annotated[dict[str, Any] | None, Field(description=(
            "Optional JSON Schema of the params object the skill accepts."))] = None,
    ) -> dict[str, Any]:
        """Store a new skill in the registry so it can be found and run in any later session.

        Call this only after skill_search found nothing suitable. Returns {id, name, version, status}
        where status is "created", or "reactivated" when a deleted skill had this name (same id,
        history kept, version continues). Errors: skill_exists, invalid_name, invalid_description,
        invalid_body, invalid_code (syntax error, with the line), invalid_dependency, invalid_auth_config.
        """
        return registry.create(name, description, body, dependencies, auth_config, params_schema)

    @tool(ToolAnnotations(destructive_hint=False, idempotent_hint=False, open_world_hint=False))
    def skill_update(
        skill_id: SkillId,
        name: Annotated[str | None, Field(description="New name (core skills cannot be renamed).")] = None,
        description: Annotated[str | None, Field(description="New description.")] = None,
        body: Annotated[str | None, Field(description="New body (Python script or SKILL.md).")] = None,
        dependencies: Annotated[list[str] | None, Field(description="New list of pip requirements.")] = None,
        auth_config: Annotated[dict[str, Any] | None, Field(description="New auth_config; {} removes it.")] = None,
        params_schema: Annotated[dict[str, Any] | None, Field(description="New params JSON Schema; {} removes it.")] = None,
    ) -> dict[str, Any]:
        """Change some fields of a skill; the others stay as they are. The version goes up by one.

        The previous content stays in the version history. Returns {id, name, version, updated_fields}.
        Errors: skill_not_found, nothing_to_update, cannot_rename_core_skill, skill_exists (name taken),
        and the validation codes of skill_create.
        """
        return registry.update(skill_id, name=name, description=description, body=body,
                               dependencies=dependencies, auth_config=auth_config, params_schema=params_schema)

    @tool(ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=False))
    def skill_delete(skill_id: SkillId) -> dict[str, Any]:
        """Soft-delete a skill: it disappears from search and listings, its history is kept.

        skill_create with the same name later reactivates it (same id, version continues).
        Returns {id, name, version, deleted}. Errors: skill_not_found, cannot_delete_core_skill.
        """
        return registry.delete(skill_id)

    @tool(ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=True))
    async def skill_execute(
        skill_id: SkillId,
        params: Annotated[dict[str, Any] | None, Field(description=(
            "JSON object passed to the skill in the SELFMCP_PARAMS environment variable."))] = None,
        timeout: Annotated[float, Field(description="Seconds before the run and every process it started "
                                                    "are killed (1-600).", ge=1, le=600)] = skills.DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Run a skill's Python code in a subprocess and return what it printed.

        Read the skill with skill_get_detail first to know its params. The run gets a fresh working
        directory and the server's environment. Returns {stdout, stderr, exit_code, timed_out,
        duration_ms, skill_id, name, version}; a non-zero exit_code or timed_out=true is a result, not an
        error. Errors: skill_not_found, missing_credentials (with `missing`; then call skill_auth_url),
        invalid_params, invalid_timeout, not_executable (a SKILL.md without a python block).
        """
        return await registry.execute(skill_id, params, timeout)

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
    def skill_get_detail(skill_id: SkillId) -> dict[str, Any]:
        """Load one skill's full record: body, dependencies, auth_config, params_schema, version, timestamps.

        Call it before skill_execute to learn what params the skill reads, or to reuse its code.
        Returns the record with `versions` (the version numbers kept in history). Errors: skill_not_found.
        """
        return registry.get_detail(skill_id)

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

        Call it after skill_execute returned missing_credentials, and show the instructions (and
        auth_url, for OAuth2) to the user. Returns {type, env_vars, missing, ready, instructions,
        auth_url?, replit_secrets_url?}. Errors: skill_not_found, no_auth_config.
        """
        return registry.auth_url(skill_id)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(request):  # noqa: ANN001 - Starlette request
        from starlette.responses import JSONResponse

        count = await _to_thread(registry.count_active)
        return JSONResponse({"status": "ok", "skills": count, "transport": settings.transport})

    return mcp


async def _to_thread(fn: Callable[[], Any]) -> Any:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn)


# ------------------------------------------------------------------------------ transports

class BearerTokenMiddleware:
    """Require `Authorization: Bearer <token>` on every HTTP path except /health."""

    def __init__(self, app: Any, token: str, open_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.open_paths = open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import hmac

        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        log.warning("rejected an HTTP request to %s without a valid bearer token", scope.get("path"))
        body = json.dumps({"error": "unauthorized", "message": "A valid bearer token is required.",
                           "hint": "Send 'Authorization: Bearer <SELFMCP_AUTH_TOKEN>'."}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b'Bearer realm="selfmcp"')]})
        await send({"type": "http.response.body", "body": body})


def transport_security(settings: Settings) -> TransportSecuritySettings:
    if settings.is_loopback:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


def http_app(mcp: MCPServer, settings: Settings) -> Any:
    """The ASGI app for the HTTP transports, with bearer-token protection when configured."""
    security = transport_security(settings)
    if settings.transport == "sse":
        app = mcp.sse_app(transport_security=security, host=settings.host)
    else:
        app = mcp.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=settings.host)
    if settings.auth_token:
        return BearerTokenMiddleware(app, settings.auth_token)
    return app


def _warn_if_exposed(settings: Settings) -> None:
    if settings.transport == "stdio" or settings.is_loopback:
        return
    if not settings.auth_token:
        log.warning("!" * 78)
        log.warning("SECURITY: HTTP is bound to %s with no SELFMCP_AUTH_TOKEN. Anyone who can reach port %d "
                    "can run code on this machine with this server's environment and keys.",
                    settings.host, settings.port)
        log.warning("Set SELFMCP_AUTH_TOKEN, or bind SELFMCP_HOST=127.0.0.1.")
        log.warning("!" * 78)


def _start_reembedding(registry: skills.Registry) -> None:
    def work() -> None:
        try:
            count = registry.reembed_stale(progress=lambda done, total: log.info("re-embedded %d/%d skills", done, total))
        except Exception:
            log.exception("re-embedding failed; vector search covers the skills embedded so far")
            return
        if count:
            log.info("re-embedding finished: %d skills", count)

    threading.Thread(target=work, name="selfmcp-reembed", daemon=True).start()


def _claim_stdout() -> Any:
    """Keep fd 1 for the protocol alone: anything else written to stdout goes to stderr.

    Done before anything is imported or seeded, so a library that prints on import or
    logs to stdout (LiteLLM does) cannot corrupt the stdio stream.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return open(protocol_fd, "w", encoding="utf-8", closefd=True)


async def _serve_stdio(mcp: MCPServer, protocol_out: Any) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server(stdout=anyio.wrap_file(protocol_out)) as (read_stream, write_stream):
        lowlevel = mcp._lowlevel_server  # noqa: SLF001 - run_stdio_async() offers no stream parameter
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"selfmcp: configuration error: {exc}", file=sys.stderr)
        return 2
    protocol_out = _claim_stdout() if settings.transport == "stdio" else None
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mcp = create_server(settings)
    registry: skills.Registry = mcp.registry  # type: ignore[attr-defined]
    _start_reembedding(registry)
    log.info("selfMCP: %s, database %s, embeddings %s", settings.transport, settings.db_path,
             registry.embedder.model_id)
    if protocol_out is not None:
        anyio.run(_serve_stdio, mcp, protocol_out)
        return 0
    _warn_if_exposed(settings)
    import uvicorn

    log.info("serving on http://%s:%d%s", settings.host, settings.port,
             "/sse" if settings.transport == "sse" else "/mcp")
    uvicorn.run(http_app(mcp, settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
