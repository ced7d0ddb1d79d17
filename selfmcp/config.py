"""How server.Settings.from_env reads the execution and remote SELFMCP_* settings (it is their only caller).

Every bad value is a `ConfigError` naming the variable, the value and what would work.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfmcp.remote import http_security, oauth
from selfmcp.runtime import SKILL_ENV_MODES, ExecutionConfig


class ConfigError(ValueError):
    """An environment setting with a value the server cannot use."""


def execution_settings(env: Mapping[str, str], *, public: bool = False) -> ExecutionConfig:
    """SELFMCP_ENV_DIR, _EXEC_MEMORY_MB, _EXEC_MAX_OUTPUT, _EXEC_CONCURRENCY, _EXEC_MAX_PROCS, _EXEC_DISK_MB,
    _SANDBOX, _SANDBOX_NETWORK, _SKILL_ENV, _ALLOW_SOURCE_BUILDS; `public`: unconfined runs are refused."""

    def number(name: str, default: int, low: int) -> int:
        text = env.get(name, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise ConfigError(f"{name}={text!r} is not a whole number of at least {low}.")
        return value

    sandbox = (env.get("SELFMCP_SANDBOX") or "auto").strip().lower()
    if sandbox not in ("auto", "bwrap", "landlock", "none"):
        raise ConfigError(f"SELFMCP_SANDBOX={sandbox!r} is not one of auto, bwrap, landlock, none.")
    builds = (env.get("SELFMCP_ALLOW_SOURCE_BUILDS") or "0").strip().lower()
    if builds not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"SELFMCP_ALLOW_SOURCE_BUILDS={builds!r} is not 0 or 1.")
    network = (env.get("SELFMCP_SANDBOX_NETWORK") or "1").strip().lower()
    if network not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"SELFMCP_SANDBOX_NETWORK={network!r} is not 0 or 1.")
    skill_env = (env.get("SELFMCP_SKILL_ENV") or "inherit").strip().lower()
    if skill_env not in SKILL_ENV_MODES:
        raise ConfigError(f"SELFMCP_SKILL_ENV={skill_env!r} is not one of {', '.join(SKILL_ENV_MODES)}.")
    return ExecutionConfig(
        env_dir=Path(env["SELFMCP_ENV_DIR"]) if env.get("SELFMCP_ENV_DIR") else None,
        memory_mb=number("SELFMCP_EXEC_MEMORY_MB", 1024, 0),
        max_output_bytes=number("SELFMCP_EXEC_MAX_OUTPUT", 1 << 20, 1),
        concurrency=number("SELFMCP_EXEC_CONCURRENCY", 4, 1),
        sandbox=sandbox,
        sandbox_network=network in ("1", "true", "yes", "on"),
        skill_env=skill_env,
        max_processes=number("SELFMCP_EXEC_MAX_PROCS", 128, 1),
        workdir_mb=number("SELFMCP_EXEC_DISK_MB", 256, 1),
        allow_source_builds=builds in ("1", "true", "yes", "on"),
        public_bind=public,
    )


def remote_settings(env: Mapping[str, str], transport: str, host: str, port: int) -> dict[str, Any]:
    """SELFMCP_AUTH(_TOKEN), _OWNER_PASSWORD, _PUBLIC_URL (or Replit's domain), _ALLOWED_HOSTS, _TRUSTED_PROXIES."""
    token = env.get("SELFMCP_AUTH_TOKEN") or None
    mode = (env.get("SELFMCP_AUTH") or "").strip().lower()
    if mode and mode not in oauth.AUTH_MODES:
        raise ConfigError(f"SELFMCP_AUTH={mode!r} is not one of {', '.join(oauth.AUTH_MODES)}.")
    loopback = http_security.is_loopback(host)
    if transport == "stdio":
        mode = "none"
    elif not mode:
        mode = "token" if token and loopback else "oauth"
    if mode == "token" and not token:
        raise ConfigError("SELFMCP_AUTH=token needs SELFMCP_AUTH_TOKEN: a long random string clients send as "
                          "'Authorization: Bearer <token>'.")
    replit_domains = [d.strip() for d in [*env.get("REPLIT_DOMAINS", "").split(","), env.get("REPLIT_DEV_DOMAIN", "")]
                      if d.strip()]
    try:
        public_url = (http_security.normalize_public_url(env["SELFMCP_PUBLIC_URL"]) if env.get("SELFMCP_PUBLIC_URL")
                      else http_security.replit_public_url(env.get("REPLIT_DOMAINS"), env.get("REPLIT_DEV_DOMAIN")))
    except ValueError as exc:
        raise ConfigError(f"SELFMCP_PUBLIC_URL: {exc}.") from None
    base = public_url or http_security.default_public_url(host, port)
    if mode == "oauth" and not http_security.is_secure_origin(base):
        raise ConfigError(f"OAuth needs an https address, and clients would reach this server at {base}: set "
                          "SELFMCP_PUBLIC_URL=https://... (behind a TLS proxy), or use SELFMCP_AUTH=token.")
    extra = [h.strip() for h in env.get("SELFMCP_ALLOWED_HOSTS", "").split(",") if h.strip()]
    try:
        proxies = http_security.parse_trusted_proxies(env.get("SELFMCP_TRUSTED_PROXIES", ""))
    except ValueError as exc:
        raise ConfigError(f"SELFMCP_TRUSTED_PROXIES: {exc}.") from None
    return {"auth": mode, "auth_token": token, "owner_password": env.get("SELFMCP_OWNER_PASSWORD") or None,
            "public_url": public_url, "allowed_hosts": tuple(extra + replit_domains), "trusted_proxies": proxies,
            "secret_key": env.get("SELFMCP_SECRET_KEY") or None,
            "cimd_loopback": env.get("SELFMCP_CIMD_LOOPBACK") == "1"}
