"""The two core skills seeded into every registry: `selfmcp_about` and `selfmcp_env_keys`.

They are ordinary skills (searchable, executable, editable) that cannot be deleted or
renamed. Their bodies are standalone scripts: they run in a subprocess like any skill.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING

from selfmcp.credentials import CREDENTIAL_NAME_PATTERNS, KNOWN_SERVICES

if TYPE_CHECKING:
    from selfmcp.search import Search
    from selfmcp.store import SkillStore
    from selfmcp.vault import Vault

# What every client is told at initialize: the workflow with the eight tools.
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

ABOUT_SECTIONS: dict[str, str] = {
    "source_code": (
        "selfMCP is a Python project. Entry modules: server.py (settings, the eight MCP tools, the one "
        "conversion of failures into the error payload, start-up), skills.py (the registry's use cases and "
        "validation), db.py (SQLite schema as named migrations, the one connection policy), embeddings.py "
        "(embedders) and executor.py (subprocess runner; the sandbox is plugged in). Below skills.py the selfmcp/ "
        "package has one room per concern: store.py (every SQL statement on skill tables), search.py (indexes, "
        "scoring), embedwork.py (background embedding of new skills, re-embedding), runtime.py (runs and their history), confine.py and landlock.py (the sandbox: "
        "bubblewrap, Landlock, run uids, cgroups), warm.py (sandboxes started ahead of their runs), errors.py "
        "(the error shape and codes), depenv.py "
        "(dependency environments), history.py (version summaries and diffs), redact.py, credentials.py, "
        "vault.py (encrypted per-skill keys), secret_links.py and skill_oauth.py (OAuth2 for skills), schemas.py, "
        "skillmd.py, core_skills.py, serverlock.py, cli/ (the `selfmcp` command line), embedders/, and remote/ "
        "(OAuth server, consent page, client metadata documents, secrets page, HTTP guard, transports). Imports "
        "flow one way: server -> skills -> selfmcp -> db, embeddings, executor. `python3 server.py` starts it; "
        "`python3 server.py COMMAND` (or `selfmcp COMMAND`) runs the command line."
    ),
    "interface": (
        "MCP only: there is no web UI besides the OAuth consent page. Clients (Claude Desktop, Claude.ai, "
        "Claude Code, Cursor) see eight bootstrap tools and grow the toolbox by storing skills. HTTP also "
        "serves GET /health."
    ),
    "transport": (
        "SELFMCP_TRANSPORT picks the transport: streamable-http (default, served at /mcp), sse, or stdio. "
        "HTTP binds SELFMCP_HOST (default 0.0.0.0) and SELFMCP_PORT (else PORT, else 8000). Requests whose "
        "Host header is not loopback, the public URL's host or in SELFMCP_ALLOWED_HOSTS get 421 "
        "(DNS-rebinding protection)."
    ),
    "persistence": (
        "Everything lives in one SQLite file (SELFMCP_DB_PATH, default ./selfmcp.db) in WAL mode: skills, "
        "their version history, the FTS5 keyword index, embeddings, and a per-skill summary table. "
        "Each write changes the skill row, its version row, its index rows and its embedding in one transaction."
    ),
    "versioning": (
        "Every skill has a version number starting at 1. skill_update patches the given fields and bumps the "
        "version; every version's content is kept in skill_versions. skill_delete is a soft delete "
        "(is_active=0, history kept). skill_create with the name of a deleted skill reactivates it: same id, "
        "history kept, version continues. History is never rewritten: skill_get_detail(version=N) returns an old "
        "version (historical=true), include_history=true lists every version (time, change, changed fields, "
        "size) and diff_from=A adds unified diffs from version A; skill_update(restore_version=N) makes version "
        "N's content a new version, and skill_update(expected_version=N) writes only if the skill is still at "
        "version N (else version_conflict with current_version: re-read and retry)."
    ),
    "execution": (
        "skill_execute runs the skill's Python (a plain script, or the ```python blocks of a SKILL.md) as a "
        "subprocess in a fresh temporary directory and its own process group, with limits on wall-clock time "
        "(timeout 1-600 s, default 30), CPU time, memory (SELFMCP_EXEC_MEMORY_MB), file size and captured output "
        "(SELFMCP_EXEC_MAX_OUTPUT per stream). A timeout, or cancelling the call, kills every process the run "
        "started; other calls keep being answered meanwhile. Parameters arrive as JSON in SELFMCP_PARAMS (up to "
        "1 MiB) and are checked against the skill's params_schema when it has one. The run inherits the server's "
        "environment except its own credentials (SELFMCP_SKILL_ENV=declared passes only a baseline plus the "
        "auth_config variables); credential values are shown as [REDACTED:NAME] in results. The result is "
        "{stdout, stderr, exit_code, timed_out, ...}; every run is recorded and skill_get_detail shows run "
        "statistics. See the sandbox section for how runs are confined on this server."
    ),
    "sandbox": (
        "SELFMCP_SANDBOX=auto (default) uses bubblewrap when it works: own PID namespace, a read-only view of "
        "the system, the database and server directories hidden, read-only /dev and /proc/sys, /etc/shadow "
        "masked, no capabilities, no network if SELFMCP_SANDBOX_NETWORK=0, and the working directory a tmpfs of "
        "SELFMCP_EXEC_DISK_MB. A server running as root runs each run as its own unprivileged uid. Without "
        "bubblewrap, Landlock keeps the database and server files unreadable and writes inside the run's "
        "directory. Where the system allows, a cgroup bounds each run's TOTAL memory and process count "
        "(SELFMCP_EXEC_MAX_PROCS); elsewhere memory is bounded per process only. The server is not dumpable, so "
        "no run reads its environment. Dependency installs run in the same sandbox with no secrets in their "
        "environment, wheels only unless SELFMCP_ALLOW_SOURCE_BUILDS=1. With no confinement at all, a server "
        "bound beyond loopback refuses to run skills (sandbox_unavailable) unless SELFMCP_SANDBOX=none. The "
        "in_force section says what holds on this server."
    ),
    "auth": (
        "A skill may declare auth_config: {type: api_key, env_var, instructions} or {type: oauth2, auth_url, "
        "token_url, scopes, client_id_env, client_secret_env, token_env}. Before running, skill_execute checks "
        "that each variable is set on the server or stored for the skill in the vault (encrypted with AES-GCM), "
        "and otherwise returns error missing_credentials with the missing names and, over HTTP, a single-use "
        "link to a page where the user enters the key (or connects an OAuth2 account; the access token then "
        "arrives in token_env and is refreshed). Clients with URL-mode elicitation are asked to open the page "
        "and the run goes on in the same call. On the server: selfmcp secrets set SKILL NAME. Use the "
        "selfmcp_env_keys skill to see which credential variables exist "
        "(names only, never values). An auth_config may not name a SELFMCP_* variable, and "
        "client_id_env must name an OAuth client id (..._CLIENT_ID): its value is shown in the URL. The server "
        "itself is protected over HTTP on every address by SELFMCP_AUTH: oauth (the default: a built-in OAuth "
        "2.1 server; the owner approves clients with the owner password), token (SELFMCP_AUTH_TOKEN as a bearer "
        "token, the default on loopback when it is set) or none (only when set)."
    ),
    "bootstrap_tools": (
        "skill_list_summary (paged table of contents), skill_search (find by meaning or keywords), "
        "skill_get_detail (full body, dependencies, auth_config, versions), skill_execute (run it), "
        "skill_create (store a new skill, or reactivate a deleted name), skill_update (patch and bump version), "
        "skill_delete (soft delete), skill_auth_url (how to supply a missing key or OAuth grant). "
        "Workflow: list_summary -> search -> get_detail -> execute; create when nothing fits."
    ),
    "search": (
        "skill_search modes: keyword (SQLite FTS5 bm25 over name, description and frontmatter tags, with "
        "stemming, snake_case/CamelCase splitting and stop words removed), vector (cosine similarity of "
        "embeddings), hybrid (default: a weighted fusion of both, falling back to keyword results when the "
        "query cannot be embedded). Scores are in [0, 1]. Embeddings come from LiteLLM when OPENAI_API_KEY or "
        "SELFMCP_USE_LITELLM is set (model SELFMCP_EMBED_MODEL, default text-embedding-3-small), else from an "
        "offline embedder that needs no network."
    ),
    "replit_setup": (
        "Import the repository into Replit and press Run: .replit runs `python3 server.py`, which serves "
        "streamable HTTP on Replit's PORT with OAuth, and prints the owner password once in the console. Add "
        "API keys in Tools -> Secrets and restart the Repl. In Claude.ai add a custom connector with "
        "https://<your-repl-domain>/mcp and sign in with the owner password. Set SELFMCP_DB_PATH to keep the "
        "database somewhere persistent if your Repl may be reset."
    ),
}

_ABOUT_BODY = textwrap.dedent('''\
    """selfmcp_about: structured self-documentation of this selfMCP server.

    Params: {"section": "<name>"} to print one section; no params prints them all.
    """
    import json
    import os
    import sys

    SECTIONS = json.loads(__SECTIONS__)
    # What the server says is in force for this run (set by the server on every run).
    SECTIONS["in_force"] = "; ".join(f"{k}: {v}" for k, v in sorted(
        json.loads(os.environ.get("SELFMCP_SANDBOX_INFO") or "{}").items())) or "not reported"
    params = json.loads(os.environ.get("SELFMCP_PARAMS") or "{}")
    section = params.get("section")
    if section is None:
        print(json.dumps({"sections": SECTIONS}, indent=2))
    elif section in SECTIONS:
        print(json.dumps({"section": section, "text": SECTIONS[section]}, indent=2))
    else:
        print(json.dumps({
            "error": "unknown_section",
            "message": f"No section named {section!r}.",
            "hint": "Call again with one of the available sections, or with no params for all of them.",
            "available_sections": sorted(SECTIONS),
        }, indent=2))
        sys.exit(2)
''')

_ENV_KEYS_BODY = textwrap.dedent('''\
    """selfmcp_env_keys: which credential environment variables the server has. Names only, never values."""
    import json
    import os
    import re

    KNOWN_SERVICES = json.loads(__KNOWN__)
    PATTERN = re.compile("^(?:" + "|".join(json.loads(__PATTERNS__)) + ")$", re.IGNORECASE)

    known = {name: {"present": bool(os.environ.get(name)), "service": service}
             for name, service in sorted(KNOWN_SERVICES.items())}
    detected = sorted(name for name in os.environ
                      if name not in KNOWN_SERVICES and PATTERN.match(name) and os.environ.get(name))
    vault = json.loads(os.environ.get("SELFMCP_VAULT_ENTRIES") or "[]")
    print(json.dumps({"known_services": known, "detected_credential_env_vars": detected,
                      "vault_entries": vault}, indent=2))
''')


def seed(store: SkillStore, search: Search, create: Callable[[dict[str, str]], object]) -> None:
    """Create each core skill that is missing or deleted (through `create`); mark an existing one core."""
    for spec in CORE_SKILLS:
        with store.read() as tx:
            row = tx.skill_by_name(spec["name"])
        if row is None or not row["is_active"]:
            create(spec)
        elif not row["is_core"]:
            with store.write() as tx:
                tx.mark_core(row["id"])
    with store.read() as tx:
        search.core_ids = tx.core_ids()


def run_env(row: sqlite3.Row, vault: Vault) -> dict[str, str]:
    """Extra (non-secret) environment for a run of a core skill: selfmcp_env_keys gets the vault's entry names."""
    if not (row["is_core"] and row["name"] == "selfmcp_env_keys"):
        return {}
    entries = [{"skill_id": e["skill_id"], "name": e["name"], "keys": e["keys"]} for e in vault.listing() if e["keys"]]
    return {"SELFMCP_VAULT_ENTRIES": json.dumps(entries)}


def _literal(value: object) -> str:
    return repr(json.dumps(value, sort_keys=True))


CORE_SKILLS: list[dict[str, str]] = [
    {
        "name": "selfmcp_about",
        "description": (
            "Explain this selfMCP server itself: transports, persistence, versioning, execution model, auth, "
            "the eight bootstrap tools, search modes and Replit setup. Optional param 'section' "
            "(source_code, interface, transport, persistence, versioning, execution, sandbox, in_force, "
            "auth, bootstrap_tools, search, replit_setup)."
        ),
        "body": _ABOUT_BODY.replace("__SECTIONS__", _literal(ABOUT_SECTIONS)),
    },
    {
        "name": "selfmcp_env_keys",
        "description": (
            "List which API keys and credential environment variables are set on this selfMCP server "
            "(names only, never values): known_services with present/service, and "
            "detected_credential_env_vars, and vault_entries (skills with keys stored in the vault). Call before "
            "writing a skill that needs a key."
        ),
        "body": (_ENV_KEYS_BODY.replace("__KNOWN__", _literal(KNOWN_SERVICES))
                 .replace("__PATTERNS__", _literal(list(CREDENTIAL_NAME_PATTERNS)))),
    },
]
