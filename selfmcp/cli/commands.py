"""The commands of `selfmcp` (see base.py for the command registry, output and exit codes).

Each is one `@command` function: its docstring is its --help, its body calls the registry or the
store. Imports stay inside the functions, so a command loads only what it uses.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import os
import secrets
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import db
from selfmcp import serverlock, skillmd

from selfmcp.cli.base import FAILURE, OK, CommandFailed, Context, Table, UsageError, arg, command, progress

SKILL = arg("skill", metavar="SKILL", help="the skill's id or name")
FORCE = "--force"


# ------------------------------------------------------------------------------ serving

@command("serve", arg("--transport", choices=("streamable-http", "sse", "stdio"), help="default: $SELFMCP_TRANSPORT"),
         arg("--host", help="bind address (default: $SELFMCP_HOST, else 0.0.0.0)"),
         arg("--port", type=int, help="port (default: $SELFMCP_PORT or $PORT, else 8000)"))
def serve(ctx: Context, args: argparse.Namespace) -> int:
    """Run the MCP server on the database (what `python3 server.py` does).

    Every other setting comes from the SELFMCP_* environment variables (see the README).
    """
    backend = ctx.require_backend()
    os.environ["SELFMCP_DB_PATH"] = str(ctx.db_path)
    for name, value in (("SELFMCP_TRANSPORT", args.transport), ("SELFMCP_HOST", args.host),
                        ("SELFMCP_PORT", args.port)):
        if value is not None:
            os.environ[name] = str(value)
    return backend.serve([])


# ------------------------------------------------------------------------------ reading skills

@command("list")
def list_skills(ctx: Context, args: argparse.Namespace) -> Table:
    """List the active skills: id, name and a one-line description."""
    from selfmcp.store import SkillStore

    ctx.require_database()
    store = SkillStore(ctx.db_path)
    skills: list[dict[str, Any]] = []
    after = 0
    with store.read() as tx:
        while page := tx.summary_page(after, 5000):
            skills.extend(json.loads(summary) for _, summary in page)
            after = page[-1][0]
    return Table(("id", "name", "short_description"), skills, data={"skills": skills, "total": len(skills)},
                 footer=f"{len(skills)} skill{'s' * (len(skills) != 1)}")


@command("search", arg("query", metavar="QUERY", help="what you need, in plain words"),
         arg("--mode", choices=("hybrid", "keyword", "vector"), default="hybrid", help="default: hybrid"),
         arg("--top-k", type=int, default=10, help="how many results (1-50, default 10)"))
def search(ctx: Context, args: argparse.Namespace) -> Table:
    """Find skills for a task, best first (the ranking skill_search uses)."""
    result = ctx.registry().search(args.query, args.mode, args.top_k)
    rows = [{**r, "score": f"{r['score']:.3f}"} for r in result["results"]]
    return Table(("id", "name", "score", "short_description"), rows, data=result, footer=result.get("note", ""))


@command("show", SKILL, arg("--version", type=int, metavar="N", help="show version N instead of the current one"),
         arg("--history", action="store_true", help="add the list of versions"))
def show(ctx: Context, args: argparse.Namespace) -> Any:
    """Show a skill: its fields, then its body."""
    detail = ctx.registry().get_detail(ctx.skill_id(args.skill), version=args.version, include_history=args.history)
    if ctx.as_json:
        return detail
    version = f"{detail['version']}" + (f" (historical; current is {detail['current_version']})"
                                        if detail.get("historical") else "")
    fields = {"id": detail["id"], "name": detail["name"], "version": version, "description": detail["description"],
              "dependencies": ", ".join(detail["dependencies"]) or "-",
              "auth_config": json.dumps(detail["auth_config"]) if detail["auth_config"] else "-",
              "params_schema": json.dumps(detail["params_schema"]) if detail["params_schema"] else "-",
              "updated_at": detail.get("updated_at") or detail.get("changed_at")}
    width = max(len(k) for k in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields.items()]
    if args.history:
        lines += ["", _history_table(detail["history"]).render()]
    print("\n".join(lines) + "\n\n" + detail["body"].rstrip("\n"))
    return OK


@command("run", SKILL, arg("--params", default="{}", metavar="JSON", help="a JSON object (SELFMCP_PARAMS)"),
         arg("--timeout", type=float, default=30, help="seconds, 1-600 (default 30)"))
def run(ctx: Context, args: argparse.Namespace) -> Any:
    """Run a skill as skill_execute does; print its stdout (and stderr to stderr).

    Exits 0 when the skill exits 0, else 1. With --json, prints the whole result.
    """
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise UsageError("invalid_params", f"--params is not JSON: {exc}.", "Pass a JSON object, e.g. '{\"a\": 1}'.")

    import anyio

    registry = ctx.registry()
    result = anyio.run(functools.partial(registry.execute, ctx.skill_id(args.skill), params, args.timeout))
    if ctx.as_json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        sys.stdout.write(result["stdout"])
        sys.stderr.write(result["stderr"])
        if result["timed_out"]:
            print(f"selfmcp: the skill timed out after {args.timeout:g} s.", file=sys.stderr)
    return OK if result["exit_code"] == 0 and not result["timed_out"] else FAILURE


# ------------------------------------------------------------------------------ history

def _history_table(history: list[dict[str, Any]]) -> Table:
    rows = [{**h, "change": h["change"] + (f" from {h['restored_from']}" if "restored_from" in h else "")}
            for h in history]
    return Table(("version", "changed_at", "change", "changed_fields", "size"), rows, data=history)


@command("history", SKILL)
def history(ctx: Context, args: argparse.Namespace) -> Table:
    """List a skill's versions: number, time, what changed, body size in bytes."""
    detail = ctx.registry().get_detail(ctx.skill_id(args.skill), include_history=True)
    table = _history_table(detail["history"])
    table.data = {"id": detail["id"], "name": detail["name"], "version": detail["version"],
                  "history": detail["history"]}
    return table


@command("diff", SKILL, arg("a", type=int, metavar="A", help="the older version"),
         arg("b", type=int, metavar="B", help="the newer version"))
def diff(ctx: Context, args: argparse.Namespace) -> Any:
    """Show what changed from version A to version B: a unified diff of the body and of each changed field."""
    result = ctx.registry().get_detail(ctx.skill_id(args.skill), version=args.b, diff_from=args.a)["diff"]
    if ctx.as_json:
        return result
    if not result["diffs"]:
        return f"Versions {args.a} and {args.b} have the same content."
    return "".join(result["diffs"].values()).rstrip("\n")


@command("rollback", SKILL, arg("version", type=int, metavar="VERSION", help="the version to make current"),
         arg("--expected-version", type=int, metavar="N", help="refuse unless the skill is at version N"))
def rollback(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Make an earlier version current again, as a new version (history is never rewritten)."""
    return ctx.registry().update(ctx.skill_id(args.skill), restore_version=args.version,
                                 expected_version=args.expected_version)


# ------------------------------------------------------------------------------ writing skills

def _read_source(path: Path) -> tuple[str, dict[str, Any], list[str]]:
    """(body, what the file says about itself: name/description, requirements) of a file or a skill folder."""
    requirements: list[str] = []
    if path.is_dir():
        folder = path
        candidates = [path / "SKILL.md"] if (path / "SKILL.md").is_file() else sorted(path.glob("*.py"))
        if len(candidates) != 1:
            raise UsageError("invalid_source", f"{str(path)!r} holds no SKILL.md and not exactly one .py file.",
                             "Point at a SKILL.md, a .py file, or a folder with a SKILL.md.")
        path = candidates[0]
        req = folder / "requirements.txt"
        if req.is_file():
            requirements = [line.strip() for line in req.read_text().splitlines()
                            if line.strip() and not line.lstrip().startswith("#")]
    elif not path.is_file():
        raise UsageError("invalid_source", f"No file or folder at {str(path)!r}.", "Check the path.")
    body = path.read_text(encoding="utf-8")
    meta: dict[str, Any] = {}
    parsed = skillmd.parse_body(body)
    if parsed.is_markdown:
        meta = {k: v for k, v in parsed.frontmatter.items() if k in ("name", "description") and isinstance(v, str)}
    else:

        meta["name"] = path.stem
        try:
            doc = ast.get_docstring(ast.parse(body))
        except SyntaxError:
            doc = None  # the registry reports the syntax error with its line
        if doc:
            meta["description"] = doc.strip().split("\n\n")[0]
    if path.name == "SKILL.md" and "name" not in meta:
        meta["name"] = path.parent.resolve().name
    return body, meta, requirements


SOURCE = arg("path", metavar="PATH", help="a .py file, a SKILL.md, or a folder with a SKILL.md (and requirements.txt)")
NAME = arg("--name", help="default: the SKILL.md frontmatter name, else the file name")
DESCRIPTION = arg("--description", help="default: the frontmatter description, else the module docstring")
DEP = arg("--dep", action="append", metavar="REQ", help="a pip requirement (repeatable); adds to requirements.txt")


@command("create", SOURCE, NAME, DESCRIPTION, DEP)
def create(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Store a new skill from a file or folder (as skill_create does)."""
    body, meta, requirements = _read_source(Path(args.path))
    name, description = args.name or meta.get("name"), args.description or meta.get("description")
    if not description:
        raise UsageError("invalid_description", "The file does not describe itself.",
                         "Pass --description, or add a docstring or a frontmatter description.")
    return ctx.registry(create=True).create(name, description, body, requirements + (args.dep or []))


@command("edit", SKILL, arg("path", nargs="?", metavar="PATH", help="new body from a file or folder (optional)"),
         arg("--name", help="rename the skill"), arg("--description", help="new description"), DEP,
         arg("--expected-version", type=int, metavar="N", help="refuse unless the skill is at version N"))
def edit(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Update a skill from a file or folder, and/or change its name, description or dependencies."""
    body = None
    deps = args.dep
    if args.path:
        body, _, requirements = _read_source(Path(args.path))
        deps = (requirements + (args.dep or [])) or None
    return ctx.registry().update(ctx.skill_id(args.skill), name=args.name, description=args.description, body=body,
                                 dependencies=deps, expected_version=args.expected_version)


@command("delete", SKILL)
def delete(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Soft-delete a skill (its history stays; `create` with its name brings it back)."""
    return ctx.registry().delete(ctx.skill_id(args.skill))


# ------------------------------------------------------------------------------ Agent Skills folders

def _step_bar(what: str) -> Any:
    """A progress callback (done, total, label) for transfer.py, drawing a bar on a terminal."""
    bars: list[Any] = []

    def step(done: int, total: int, label: str) -> None:
        if not bars:
            bars.append(progress(total, what))
        bars[0].set_postfix_str(label, refresh=False)
        bars[0].update(done - bars[0].n)
        if done == total:
            bars[0].close()
    return step


@command("import", arg("source", metavar="SOURCE", help="a folder, a .zip/.skill archive, or a git repository URL"),
         arg("--ref", help="the git ref to check out (a tag, branch or commit)"))
def import_skills(ctx: Context, args: argparse.Namespace) -> Any:
    """Import Agent Skills folders (SKILL.md and files) from a folder, an archive or a git repository.

    Each skill is checked before anything of it is written; a refused skill is listed with its reason
    and the command exits 1. A skill already present with the same content is left unchanged.
    """
    from selfmcp import transfer

    report = transfer.import_source(ctx.registry(create=True), args.source, ref=args.ref,
                                    progress=_step_bar("importing"))
    if ctx.as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        rows = [{"outcome": k, "skill": n} for k in ("added", "updated", "unchanged") for n in report[k]]
        rows += [{"outcome": "refused", "skill": r["skill"], "reason": f"{r['error']}: {r['reason']}"}
                 for r in report["refused"]]
        print(Table(("outcome", "skill", "reason"), rows, limit=100).render())
    return FAILURE if report["refused"] else OK


@command("export", arg("directory", metavar="DIRECTORY", help="where to write one folder per skill"))
def export_skills(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Write every active skill as an Agent Skills folder (SKILL.md and its files) under DIRECTORY."""
    from selfmcp import transfer

    report = transfer.export_all(ctx.registry(), args.directory, progress=_step_bar("exporting"))
    return report if ctx.as_json else {**report, "exported": len(report["exported"])}


# ------------------------------------------------------------------------------ database upkeep

def _check_file(path: Path) -> dict[str, Any]:
    """Integrity, schema version and skill count of a database file (read only)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            integrity = [r[0] for r in conn.execute("pragma integrity_check")]
            tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
            skills = conn.execute("select count(*) from skills where is_active = 1").fetchone()[0] \
                if "skills" in tables else None
            version = conn.execute("pragma user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        return {"integrity": str(exc), "schema_version": None, "skills": None}
    return {"integrity": "ok" if integrity == ["ok"] else "; ".join(integrity[:5]), "schema_version": version,
            "skills": skills}


@command("backup", arg("file", metavar="FILE", help="where to write the copy"),
         arg(FORCE, action="store_true", help="replace FILE if it exists"))
def backup(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Copy the database to FILE with SQLite's online backup: consistent even while a server writes.

    The copy is one snapshot (every write committed before it started), checked with PRAGMA
    integrity_check before it replaces FILE.
    """
    ctx.require_database()
    target = Path(args.file)
    if target.exists() and not args.force:
        raise CommandFailed("file_exists", f"{str(target)!r} already exists.", "Pass --force to replace it.")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    with contextlib.closing(db.connect(ctx.db_path, migrate_schema=False)) as source, \
            contextlib.closing(sqlite3.connect(partial)) as copy:
        source.backup(copy)  # one step: a single read snapshot, so concurrent writes cannot restart it
        copy.execute("pragma journal_mode = delete")  # the copy is one self-contained file
    checked = _check_file(partial)
    if checked["integrity"] != "ok":
        partial.unlink(missing_ok=True)
        raise CommandFailed("backup_failed", f"The copy failed its integrity check: {checked['integrity']}.",
                            "Run `selfmcp doctor` on the database.")
    os.chmod(partial, 0o600)
    os.replace(partial, target)
    return {"backup": str(target), "bytes": target.stat().st_size, **checked}


@command("restore", arg("file", metavar="FILE", help="a backup made by `selfmcp backup`"),
         arg(FORCE, action="store_true", help="restore even while a server holds the database"))
def restore(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Replace the database's content with a backup; refuses while a server runs on it.

    The current content is first saved beside it as <db>.before-restore. A running server is detected
    by the lock it holds on <db>.serving; stop it first (or pass --force, and restart it after).
    """
    source = Path(args.file)
    if not source.is_file():
        raise CommandFailed("file_not_found", f"No backup at {str(source)!r}.", "Check the path.")
    checked = _check_file(source)
    if checked["integrity"] != "ok" or checked["skills"] is None:
        raise CommandFailed("invalid_backup", f"{str(source)!r} is not a sound selfMCP database "
                            f"({checked['integrity']}).", "Use a file written by `selfmcp backup`.")
    try:
        with serverlock.exclusive(ctx.db_path):
            saved = _restore(ctx.db_path, source)
    except serverlock.ServerRunning:
        if not args.force:
            raise CommandFailed("server_running", f"A server is running on {str(ctx.db_path)!r}; nothing was "
                                "restored.", "Stop the server and run restore again, or pass --force.") from None
        saved = _restore(ctx.db_path, source)
    return {"restored": str(ctx.db_path), "from": str(source), "previous_saved_as": saved, **checked}


def _restore(db_path: Path, source: Path) -> str | None:


    saved = None
    if db_path.exists():
        saved_path = db_path.with_name(db_path.name + ".before-restore")
        saved_path.unlink(missing_ok=True)
        with contextlib.closing(db.connect(db_path, migrate_schema=False)) as current, \
                contextlib.closing(sqlite3.connect(saved_path)) as copy:
            current.backup(copy)
            copy.execute("pragma journal_mode = delete")
        saved = str(saved_path)
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
            contextlib.closing(db.connect(db_path, migrate_schema=False)) as dst:
        src.backup(dst)
    with contextlib.closing(db.connect(db_path)):  # an older backup is brought to the current schema
        pass
    return saved


@command("reindex")
def reindex(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Re-embed every active skill with the configured embedder (progress bar on a terminal)."""
    registry = ctx.registry()
    with registry.store.read() as tx:
        ids = tx.active_ids()
    with progress(len(ids), "re-embedding") as bar:
        done = registry.search_index.reembed_stale(progress=lambda n, total: bar.update(n - bar.n), ids=ids)
    if done < len(ids):
        raise CommandFailed("embedder_unavailable", f"Re-embedded {done} of {len(ids)} skills: the embedder "
                            f"{registry.embedder.model_id!r} stopped answering.", "Check it and run reindex again.")
    return {"reembedded": done, "model": registry.embedder.model_id}


# ------------------------------------------------------------------------------ health

@command("doctor")
def doctor(ctx: Context, args: argparse.Namespace) -> Any:
    """Check the database (integrity, schema), the sandbox and limits, the embedder, environments and permissions.

    Exits 1 when a check fails; a warning alone exits 0.
    """
    checks: list[dict[str, str]] = []

    def add(check: str, status: str, detail: str) -> None:
        checks.append({"check": check, "status": status, "detail": detail})

    ctx.require_database()
    state = _check_file(ctx.db_path)
    add("integrity", "ok" if state["integrity"] == "ok" else "fail", state["integrity"])
    newest, version = len(db.MIGRATIONS), state["schema_version"]
    add("schema", "ok" if version == newest else ("warn" if (version or 0) < newest else "fail"),
        f"version {version} of {newest}" + (" (migrated when a server or command opens it)" if
                                              (version or 0) < newest else ""))
    add("server", "ok", "running on this file" if serverlock.server_running(ctx.db_path) else "not running")
    registry = ctx.registry()
    pending = len(registry.search_index.stale_embeddings())
    add("embedder", "ok" if not pending else "warn", f"{registry.embedder.model_id}; {state['skills']} skills, "
        f"{pending} waiting to be re-embedded" + (" (`selfmcp reindex`)" if pending else ""))
    try:
        run = registry.runtime().describe()
    except Exception as exc:  # ExecutionConfigError: a setting that cannot work
        add("sandbox", "fail", str(exc))
    else:
        add("sandbox", "ok" if run["sandbox"] != "none" else "warn",
            f"{run['sandbox']} (network {'on' if run['sandbox_network'] else 'off'})"
            + (f": {run['sandbox_note']}" if run.get("sandbox_note") else ""))
        add("limits", "ok", f"memory {run['memory_mb'] or 'unlimited'} MB, output {run['max_output_bytes']} bytes, "
            f"{run['concurrency']} runs at once, skill environment {run['skill_env']}")
        envs, size = _disk_use(Path(run["env_dir"]))
        add("environments", "ok", f"{envs} in {run['env_dir']}, {size / 1e6:.1f} MB ({run['installer']})")
    for path in (ctx.db_path, ctx.db_path.parent):
        mode = path.stat().st_mode & 0o777
        loose = mode & (0o077 if path == ctx.db_path else 0o002)
        add(f"permissions {'file' if path == ctx.db_path else 'folder'}", "warn" if loose else "ok",
            f"{oct(mode)} {path}" + (f": others can {'read' if path == ctx.db_path else 'write'} it (OAuth token "
                                     f"hashes live here); chmod {'600' if path == ctx.db_path else 'o-w'}"
                                     if loose else ""))
    ok = all(c["status"] != "fail" for c in checks)
    if ctx.as_json:
        print(json.dumps({"ok": ok, "database": str(ctx.db_path), "checks": checks}, indent=2))
    else:
        print(Table(("check", "status", "detail"), checks, limit=None).render())
    return OK if ok else FAILURE


def _disk_use(root: Path) -> tuple[int, int]:
    if not root.is_dir():
        return 0, 0
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue  # removed while we walked
    return sum(1 for p in root.iterdir() if p.is_dir()), total


# ------------------------------------------------------------------------------ remote access

def _when(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@command("clients")
def clients(ctx: Context, args: argparse.Namespace) -> Table:
    """List the OAuth clients the owner approved, and when each was last used."""
    from selfmcp.remote import oauth

    ctx.require_database()
    rows = oauth.list_clients(ctx.db_path)
    human = [{**r, "redirect_uris": r["redirect_uris"], "created_at": _when(r["created_at"]),
              "last_used_at": _when(r["last_used_at"]) or "never"} for r in rows]
    return Table(("client_id", "client_name", "created_at", "last_used_at", "tokens", "redirect_uris"), human,
                 data=rows, footer=f"{len(rows)} client{'s' * (len(rows) != 1)}")


@command("revoke", arg("client", metavar="CLIENT", help="a client_id from `selfmcp clients`"))
def revoke(ctx: Context, args: argparse.Namespace) -> dict[str, Any]:
    """Sign an OAuth client out for good: delete it with its tokens (it must be approved again)."""
    from selfmcp.remote import oauth

    ctx.require_database()
    if not oauth.revoke_client(ctx.db_path, args.client):
        raise CommandFailed("client_not_found", f"No OAuth client {args.client!r}.",
                            "Run `selfmcp clients` for the client ids.")
    return {"revoked": args.client}


@command("token", arg("--rotate", action="store_true", help="make a new token and say where to set it"))
def token(ctx: Context, args: argparse.Namespace) -> Any:
    """Print the static bearer token (SELFMCP_AUTH_TOKEN), or make a new one with --rotate.

    The token lives in the server's environment, not in the database or a file beside it, where a
    skill could read it. --rotate prints a new random token: set it as SELFMCP_AUTH_TOKEN where the
    server's environment is defined (Replit Secrets, the service unit, the client configs) and restart
    the server; the old token stops working then.
    """
    if args.rotate:
        new = secrets.token_urlsafe(32)
        if ctx.as_json:
            return {"token": new, "set_as": "SELFMCP_AUTH_TOKEN", "then": "restart the server"}
        return (f"{new}\n\nSet it as SELFMCP_AUTH_TOKEN in the server's environment and restart the server; "
                "clients then send 'Authorization: Bearer <token>'.")
    settings = ctx.settings()
    if not settings.auth_token:
        raise CommandFailed("no_token", "No static token is set (SELFMCP_AUTH_TOKEN is empty).",
                            "Run `selfmcp token --rotate` for one, set it as SELFMCP_AUTH_TOKEN and restart.")
    if ctx.as_json:
        return {"token": settings.auth_token, "source": "SELFMCP_AUTH_TOKEN", "auth": settings.auth}
    return settings.auth_token


@command("reset-owner-password")
def reset_owner_password(ctx: Context, args: argparse.Namespace) -> Any:
    """Replace the owner password of the consent page and sign every OAuth client out."""
    from selfmcp.remote import oauth

    password = oauth.reset_owner_password(ctx.db_path)
    if ctx.as_json:
        return {"owner_password": password, "database": str(ctx.db_path)}
    return (f"New owner password for {ctx.db_path}: {password}\n"
            "Every OAuth client is signed out and must sign in again with it.")
