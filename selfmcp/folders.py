"""A stored skill's folder: its supporting files in the store, and the folder the outside sees.

`skills.Registry` calls these from its use cases (create, update, get_detail, execution);
the Skills-over-MCP extension and import/export read `Registry.folders` (a `SkillFolders`).
The rules themselves (paths, limits, names, what runs, the presentation) are in documents.py.
"""

from __future__ import annotations

import json
from typing import Any

from selfmcp import documents, skillmd
from selfmcp.errors import InvalidFiles, NotExecutable, SkillExists, SkillNotFound
from selfmcp.store import SkillStore, Statements

FILES_HELP = ("Supporting files of the skill's folder (Agent Skills layout): relative path -> text, or "
              '{"base64": "..."} for binary, e.g. {"scripts/helper.py": "...", "assets/data.csv": "..."}. '
              "At most 512 files and 16 MiB a skill; stored byte for byte; written into the run's working "
              "directory. On skill_update, a path mapped to null removes that file; files not named stay.")


def validate_folder(files: Any, body: str, current: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Check a SKILL.md body's frontmatter; return the skill's files (path -> bytes) after applying `files`
    to `current` (a path mapped to None is removed)."""
    if skillmd.looks_like_markdown(body):
        documents.document_frontmatter(body)  # refuses YAML that readers would see differently
    if files is not None and not isinstance(files, dict):
        raise InvalidFiles(f"files must be an object of path -> content, not {type(files).__name__}.")
    merged, given = dict(current or {}), set()
    for path, value in (files or {}).items():
        path = documents.check_path(path)
        if path in given:
            raise InvalidFiles(f"Two files have the path {path!r} (after Unicode NFC normalisation).", path=path)
        given.add(path)
        if value is None:
            merged.pop(path, None)
        else:
            merged[path] = documents.decode_content(path, value)
    return documents.check_files(merged, body=body, plain_python=not skillmd.looks_like_markdown(body))


def files_json(files: dict[str, bytes]) -> str | None:
    """The manifest a skill row (and each of its versions) keeps: [{path, size, digest}]."""
    return json.dumps(documents.manifest(files)) if files else None


def stored_files(tx: Statements, row: Any) -> dict[str, bytes]:
    manifest = json.loads(row["files_json"]) if row["files_json"] else []
    blobs = tx.blobs([f["digest"] for f in manifest])
    return {f["path"]: blobs[f["digest"]] for f in manifest}


def write_files(tx: Statements, name: str | None, skill_id: int, files: dict[str, bytes] | None) -> None:
    """Inside a write: check that `name` (when given) keeps its Agent Skills name to itself; store `files`
    (None: leave them) as the skill's files. Two active skills may not share an Agent Skills name: their
    skill:// URIs would clash."""
    if name is not None:
        wanted = documents.agent_name(name)
        for row in tx.active_with_agent_name(wanted):
            if row["id"] != skill_id and documents.agent_name(row["name"]) == wanted:
                raise SkillExists(f"Skill {row['name']!r} (id {row['id']}) already has the Agent Skills name "
                                  f"{wanted!r}, which {name!r} would share.",
                                  hint="Choose a name that differs in more than case or punctuation.",
                                  skill_id=row["id"], agent_name=wanted)
    if files is not None:
        tx.put_blobs({documents.digest(d): d for d in files.values()})
        tx.set_files(skill_id, files_json(files))


def detail(row: Any) -> dict[str, Any]:
    """What skill_get_detail adds: the Agent Skills name, the files' manifest, where an import came from."""
    return {"agent_name": documents.agent_name(row["name"]),
            "files": json.loads(row["files_json"]) if row["files_json"] else [],
            "source": json.loads(row["source_json"]) if row["source_json"] else None}


class SkillFolders:
    """The registry's skills as Agent Skills folders, read from the store."""

    def __init__(self, store: SkillStore) -> None:
        self.store = store
        # Presenting a skill parses its frontmatter; a long-lived instance (the extension's) keeps each
        # skill's folder until its row changes (version and updated_at move on every write).
        self._presented: dict[tuple[int, int, str], documents.SkillFolder] = {}

    def merged_files(self, current: Any, files: Any, body: Any, patch: dict[str, Any]) -> dict[str, bytes] | None:
        """For an update: the skill's files after `files`, checked with the new body (None: no change to
        either); sets patch['files_json'] when `files` is given."""
        if files is None and body is None:
            return None
        with self.store.read() as tx:
            now = stored_files(tx, current)
        merged = validate_folder(files, patch.get("body", current["body"]), now)
        if files is not None:
            patch["files_json"] = files_json(merged)
        return merged

    def runnable(self, row: Any) -> tuple[documents.Runnable, dict[str, bytes]]:
        """What an execution of `row` runs and the folder it runs in; NotExecutable for a knowledge skill."""
        with self.store.read() as tx:
            files = stored_files(tx, row)
        run = documents.runnable(row["body"], files)
        if run is None:
            raise NotExecutable(f"Skill {row['name']!r} is a knowledge skill: its SKILL.md has no ```python block "
                                "and it has no script to run.",
                                hint=f"Read it with skill_get_detail(skill_id={row['id']}) and follow its "
                                     "instructions; to make it runnable add a ```python block or scripts/main.py.")
        return run, files

    def list(self) -> list[documents.SkillFolder]:
        """Every active skill as an Agent Skills folder, by id (the first of two sharing a name wins)."""
        with self.store.read() as tx:
            rows = tx.active_skills()
        out, seen, cache = [], set(), {}
        for row in rows:
            key = (row["id"], row["version"], row["updated_at"])
            folder = cache[key] = self._presented.get(key) or documents.SkillFolder.from_row(row)
            if folder.agent_name not in seen:
                seen.add(folder.agent_name)
                out.append(folder)
        self._presented = cache
        return out

    def files(self, skill_id: int) -> dict[str, bytes]:
        """Every file of an active skill's folder (SKILL.md first), byte for byte as served."""
        with self.store.read() as tx:
            row = tx.skill(skill_id)
            if row is None or not row["is_active"]:
                raise SkillNotFound(f"No active skill with id {skill_id}.")
            files = stored_files(tx, row)
        return {**documents.SkillFolder.from_row(row).generated, **files}

    def set_source(self, skill_id: int, source: dict[str, Any] | None) -> None:
        """Record where an imported skill came from (source, ref, commit, path); shown by get_detail."""
        with self.store.write() as tx:
            tx.set_source(skill_id, json.dumps(source) if source else None)
