"""`selfmcp secrets ...`: the owner's command line for the credential vault (selfmcp/vault.py).

    selfmcp secrets set SKILL NAME      read the value without echo (or one line from a pipe), store it sealed
    selfmcp secrets list                skills with vault entries: names only, never values
    selfmcp secrets delete SKILL NAME   remove one entry
    selfmcp secrets rotate-key          re-seal every entry under a new key

SKILL is a skill's id or name. The running server sees a change at the skill's next run. The
`secrets` command registers itself in the `selfmcp` command line (base.py); `run()` is the same
without it (tests call it with their own stdin and output).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from selfmcp.cli.base import Context, arg, command
from selfmcp.errors import SkillError
from selfmcp.store import SkillStore
from selfmcp.vault import Vault, key_from_text, read_or_create_key_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfmcp secrets", description="Manage the skills' credential vault.")
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("set", help="Store a key for a skill (read without echo).")
    put.add_argument("skill", help="The skill's id or name.")
    put.add_argument("name", help="The environment variable its auth_config names, e.g. ACME_API_KEY.")
    commands.add_parser("list", help="Skills with vault entries (names only).")
    delete = commands.add_parser("delete", help="Remove a skill's key from the vault.")
    delete.add_argument("skill")
    delete.add_argument("name")
    commands.add_parser("rotate-key", help="Re-seal every entry under a new vault key.")
    return parser


def read_secret(prompt: str, stdin: TextIO) -> str:
    """The value typed without echo on a terminal, or the first line of a pipe."""
    if stdin.isatty():
        return getpass.getpass(prompt)
    return stdin.readline().rstrip("\r\n")


@command("secrets", arg("action", choices=("set", "list", "delete", "rotate-key"), help="what to do"),
         arg("skill", nargs="?", metavar="SKILL", help="the skill's id or name (set, delete)"),
         arg("name", nargs="?", metavar="NAME", help="the variable its auth_config names, e.g. ACME_API_KEY"))
def secrets_command(ctx: Context, args: argparse.Namespace) -> int:
    """Keep skills' keys in the encrypted vault: set, list, delete, rotate-key.

    `selfmcp secrets set SKILL NAME` reads the value without echo (or one line from a pipe) and stores it
    encrypted for that skill only; `list` shows names, never values; `rotate-key` re-encrypts every entry
    under a new key (see the README: Giving a skill its keys).
    """
    ctx.require_database()
    argv = [args.action, *(a for a in (args.skill, args.name) if a)]
    return run(argv, db_path=ctx.db_path, secret_key=ctx.settings().secret_key)


def run(argv: list[str], *, db_path: str | os.PathLike[str], secret_key: str | None,
         stdin: TextIO | None = None, out: Callable[[str], None] = print) -> int:
    args = _parser().parse_args(argv)
    stdin = stdin or sys.stdin
    vault = Vault(SkillStore(db_path), secret_key=secret_key)
    try:
        if args.command == "set":
            skill_id, name = vault.skill(args.skill)
            value = read_secret(f"{args.name} for skill {name!r} (input hidden): ", stdin)
            vault.set(skill_id, args.name, value)
            out(f"Stored {args.name} for skill {name!r} (id {skill_id}), encrypted with the key from {vault.source}.")
        elif args.command == "list":
            listing = vault.listing()
            if not listing:
                out("The vault is empty.")
            for entry in listing:
                unreadable = f"  (cannot be opened with the current key: {', '.join(entry['unreadable'])})" \
                    if entry["unreadable"] else ""
                out(f"{entry['skill_id']}\t{entry['name']}\t{', '.join(entry['keys'])}{unreadable}")
        elif args.command == "delete":
            skill_id, name = vault.skill(args.skill)
            if not vault.delete(skill_id, args.name):
                out(f"Skill {name!r} has no vault entry {args.name}.")
                return 1
            out(f"Deleted {args.name} of skill {name!r}.")
        else:
            return _rotate(vault, secret_key, stdin, out)
    except SkillError as exc:
        out(f"selfmcp secrets: {exc} {exc.hint}")
        return 1
    return 0


def _rotate(vault: Vault, secret_key: str | None, stdin: TextIO, out: Callable[[str], None]) -> int:
    if secret_key:
        new_text = read_secret("New SELFMCP_SECRET_KEY (input hidden): ", stdin)
        if not new_text or new_text == secret_key:
            out("selfmcp secrets: give a new, different key.")
            return 1
        counts = vault.rekey(key_from_text(new_text))
        out(f"Re-sealed {counts['resealed']} entries (dropped {counts['dropped']} unreadable ones). Set "
            "SELFMCP_SECRET_KEY to the new key and restart the server.")
        return 0
    fresh = Path(f"{vault.key_file}.new")
    fresh.unlink(missing_ok=True)
    counts = vault.rekey(read_or_create_key_file(fresh))
    os.replace(fresh, vault.key_file)
    out(f"Re-sealed {counts['resealed']} entries (dropped {counts['dropped']} unreadable ones) under a new key in "
        f"{vault.key_file}. Back it up together with the database.")
    return 0
