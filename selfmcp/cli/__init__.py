"""The `selfmcp` command line: look inside a registry, change it, back it up, without a model.

    selfmcp list                      selfmcp show greeter --version 2
    selfmcp history greeter           selfmcp diff greeter 1 3
    selfmcp backup /backups/s.db      selfmcp --json doctor

Commands call the same code as the server (skills.Registry, the store, selfmcp.remote.oauth), never the
server over MCP, and use SQLite's own locking, so they are safe while a server runs on the same file.
Human output is aligned tables; `--json` prints one JSON document for scripts. Exit codes: 0 ok,
1 failure (the error's message and hint on stderr, or the error shape as JSON with --json), 2 usage.

`main(argv, backend)` parses and runs one command. The commands are in `commands` (one `@command`
function each, see `base`); a later module adds its own (`import`/`export`, `secrets`) the same way
and is imported here. Imports are lazy: `list` needs only the store, so it starts without numpy, the
embedding model or mcp.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import selfmcp.cli.commands  # noqa: F401 - registers the commands
import selfmcp.cli.vault_commands  # noqa: F401 - registers `secrets`
from selfmcp.cli.base import COMMANDS, FAILURE, OK, USAGE, Backend, CommandFailed, Context, Table, UsageError

__all__ = ["Backend", "COMMANDS", "build_parser", "main"]


def _default_db() -> str:
    # The one setting needed before anything is imported: `list` must start fast. server.Settings reads the same.
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
                    "`selfmcp serve` (or python3 server.py with no command) runs the MCP server.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage. `selfmcp COMMAND --help` describes a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, parents=[common], help=cmd.help, description=cmd.description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in cmd.arguments:
            p.add_argument(*flags, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None, backend: Backend | None = None) -> int:
    """Run one command; return its exit code. server.main passes `backend`; without it, a command that needs
    the registry re-executes itself through server.py (only when `argv` came from the process itself)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list == ["--reset-owner-password"]:  # the older spelling, kept working
        args_list = ["reset-owner-password"]
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return USAGE
    ctx = Context(Path(getattr(args, "db", None) or _default_db()), as_json=getattr(args, "json", False),
                  backend=backend, relaunch_argv=args_list if argv is None else None)
    try:
        out = COMMANDS[args.command].run(ctx, args)
    except CommandFailed as exc:
        status = USAGE if isinstance(exc, UsageError) else FAILURE
        return _fail(ctx, exc.code, str(exc), exc.hint, status, exc.details)
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
