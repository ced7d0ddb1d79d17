"""Serving an MCPServer: the guarded HTTP app, stdio on asyncio pipes, and what start-up tells the owner."""

from __future__ import annotations

import logging
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer

from starlette.routing import Route

from mcp.server.auth.routes import cors_middleware

import db
from selfmcp.remote import cimd, oauth, stdio_transport
from selfmcp.remote.http_security import HostAllowList, RequestGuard
from selfmcp.remote.oauth import PublicRevocation, RemoteAuth

log = logging.getLogger("selfmcp")


def http_app(mcp: MCPServer, *, transport: str, host: str, hosts: HostAllowList, remote: RemoteAuth | None = None,
             proxies: tuple[str, ...] = ()) -> Any:
    """The ASGI app for the HTTP transports: the Host allow-list guards it on every bind, before any auth."""
    security = hosts.transport_security()
    if transport == "sse":
        app = mcp.sse_app(transport_security=security, host=host)
    else:
        app = mcp.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    if remote is not None and remote.provider is not None:
        revoke = Route("/revoke", endpoint=cors_middleware(PublicRevocation(remote.provider).handle, ["POST", "OPTIONS"]),
                       methods=["POST", "OPTIONS"])
        app.router.routes[:] = [revoke if getattr(r, "path", None) == "/revoke" else r for r in app.router.routes]
        if remote.provider.cimd is not None:  # client ids that are metadata document URLs
            cimd.advertise(app, remote.server_kwargs["auth"])
            app = cimd.CIMDGuard(app, remote.provider.cimd)
    return RequestGuard(app, hosts, proxies_trusted=bool(proxies))


async def serve_stdio(mcp: MCPServer, protocol_fds: tuple[int, int]) -> None:
    from mcp.server.stdio import stdio_server

    stdin, stdout = await stdio_transport.open_streams(*protocol_fds)
    async with stdio_server(stdin=stdin, stdout=stdout) as (read_stream, write_stream):
        lowlevel = mcp._lowlevel_server  # noqa: SLF001 - run_stdio_async() offers no stream parameter
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def log_execution(info: dict[str, Any]) -> None:
    """Say at start-up how skills run: sandbox, the limits in force (and which are weaker), environments."""
    log.info("skill runs: sandbox %s%s, environment %s, %d MiB memory, %d bytes of output per stream, "
             "%d at once, dependency environments in %s (%s, %s); %d secret values redacted",
             info["sandbox"], "" if info["sandbox_network"] else " without network", info["skill_env"],
             info["memory_mb"], info["max_output_bytes"], info["concurrency"], info["env_dir"],
             info["installer"], "source builds allowed" if info["source_builds"] else "wheels only",
             info["redacted_variables"])
    for what, text in info["in_force"].items():
        log.info("skill runs, %s: %s", what, text)
    if info["sandbox_note"] and info["sandbox"] != "bwrap":
        log.warning("SELFMCP_SANDBOX=auto: no bubblewrap because %s; runs are confined by %s. Install bubblewrap "
                    "(apt-get install bubblewrap) for the full sandbox.", info["sandbox_note"], info["sandbox"])
    if info["sandbox"] == "none":
        log.warning("SKILL RUNS ARE NOT CONFINED: a skill can read this server's database and files%s.",
                    "; skill_execute refuses to run on this public bind (set SELFMCP_SANDBOX=none to accept)"
                    if info["refused"] else "")


def log_auth(remote: RemoteAuth, *, host: str, port: int, loopback: bool, hosts: HostAllowList,
             auth_token: str | None, owner_password: str | None, public_url: str | None) -> None:
    """Log how clients connect, and warn about settings that leave the server open or weak."""
    log.info("clients connect to %s (auth: %s; allowed hosts: %s)", remote.resource_url, remote.mode,
             hosts.describe())
    if remote.mode == "none" and loopback:
        log.warning("SELFMCP_AUTH=none: every local account and every skill on this machine can use this server "
                    "without signing in. Remove SELFMCP_AUTH to require OAuth, or set SELFMCP_AUTH_TOKEN.")
    if remote.mode == "none" and not loopback:
        log.warning("!" * 78)
        log.warning("SECURITY: SELFMCP_AUTH=none on %s. Anyone who can reach port %d can run code on this "
                    "machine with this server's environment and keys.", host, port)
        log.warning("Remove SELFMCP_AUTH (OAuth is the default), or bind SELFMCP_HOST=127.0.0.1.")
        log.warning("!" * 78)
    elif remote.mode == "token":
        log.info("clients must send 'Authorization: Bearer <SELFMCP_AUTH_TOKEN>'")
    if remote.mode != "none" and auth_token and len(auth_token) < 24:
        log.warning("SELFMCP_AUTH_TOKEN is shorter than 24 characters; use e.g. "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if remote.mode != "oauth":
        return
    if owner_password and len(owner_password) < 12:
        log.warning("SELFMCP_OWNER_PASSWORD is shorter than 12 characters; anyone who guesses it can run code here")
    if not public_url and not loopback:
        log.warning("SELFMCP_PUBLIC_URL is not set: OAuth clients can connect only through %s; set it to the "
                    "https address clients use.", remote.resource_url)
    if owner_password:
        log.info("owner password: SELFMCP_OWNER_PASSWORD")


def ensure_owner_password(remote: RemoteAuth, owner_password: str | None, *, reachable: bool) -> None:
    """In OAuth mode with no SELFMCP_OWNER_PASSWORD, create the stored one on first start and print it once."""
    if remote.mode != "oauth" or owner_password or remote.provider is None:
        return
    password = oauth.ensure_owner_password(remote.provider.db)
    if password is None:
        log.info("owner password: the one printed at first start (new one: python3 server.py --reset-owner-password)")
        return
    print_owner_password(password, remote, reachable=reachable)


def print_owner_password(password: str, remote: RemoteAuth, *, reachable: bool) -> None:
    """Print a newly created owner password once, to stderr whatever the log level.

    The one deliberate exception to "never log a secret": only its hash is stored, so this is
    the owner's only chance to see it. `reachable` is false on a public bind with no public URL.
    """
    where = (f"Add {remote.resource_url} as a custom connector in Claude.ai and sign in with it."
             if reachable else
             "Set SELFMCP_PUBLIC_URL to this server's https address, add <that address>/mcp as a custom "
             "connector in Claude.ai, and sign in with it.")
    print("\n".join(["=" * 78,
                     f"selfMCP owner password (shown only this once): {password}",
                     where,
                     "Set SELFMCP_OWNER_PASSWORD to choose your own, or run",
                     "`python3 server.py --reset-owner-password` for a new one.",
                     "=" * 78]), file=sys.stderr, flush=True)


def database_fault(db_path: Any, exc: BaseException) -> int:
    """Say in one line why the database cannot be used and what to do (never a traceback); the exit status."""
    reason = str(exc) if isinstance(exc, db.OpenFailed) else db.describe_open_failure(db_path, exc)
    print(f"selfmcp: cannot use the database (SELFMCP_DB_PATH={db_path}): {reason}", file=sys.stderr)
    return 1
