"""What every `selfmcp` command is built from: the command registry, output tables, failures, the context.

A command is one function decorated with `@command(name, *arguments)`; its docstring is its --help.
It returns what to print (a `Table`, a dict, a str) or an exit code after printing itself, and
raises `CommandFailed` (exit 1) or `UsageError` (exit 2), or lets a registry `SkillError` through.

The registry, the embedder and the settings are built only by server.py (the house rule: nothing
imports server, and only server imports skills). It hands them over as a `Backend`; a command that
needs them and was started without one (`selfmcp show`, `python3 -m selfmcp show`) re-executes the
same command line through server.py. Commands that read the store alone (`list`) never pay for that.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OK, FAILURE, USAGE = 0, 1, 2
SERVER_PY = Path(__file__).resolve().parents[2] / "server.py"


class CommandFailed(Exception):
    """A failure reported in the error shape: code, message, hint (exit 1)."""

    def __init__(self, code: str, message: str, hint: str = "", **details: Any) -> None:
        super().__init__(message)
        self.code, self.hint, self.details = code, hint, details


class UsageError(CommandFailed):
    """Arguments that parse but make no sense (exit 2)."""


# ------------------------------------------------------------------------------ the command registry

Argument = tuple[tuple[str, ...], dict[str, Any]]


@dataclass
class Command:
    name: str
    help: str
    description: str
    arguments: Sequence[Argument]
    run: Callable[[Context, argparse.Namespace], Any]


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **kwargs: Any) -> Argument:
    """One `add_argument` call, written where the command is."""
    return flags, kwargs


def command(name: str, *arguments: Argument) -> Callable[[Callable[..., Any]], Any]:
    """Register `fn(ctx, args)` as `selfmcp NAME`: the first docstring line is the help, the docstring the
    description shown by `selfmcp NAME --help`."""
    def register(fn: Callable[[Context, argparse.Namespace], Any]) -> Callable[[Context, argparse.Namespace], Any]:
        doc = (fn.__doc__ or "").strip()
        COMMANDS[name] = Command(name, doc.partition("\n")[0].strip(), doc, arguments, fn)
        return fn
    return register


# ------------------------------------------------------------------------------ output

@dataclass
class Table:
    """Rows shown to people as aligned columns; --json prints `data` (or the rows themselves)."""

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


def progress(total: int, what: str) -> Any:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="skill", file=sys.stderr, disable=None, leave=False)


# ------------------------------------------------------------------------------ context

@dataclass
class Backend:
    """What only server.py may build, handed to the command line: `server.Settings.from_env`, `ConfigError`,
    `create_server` (whose `.registry` is the registry the server would use) and `main` (`main([])` serves)."""

    load_settings: Callable[[], Any]
    config_error: type[Exception]
    create_server: Callable[[Any], Any]
    serve: Callable[[list[str]], int]


@dataclass
class Context:
    """What a command works on: the database, and the settings and registry built on first use."""

    db_path: Path
    as_json: bool = False
    backend: Backend | None = None
    relaunch_argv: list[str] | None = None  # the command line to re-execute through server.py, if started alone
    _settings: Any = field(default=None, repr=False)
    _registry: Any = field(default=None, repr=False)

    def require_backend(self) -> Backend:
        if self.backend is not None:
            return self.backend
        if self.relaunch_argv is None:
            raise RuntimeError("this command needs cli.main(argv, backend) (server.main passes it)")
        if not SERVER_PY.is_file():
            raise CommandFailed("server_not_found", f"This command runs through server.py, which is not at "
                                f"{str(SERVER_PY)!r}.", "Run it as `python3 server.py COMMAND` from the checkout.")
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, str(SERVER_PY), *self.relaunch_argv])

    def settings(self) -> Any:
        """server.Settings from the environment, with --db as the database."""
        if self._settings is None:
            backend = self.require_backend()
            try:
                settings = backend.load_settings()
            except backend.config_error as exc:
                raise CommandFailed("configuration_error", str(exc), "Fix the environment variable named.") from None
            settings.db_path = self.db_path
            self._settings = settings
        return self._settings

    def registry(self, *, create: bool = False) -> Any:
        """The registry the server would use on this database (same embedder and execution settings); with
        `create`, a missing database is made, with its core skills, as a server's first start would."""
        if self._registry is None:
            if not create:
                self.require_database()
            self._registry = self.require_backend().create_server(self.settings()).registry
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
