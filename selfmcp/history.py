"""A skill's version history made readable: summaries, one version's content, and diffs between two.

Every write records the skill's new row in `skill_versions` (append only: a restore is a new
version with an old version's content). This module turns those rows into what the registry
returns; it reads through `Statements` and writes nothing.

    detail     -> skill_get_detail's record: the current one, or one version's (marked `historical`)
    summaries  -> [{version, changed_at, change, changed_fields, size, restored_from?}]
    diff       -> {from_version, to_version, changed_fields, diffs: {field: unified diff}}

It also holds skill_update's version rules: `expected_version` (checked by the registry once before
its embedding work and again inside the write transaction, so a stale writer never wins) and the
patch that restores a version.
"""

from __future__ import annotations

import difflib
import json
import sqlite3
from typing import Any

from selfmcp import skillmd
from selfmcp.errors import InvalidArgument, VersionConflict, VersionNotFound
from selfmcp.store import Statements

# Public field name -> column; the JSON columns are compared and shown as pretty JSON.
FIELDS: dict[str, str] = {"name": "name", "description": "description", "body": "body",
                          "dependencies": "dependencies_json", "auth_config": "auth_config_json",
                          "params_schema": "params_schema_json", "files": "files_json"}
_JSON_DEFAULTS: dict[str, Any] = {"dependencies": [], "auth_config": None, "params_schema": None, "files": []}


def check_version_number(value: Any, argument: str) -> int:
    """`value` as a version number (an integer of at least 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"Invalid {argument} {value!r}; versions are whole numbers from 1.",
                              hint=f"Pass {argument} as a version number from skill_get_detail's `versions`.")
    return value


def check_expected(row: sqlite3.Row, expected_version: int | None) -> None:
    """VersionConflict unless the skill `row` is at `expected_version` (None: no expectation)."""
    if expected_version is not None and row["version"] != expected_version:
        raise VersionConflict(
            f"Skill {row['id']} is at version {row['version']}, not {expected_version}; nothing was changed.",
            hint=f"Re-read it with skill_get_detail(skill_id={row['id']}), apply your change to version "
                 f"{row['version']}, and call skill_update again with expected_version={row['version']}.",
            current_version=row["version"], expected_version=expected_version)


def version_row(tx: Statements, skill_id: int, version: int, argument: str = "version") -> sqlite3.Row:
    """The recorded row of `version`, or VersionNotFound naming the versions that exist."""
    row = tx.version(skill_id, check_version_number(version, argument))
    if row is None:
        numbers = tx.version_numbers(skill_id)
        raise VersionNotFound(f"Skill {skill_id} has no version {version} (it has versions "
                              f"{_ranges(numbers) or 'none'}).", versions=numbers)
    return row


def field_values(row: sqlite3.Row) -> dict[str, Any]:
    """The content fields of a skill or version row (`files`: the manifest [{path, size, digest}]), JSON decoded."""
    out: dict[str, Any] = {}
    for field, column in FIELDS.items():
        value = row[column]
        if field in _JSON_DEFAULTS:
            value = _JSON_DEFAULTS[field] if value is None else json.loads(value)
        out[field] = value
    return out


def check_update(changes: bool, restore_version: Any, expected_version: Any) -> int | None:
    """Refuse a restore mixed with field changes; return `expected_version` checked (None: not given)."""
    if restore_version is not None and changes:
        raise InvalidArgument("restore_version cannot be combined with field changes.",
                              hint="Restore first (restore_version alone), then update the fields.")
    return None if expected_version is None else check_version_number(expected_version, "expected_version")


def prepare_update(tx: Statements, current: sqlite3.Row, patch: dict[str, Any], parsed: skillmd.ParsedBody | None,
                   restore_version: Any, expected_version: int | None) -> tuple[dict[str, Any], Any]:
    """Check `expected_version` against the skill read; for a restore, the patch (column -> value of every
    field) that makes its content `restore_version`'s, and that body parsed. Else `patch` and `parsed` as given."""
    check_expected(current, expected_version)
    if restore_version is None:
        return patch, parsed
    row = version_row(tx, current["id"], restore_version, "restore_version")
    return {column: row[column] for column in FIELDS.values()}, skillmd.parse_body(row["body"])


def changed_fields(row: sqlite3.Row, patch: dict[str, Any], *, restored: bool) -> list[str]:
    """The fields an update names (a restore: the fields whose value it changes), sorted."""
    if restored:
        return sorted(f for f, column in FIELDS.items() if row[column] != patch[column])
    return sorted(column.removesuffix("_json") for column in patch)


def detail(tx: Statements, skill: sqlite3.Row, runs: dict[str, Any], *, version: Any = None,
           include_history: bool = False, diff_from: Any = None) -> dict[str, Any]:
    """skill_get_detail's answer: the skill's current record, or with `version` that version's content
    (`historical` unless it is the current one); `include_history` adds `history`, `diff_from` a `diff`."""
    skill_id, versions = skill["id"], tx.version_numbers(skill["id"])
    target = version_row(tx, skill_id, version) if version is not None else None
    if target is None:
        out = {"id": skill_id, **field_values(skill), "version": skill["version"], "is_core": bool(skill["is_core"]),
               "created_at": skill["created_at"], "updated_at": skill["updated_at"], "versions": versions,
               "runs": runs}
    else:
        out = {"id": skill_id, **field_values(target), "version": target["version"],
               "current_version": skill["version"], "historical": target["version"] != skill["version"],
               "changed_at": target["changed_at"], "versions": versions}
    out.update(skillmd.code_fields(out["body"]))  # what runs, exactly as it will run
    if include_history:
        out["history"] = summaries(tx, skill_id)
    if diff_from is not None:
        old = version_row(tx, skill_id, diff_from, "diff_from")
        out["diff"] = diff(old, target if target is not None else version_row(tx, skill_id, skill["version"]))
    return out


def summaries(tx: Statements, skill_id: int) -> list[dict[str, Any]]:
    """Compact history, oldest first: number, time, what changed and the body's size in bytes."""
    out = []
    for row in tx.version_summaries(skill_id):
        changed = [] if row["previous"] is None else [f for f in FIELDS if row[f]]
        change = row["change"] or ("created" if row["previous"] is None else "updated")
        item: dict[str, Any] = {"version": row["version"], "changed_at": row["changed_at"], "change": change,
                                "changed_fields": changed, "size": row["size"]}
        if row["restored_from"] is not None:
            item["restored_from"] = row["restored_from"]
        out.append(item)
    return out


def diff(old: sqlite3.Row, new: sqlite3.Row) -> dict[str, Any]:
    """Unified diffs (difflib) of the body and of each other field that differs between two versions."""
    before, after = field_values(old), field_values(new)
    a, b = old["version"], new["version"]
    diffs: dict[str, str] = {}
    for field in FIELDS:
        if before[field] == after[field]:
            continue
        lines = difflib.unified_diff(_lines(before[field]), _lines(after[field]),
                                     fromfile=f"v{a}/{field}", tofile=f"v{b}/{field}")
        diffs[field] = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                               for line in lines)
    return {"from_version": a, "to_version": b, "changed_fields": list(diffs), "diffs": diffs}


def _lines(value: Any) -> list[str]:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    return text.splitlines(keepends=True)


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    parts: list[str] = []
    for n in numbers:
        if parts and n == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{n}"
        else:
            parts.append(str(n))
    return ", ".join(parts)
