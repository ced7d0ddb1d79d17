"""Credentials: which environment variables hold them, and what a skill's auth_config needs.

The names are one list, used by the `selfmcp_env_keys` core skill (which reports names only) and by
output redaction (which hides the values). Three kinds of names matter to the trust boundary:

- server-only (`SELFMCP_*`): the server's own settings and secrets; no auth_config may name one;
- secret (`is_secret_name`): credential-shaped names whose values are redacted everywhere;
- public (`*_CLIENT_ID`): an OAuth client id, the one value a tool shows (in skill_auth_url's URL),
  so `client_id_env` must name such a variable and nothing else.
"""

from __future__ import annotations

import re
import secrets
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

KNOWN_SERVICES: dict[str, str] = {
    "ANTHROPIC_API_KEY": "Anthropic (Claude)",
    "OPENAI_API_KEY": "OpenAI",
    "GEMINI_API_KEY": "Google Gemini",
    "GOOGLE_API_KEY": "Google APIs",
    "GOOGLE_CLIENT_ID": "Google OAuth client",
    "GOOGLE_CLIENT_SECRET": "Google OAuth client",
    "MISTRAL_API_KEY": "Mistral",
    "COHERE_API_KEY": "Cohere",
    "GROQ_API_KEY": "Groq",
    "HF_TOKEN": "Hugging Face",
    "GITHUB_TOKEN": "GitHub",
    "GITLAB_TOKEN": "GitLab",
    "SLACK_BOT_TOKEN": "Slack",
    "DISCORD_BOT_TOKEN": "Discord",
    "TELEGRAM_BOT_TOKEN": "Telegram",
    "NOTION_API_KEY": "Notion",
    "LINEAR_API_KEY": "Linear",
    "STRIPE_API_KEY": "Stripe",
    "TWILIO_AUTH_TOKEN": "Twilio",
    "SENDGRID_API_KEY": "SendGrid",
    "AWS_ACCESS_KEY_ID": "Amazon Web Services",
    "AWS_SECRET_ACCESS_KEY": "Amazon Web Services",
    "AZURE_OPENAI_API_KEY": "Azure OpenAI",
    "DATABASE_URL": "Database connection string",
}

# Names that look like credentials. A name matching none of these is not treated as secret
# (a URL with a password in it is, whatever its name: see redact.Redactor.from_environ).
CREDENTIAL_NAME_PATTERNS: tuple[str, ...] = (
    r".*_API_KEY", r".*_TOKEN", r".*_SECRET", r".*_KEY", r".*PASSWORD", r".*_CREDENTIALS",
    r".*_SECRET_.*", r".*_AUTH_.*", r"DATABASE_URL", r".*_DATABASE_URL", r".*_PAT",
    r".*PASSWD", r".*_PASS", r".*_PWD", r"MYSQL_PWD", r".*_DSN", r".*_CONNECTION_STRING", r".*_COOKIE",
)
_CREDENTIAL_NAME_RE = re.compile("(?:" + "|".join(CREDENTIAL_NAME_PATTERNS) + ")", re.IGNORECASE)
# An OAuth client id is public (it travels in every authorization URL); its secret is not.
PUBLIC_NAME_PATTERNS: tuple[str, ...] = (r"CLIENT_ID", r".*_CLIENT_ID")
_PUBLIC_NAME_RE = re.compile("(?:" + "|".join(PUBLIC_NAME_PATTERNS) + ")", re.IGNORECASE)
# The server's own variables (its token, owner password, settings): never a skill's business.
SERVER_ONLY_PREFIXES: tuple[str, ...] = ("SELFMCP_",)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ENV_NAME_KEYS = ("env_var", "client_id_env", "client_secret_env", "token_env")


def is_credential_name(name: str) -> bool:
    """Whether `name` looks like a credential (what selfmcp_env_keys lists; public client ids included)."""
    return name in KNOWN_SERVICES or bool(_CREDENTIAL_NAME_RE.fullmatch(name))


def is_public_name(name: str) -> bool:
    """Whether `name` holds a value that may be shown: an OAuth client id."""
    return bool(_PUBLIC_NAME_RE.fullmatch(name))


def is_secret_name(name: str) -> bool:
    """Whether the value of `name` is redacted from everything the server returns and logs."""
    return is_credential_name(name) and not is_public_name(name)


def is_server_only(name: str) -> bool:
    return name.upper().startswith(SERVER_ONLY_PREFIXES)


def _env_name_problem(key: str, value: Any) -> str | None:
    """What is wrong with the variable an auth_config field names; None when a skill may name it."""
    if not isinstance(value, str) or not ENV_NAME_RE.fullmatch(value):
        return f"auth_config {key} must be an environment variable name; got {value!r}."
    if is_server_only(value):
        return f"auth_config {key} names {value!r}, one of the server's own variables, which no skill may use."
    if key == "client_id_env" and not is_public_name(value):
        return (f"auth_config client_id_env names {value!r}, but skill_auth_url shows its value in a URL, so it "
                "must name an OAuth client id variable (ending in _CLIENT_ID).")
    return None


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host; urlsplit raises ValueError on e.g. 'http://[::1'."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def auth_config_problem(auth_config: Any) -> str | None:
    """What is wrong with a (non-empty) auth_config, in one sentence; None when it is valid."""
    if not isinstance(auth_config, dict):
        return "auth_config must be an object."
    kind = auth_config.get("type")
    if kind == "api_key":
        problem = _env_name_problem("env_var", auth_config.get("env_var"))
        if problem:
            return problem
    elif kind == "oauth2":
        auth_url = auth_config.get("auth_url")
        if not isinstance(auth_url, str) or not _is_http_url(auth_url):
            return f"oauth2 auth_config needs auth_url, an http(s) URL; got {auth_url!r}."
        for key in ("client_id_env", "client_secret_env", "token_env"):
            value = auth_config.get(key)
            problem = _env_name_problem(key, value) if value is not None or key == "client_id_env" else None
            if problem:
                return problem
        scopes = auth_config.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            return "oauth2 auth_config scopes must be a list of strings."
    else:
        return f"Unknown auth_config type {kind!r}; use 'api_key' or 'oauth2'."
    # Every field that names a variable (an `*_env` key), used by this type or not, follows the same rule.
    for key, value in auth_config.items():
        if isinstance(key, str) and (key.endswith("_env") or key == "env_var") and value is not None:
            problem = _env_name_problem(key, value)
            if problem:
                return problem
    return None


def required_env_vars(auth_config: Mapping[str, Any] | None) -> list[str]:
    """Environment variables a skill's auth_config says must be set before it runs."""
    if not auth_config:
        return []
    if auth_config.get("type") == "api_key":
        return [auth_config["env_var"]]
    names = [auth_config.get(k) for k in ("client_id_env", "client_secret_env", "token_env")]
    return [n for n in names if n]


def missing_env_vars(auth_config: Mapping[str, Any] | None, environ: Mapping[str, str],
                     have: Collection[str] = ()) -> list[str]:
    """Required variables neither the server's environment nor the skill's vault entries (`have`) provide."""
    return [n for n in required_env_vars(auth_config) if not environ.get(n) and n not in have]


def replit_secrets_url(environ: Mapping[str, str]) -> str | None:
    owner, slug = environ.get("REPL_OWNER"), environ.get("REPL_SLUG")
    if owner and slug:
        return f"https://replit.com/@{urllib.parse.quote(owner)}/{urllib.parse.quote(slug)}#secrets"
    return None


def auth_instructions(auth: Mapping[str, Any], environ: Mapping[str, str], *, have: Collection[str] = (),
                      url: str | None = None) -> dict[str, Any]:
    """How the user supplies what a (validated) auth_config needs: env vars, instructions, OAuth2 link.

    `have`: names the skill's vault entries provide; `url`: a link to this server's page where the user
    enters the values (or, for OAuth2, connects the account), when the server can serve one.
    """
    missing = missing_env_vars(auth, environ, have)
    replit = replit_secrets_url(environ)
    where = f"add it in the Replit Secrets panel ({replit}) and restart" if replit else \
        "set it in the server's environment (or the env block of your MCP client config) and restart the server"
    out: dict[str, Any] = {"type": auth["type"], "env_vars": required_env_vars(auth), "missing": missing,
                           "ready": not missing}
    if auth["type"] == "api_key":
        extra = auth.get("instructions") or "Get an API key from the service's developer console."
        out["instructions"] = f"{extra} Then {where}: {auth['env_var']}=<your key>."
    else:
        client_id = environ.get(auth["client_id_env"])
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
    if url:
        out["url"] = url
        if auth["type"] == "oauth2":
            out["auth_url"] = url
            out.pop("state", None)
            out["instructions"] = ("Show the user this link: they open it, enter the owner password and connect "
                                   "their account; selfMCP keeps the tokens encrypted for this skill and refreshes "
                                   "them. It works once, for 10 minutes.")
        else:
            out["instructions"] = (f"{auth.get('instructions') or ''} Show the user this link: they open it, enter "
                                   f"the owner password and {auth['env_var']}; it is stored encrypted for this skill "
                                   "only. It works once, for 10 minutes.").strip()
    if replit:
        out["replit_secrets_url"] = replit
    return out
