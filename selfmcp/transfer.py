"""Import and export of Agent Skills folders.

    import_source(registry, source, ref=None, progress=None) -> report
    export_all(registry, directory, progress=None) -> report

A source is a folder of skills (`skills/*/SKILL.md`, `*/SKILL.md`, or one skill folder), a
`.zip`/`.skill` archive, or a git repository (a URL, or a local path with `ref`), checked out at
`ref` (default: its HEAD); the commit is recorded in each imported skill's `source` metadata.
Every path is checked before anything is read in full: no `..`, no absolute path, no symlink
leaving the skill's folder, at most 512 files and 16 MiB a skill. A skill that fails any check
is refused with its reason and nothing of it is written; the others still import. The report
says what was added, updated, left unchanged and refused.

An export writes every active skill as `<directory>/<agent name>/...`, byte for byte as the
Skills-over-MCP extension serves it. Importing an export changes nothing (a plain-Python skill's
generated SKILL.md is recognised and its scripts/main.py becomes the body again), and exporting
again writes identical bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfmcp import documents, skillmd
from selfmcp.folders import SkillFolders
from selfmcp.errors import SkillError

Progress = Callable[[int, int, str], None]
MAX_DESCRIPTION_CHARS = 1024  # the Agent Skills limit
ARCHIVE_SUFFIXES = (".zip", ".skill")
GIT_TIMEOUT_S = 300


class TransferError(SkillError):
    """The source as a whole cannot be read (not found, not an archive, git failed)."""

    code = "import_failed"
    hint = "Give a folder of skills, a .zip/.skill archive, or a git repository URL (with --ref for a commit)."


@dataclass
class Candidate:
    """One skill folder found in a source: its files (or the problems that refuse it)."""

    folder: str  # its path inside the source ("" for a source that is one skill)
    sizes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    read: Callable[[str], bytes] | None = None  # reads one of `sizes`' paths


# ------------------------------------------------------------------------------ sources

def _skill_roots(paths: list[str]) -> list[str]:
    """Folders holding a SKILL.md: the source itself, else skills/*, else */."""
    if documents.SKILL_MD in paths:
        return [""]
    for pattern in (r"^skills/([^/]+)/SKILL\.md$", r"^([^/]+)/SKILL\.md$"):
        found = sorted({m.group(0).rsplit("/", 1)[0] for p in paths if (m := re.match(pattern, p))})
        if found:
            return found
    return []


def _assign(roots: list[str], raw: str) -> tuple[str, str] | None:
    """(skill folder, path inside it) for a raw entry name; None when it belongs to no skill."""
    name = raw.lstrip("/")
    for root in sorted(roots, key=len, reverse=True):
        if root == "":
            return "", name
        if name.startswith(root + "/"):
            return root, name[len(root) + 1:]
    return None


def _candidates(entries: dict[str, int], problems: dict[str, str], read: Callable[[str], bytes]) -> list[Candidate]:
    """Group raw entries (name -> size) and raw problems (name -> why) into skill folders."""
    roots = _skill_roots([n for n in entries if not n.startswith("/")])
    out = {root: Candidate(root) for root in roots}
    for raw, size in entries.items():
        place = _assign(roots, raw)
        if place is None:
            continue
        cand, rel = out[place[0]], place[1]
        if raw.startswith("/"):
            cand.problems.append(f"{raw!r} is an absolute path")
            continue
        try:
            documents.check_path(rel)
        except SkillError as exc:
            cand.problems.append(str(exc))
            continue
        cand.sizes[rel] = size
    for raw, why in problems.items():
        place = _assign(roots, raw)
        if place is not None:
            out[place[0]].problems.append(f"{raw!r}: {why}")
    for cand in out.values():
        prefix = cand.folder + "/" if cand.folder else ""
        cand.read = (lambda rel, _p=prefix: read(_p + rel))
    return list(out.values())


def _scan_folder(root: Path) -> list[Candidate]:
    """The skills under a folder; symlinks are followed only to files inside the same skill folder."""
    root = root.resolve()
    entries: dict[str, int] = {}
    links: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                dirnames.remove(name)
                problems[(base / name).relative_to(root).as_posix()] = "a symlinked folder"
        for name in filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                links[rel] = path
            elif stat.S_ISREG(info.st_mode):
                entries[rel] = info.st_size
            else:
                problems[rel] = "not a regular file"
    roots = _skill_roots(list(entries) + list(links))
    for rel, path in links.items():
        place = _assign(roots, rel)
        if place is None:
            continue
        skill_dir = (root / place[0]).resolve() if place[0] else root
        target = path.resolve()
        if not target.is_relative_to(skill_dir) or not target.is_file():
            problems[rel] = f"a symlink leaving the skill folder (to {os.readlink(path)!r})"
        else:
            entries[rel] = target.stat().st_size
    return _candidates(entries, problems, lambda rel: (root / rel).read_bytes())


def _scan_archive(path: Path) -> list[Candidate]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TransferError(f"{str(path)!r} is not a readable zip archive: {exc}.") from None
    entries: dict[str, int] = {}
    problems: dict[str, str] = {}
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            problems[name] = "a symlink (archives may not hold links)"
            continue
        if "\\" in name or re.match(r"^[A-Za-z]:", name):
            problems[name] = "a path with a backslash or drive letter"
            continue
        entries[name] = info.file_size
        infos[name] = info

    def read(name: str) -> bytes:
        info = infos[name]
        with archive.open(info) as fh:
            data = fh.read(info.file_size + 1)
        if len(data) != info.file_size:
            raise TransferError(f"{name!r} in the archive is not the size its header says.")
        return data

    return _candidates(entries, problems, read)


def _git(*args: str, cwd: str | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TransferError(f"git {args[0]} failed: {exc}.") from None
    if done.returncode != 0:
        raise TransferError(f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}.")
    return done.stdout.strip()


def _is_git_source(source: str, ref: str | None) -> bool:
    if re.match(r"^[a-z][a-z0-9+.-]*://", source) or re.match(r"^[\w.-]+@[\w.-]+:", source):
        return True
    return ref is not None or source.endswith(".git")


# ------------------------------------------------------------------------------- import

def _metadata_json(frontmatter: dict[str, Any], key: str) -> Any:
    metadata = frontmatter.get("metadata")
    text = metadata.get(key) if isinstance(metadata, dict) else None
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def read_candidate(cand: Candidate) -> dict[str, Any]:
    """The registry fields of a skill folder; raises SkillError for anything that refuses it."""
    from selfmcp.errors import InvalidFiles, InvalidFrontmatter

    if cand.problems:
        raise InvalidFiles("; ".join(cand.problems[:5]) + ("" if len(cand.problems) <= 5 else
                                                           f" (and {len(cand.problems) - 5} more)") + ".",
                           problems=cand.problems[:20])
    if len(cand.sizes) > documents.MAX_FILES:
        raise InvalidFiles(f"The skill has {len(cand.sizes)} files; the limit is {documents.MAX_FILES}.")
    total = sum(cand.sizes.values())
    if total > documents.MAX_TOTAL_BYTES:
        raise InvalidFiles(f"The skill's files come to {total} bytes; the limit is 16 MiB.", bytes=total)
    assert cand.read is not None
    files = {rel: cand.read(rel) for rel in sorted(cand.sizes)}
    try:
        text = files.pop(documents.SKILL_MD).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFrontmatter("SKILL.md is not UTF-8 text.") from None
    frontmatter = documents.document_frontmatter(text)
    if frontmatter is None:
        raise InvalidFrontmatter("SKILL.md has no YAML frontmatter (name, description) between '---' lines.")
    name, description = frontmatter.get("name"), frontmatter.get("description")
    if not documents.valid_agent_name(name):
        raise InvalidFrontmatter(f"The skill name {name!r} is not an Agent Skills name (1-64 of a-z, 0-9 and '-', "
                                 "no leading, trailing or double hyphen).")
    folder_name = cand.folder.rsplit("/", 1)[-1]
    if folder_name and folder_name != name:
        raise InvalidFrontmatter(f"The skill is named {name!r} but its folder is {folder_name!r}.",
                                 hint="Make the folder name and the frontmatter name the same.")
    if not isinstance(description, str) or not description.strip():
        raise InvalidFrontmatter("The frontmatter has no description.")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidFrontmatter(f"The description is {len(description)} characters; the Agent Skills limit is "
                                 f"{MAX_DESCRIPTION_CHARS}.", hint="Shorten the description in SKILL.md.")
    fields: dict[str, Any] = {"name": name, "description": description, "body": text, "files": files}
    for key, arg in ((documents.META_DEPENDENCIES, "dependencies"), (documents.META_PARAMS_SCHEMA, "params_schema"),
                     (documents.META_AUTH_CONFIG, "auth_config")):
        value = _metadata_json(frontmatter, key)
        if value is not None:
            fields[arg] = value
    main = files.get(documents.MAIN_SCRIPT)
    if main is not None:  # an export of a plain-Python skill: its SKILL.md is the one we generate
        generated, _ = documents.python_skill_md(name, description, dependencies=fields.get("dependencies"),
                                                 params_schema=fields.get("params_schema"),
                                                 auth_config=fields.get("auth_config"))
        try:
            code = main.decode("utf-8")
        except UnicodeDecodeError:
            code = None
        if generated == text and code is not None and not skillmd.looks_like_markdown(code):
            fields["body"] = code
            fields["files"] = {p: d for p, d in files.items() if p != documents.MAIN_SCRIPT}
    return fields


def _apply(registry: Any, fields: dict[str, Any], source: dict[str, Any]) -> str:
    """Create or update one skill from `fields`; 'added', 'updated' or 'unchanged'."""
    folders = SkillFolders(registry.store)
    existing = next((f for f in folders.list() if f.agent_name == fields["name"]), None)
    if existing is None:
        created = registry.create(fields["name"], fields["description"], fields["body"], fields.get("dependencies"),
                                  fields.get("auth_config"), fields.get("params_schema"), files=fields["files"])
        folders.set_source(created["id"], source)
        return "added"
    detail = registry.get_detail(existing.skill_id)
    stored = {f["path"]: f["digest"] for f in detail["files"]}
    wanted = {p: documents.digest(d) for p, d in fields["files"].items()}
    patch: dict[str, Any] = {}
    if detail["description"] != fields["description"]:
        patch["description"] = fields["description"]
    if detail["body"] != fields["body"]:
        patch["body"] = fields["body"]
    if stored != wanted:
        patch["files"] = {**{p: None for p in stored if p not in wanted},
                          **{p: d for p, d in fields["files"].items() if stored.get(p) != wanted[p]}}
    for key in ("dependencies", "auth_config", "params_schema"):
        if key in fields and detail[key] != fields[key]:
            patch[key] = fields[key]
    if not patch:
        return "unchanged"
    registry.update(existing.skill_id, **patch)
    folders.set_source(existing.skill_id, source)
    return "updated"


def import_source(registry: Any, source: str | os.PathLike[str], *, ref: str | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Import every skill of `source`; returns {source, commit?, added, updated, unchanged, refused}."""
    text = os.fspath(source)
    report: dict[str, Any] = {"source": text, "added": [], "updated": [], "unchanged": [], "refused": []}
    origin: dict[str, Any] = {"source": text}
    with tempfile.TemporaryDirectory(prefix="selfmcp-import-") as tmp:
        path = Path(text)
        if _is_git_source(text, ref):
            checkout = os.path.join(tmp, "repo")
            _git("clone", "--quiet", "--no-checkout", "--", text, checkout)
            _git("checkout", "--quiet", "--detach", ref or "HEAD", cwd=checkout)
            commit = _git("rev-parse", "HEAD", cwd=checkout)
            report["commit"] = origin["commit"] = commit
            if ref:
                origin["ref"] = ref
            candidates = _scan_folder(Path(checkout))
        elif path.is_file():
            candidates = _scan_archive(path)
        elif path.is_dir():
            candidates = _scan_folder(path)
        else:
            raise TransferError(f"{text!r} is not a folder, an archive or a git repository URL.")
        if not candidates:
            raise TransferError(f"No SKILL.md found in {text!r} (looked at SKILL.md, skills/*/SKILL.md, "
                                "*/SKILL.md).")
        for done, cand in enumerate(candidates):
            label = cand.folder or path.name or text
            if progress is not None:
                progress(done, len(candidates), label)
            try:
                fields = read_candidate(cand)
                outcome = _apply(registry, fields, {**origin, "path": cand.folder})
            except SkillError as exc:
                report["refused"].append({"skill": label, "error": exc.code, "reason": str(exc)})
                continue
            report[outcome].append(fields["name"])
        if progress is not None:
            progress(len(candidates), len(candidates), "done")
    return report


# ------------------------------------------------------------------------------- export

def export_all(registry: Any, directory: str | os.PathLike[str], *, progress: Progress | None = None) -> dict[str, Any]:
    """Write every active skill as `directory/<agent name>/...`; returns {directory, exported, files, bytes}."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    store = SkillFolders(registry.store)
    folders = store.list()
    report: dict[str, Any] = {"directory": str(root), "exported": [], "files": 0, "bytes": 0}
    for done, folder in enumerate(folders):
        if progress is not None:
            progress(done, len(folders), folder.agent_name)
        files = store.files(folder.skill_id)
        target = root / folder.agent_name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise TransferError(f"{str(target)!r} exists and is not a folder.")
        for existing in sorted(target.rglob("*"), reverse=True) if target.exists() else []:
            rel = existing.relative_to(target).as_posix()
            if existing.is_symlink() or existing.is_file():
                if rel not in files:
                    existing.unlink()
            elif existing.is_dir() and not any(p.startswith(rel + "/") for p in files):
                shutil.rmtree(existing)
        for rel, data in files.items():
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.is_symlink():
                out.unlink()
            if not out.is_file() or out.read_bytes() != data:
                out.write_bytes(data)
            report["files"] += 1
            report["bytes"] += len(data)
        report["exported"].append(folder.agent_name)
    if progress is not None:
        progress(len(folders), len(folders), "done")
    return report
