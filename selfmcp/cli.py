"""The `selfmcp` command line: look inside a registry, change it, back it up, without a model.

    selfmcp list                      selfmcp show greeter --version 2
    selfmcp history greeter           selfmcp diff greeter 1 3
    selfmcp backup /backups/s.db      selfmcp --json doctor

Commands call the same code as the server (skills.Registry, the store, selfmcp.remote.oauth), never the
server over MCP, and use SQLite's own locking, so they are safe while a server runs on the same file.
Human output is aligned tables; `--json` prints one JSON document for scripts. Exit codes: 0 ok,
1 failure (the error shape's code, message and hint on stderr, or as JSON with --json), 2 usage.

Commands live in one registry (`COMMANDS`, filled by `@command`), so a later module adds its own
(`import`/`export`, `secrets`) with one decorated function. Imports are lazy: `list` needs only the
store, so it starts without numpy, the embedding model or mcp. This module is a front end, a sibling of
server.py: server settings (`Settings.from_env`) and `serve` come from server.py, imported on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OK, FAILURE, USAGE = 0, 1, 2


class CommandFailed(Exception):
    """A failure reported as the error shape: code, message, hint (exit 1)."""

    def __init__(self, code: str, message: str, hint: str = "", **details: Any) -> None:
        super().__init__(message)
        self.code, self.hint, self.details = code, hint, details


class UsageError(CommandFailed):
    """Arguments that parse but make no sense (exit 2)."""


# ------------------------------------------------------------------------------ command registry

@dataclass
class Command:
    name: str
    help: str
    description: str
    arguments: Sequence[tuple[tuple[str, ...], dict[str, Any]]]
    run: Callable[[Context, argparse.Namespace], Any]


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return flags, kwargs


def command(name: str, *arguments: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Callable[..., Any]], Any]:
    """Register `fn(ctx, args)` as `selfmcp NAME`; its docstring's first line is the help, the rest the description.

    `fn` returns what to print: a `Table`, a str, a dict (--json prints it; humans get `key: value`
    lines), or an int exit code after printing itself.
    """
    def register(fn: Callable[[Context, argparse.Namespace], Any]) -> Callable[[Context, argparse.Namespace], Any]:
        doc = (fn.__doc__ or "").strip()
        first, _, rest = doc.partition("\n")
        COMMANDS[name] = Command(name, first.strip(), doc, arguments, fn)
        return fn
    return register


@dataclass
class Table:
    """Rows for humans (aligned columns) and for --json (the `data`, or the rows themselves)."""

    columns: Sequence[str]
    rows: list[dict[str, Any]]
    data: Any = None
    footer: str = ""
    limit: int | None = 60  # longest cell shown, in characters

    def render(self) -> str:
        cells = [[_cell(row.get(c), self.limit) for c in self.columns] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.upper().ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
        return "\n".join(lines + ([self.footer] if self.footer else []))


def _cell(value: Any, limit: int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value) or "-"
    text = " ".join(str(value).split())
    return text if limit is None or len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------------------ context

class Context:
    """What a command works on: the database path, and the registry and settings built on first use."""

    def __init__(self, db_path: Path, *, as_json: bool) -> None:
        self.db_path, self.as_json = db_path, as_json
        self._settings: Any = None
        self._registry: Any = None

    def settings(self) -> Any:
        """server.Settings from the environment, with --db as the database."""
        if self._settings is None:
            import server

            try:
                settings = server.Settings.from_env()
            except server.ConfigError as exc:
                raise CommandFailed("configuration_error", str(exc), "Fix the environment variable named.") from None
            settings.db_path = self.db_path
            self._settings = settings
        return self._settings

    def registry(self, *, create: bool = False) -> Any:
        """The skills.Registry the server would use on this database (same embedder and execution settings);
        with `create`, a missing database is made, with the core skills, as a server's first start would."""
        if self._registry is None:
            import skills
            from embeddings import make_embedder

            new = create and not self.db_path.exists()
            if not new:
                self.require_database()
            s = self.settings()
            embedder = s.embedder or make_embedder(s.embed_model, use_remote=s.use_litellm, api_base=s.embed_api_base)
            self._registry = skills.Registry(self.db_path, embedder, environ=s.environ, execution=s.execution)
            if new:
                self._registry.seed_core_skills()
        return self._registry

    def require_database(self) -> None:
        if not self.db_path.exists():
            raise CommandFailed("database_not_found", f"No database at {str(self.db_path)!r}.",
                                "Pass --db PATH or set SELFMCP_DB_PATH; `selfmcp serve` creates one.")

    def skill_id(self, skill: str) -> int:
        """SKILL as given on the command line: an id, or the name of an active skill."""
        if skill.isdigit():
            return int(skill)
        from selfmcp.store import SkillStore

        self.require_database()
        with SkillStore(self.db_path).read() as tx:
            row = tx.skill_by_name(skill)
        if row is None or not row["is_active"]:
            raise CommandFailed("skill_not_found", f"No active skill named {skill!r}.",
                                "Run `selfmcp list` or `selfmcp search QUERY` to find it.")
        return row["id"]


# ------------------------------------------------------------------------------ parser and main

def _default_db() -> str:
    # The one setting needed before anything else is imported: `list` must start fast.
    return os.environ.get("SELFMCP_DB_PATH") or "selfmcp.db"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS,
                        help="SQLite database (default: $SELFMCP_DB_PATH, else ./selfmcp.db)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document instead of tables")
    parser = argparse.ArgumentParser(
        prog="selfmcp", parents=[common],
        description="Look inside and manage a selfMCP registry: skills, their history, backups, OAuth clients. "
                    "`selfmcp serve` (or no command with python3 server.py) runs the MCP server.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage. `selfmcp COMMAND --help` describes a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, parents=[common], help=cmd.help, description=cmd.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return USAGE
    ctx = Context(Path(getattr(args, "db", None) or _default_db()), as_json=getattr(args, "json", False))
    try:
        out = COMMANDS[args.command].run(ctx, args)
    except CommandFailed as exc:
        return _fail(ctx, exc.code, str(exc), exc.hint, USAGE if isinstance(exc, UsageError) else FAILURE,
                     exc.details)
    except Exception as exc:  # the registry's errors, in their own shape
        from selfmcp.errors import SkillError

        if isinstance(exc, SkillError):
            return _fail(ctx, exc.code, str(exc), exc.hint, FAILURE, exc.details)
        import sqlite3

        if isinstance(exc, sqlite3.DatabaseError):
            return _fail(ctx, "storage_unavailable", f"The database could not complete the command: {exc}.",
                         "Check --db; `selfmcp doctor` checks the file.", FAILURE, {})
        raise
    if isinstance(out, int):
        return out
    try:
        _print(ctx, out)
    except BrokenPipeError:  # `selfmcp list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OK


def _fail(ctx: Context, code: str, message: str, hint: str, status: int, details: dict[str, Any]) -> int:
    if ctx.as_json:
        from selfmcp.errors import error_body

        print(json.dumps(error_body(code, message, hint, **details), ensure_ascii=False, indent=2))
    else:
        print(f"selfmcp: {message}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
    return status


def _print(ctx: Context, out: Any) -> None:
    if out is None:
        return
    if ctx.as_json:
        data = out.data if isinstance(out, Table) and out.data is not None else (
            out.rows if isinstance(out, Table) else out)
        print(json.dumps(data, ensure_ascii=False, indent=2))
    elif isinstance(out, Table):
        print(out.render())
    elif isinstance(out, dict):
        width = max((len(k) for k in out), default=0)
        for key, value in out.items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            print(f"{key.ljust(width)}  {text}")
    else:
        print(out)


def progress(total: int, what: str) -> Any:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="skill", file=sys.stderr, disable=None, leave=False)


def _load_commands() -> None:
    from selfmcp import cli_commands  # noqa: F401 - registers the commands


_load_commands()
