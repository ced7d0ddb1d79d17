"""Skill documents and files: SKILL.md frontmatter, Agent Skills names, supporting files, what runs.

A skill is presented to the outside as an Agent Skills folder (agentskills.io): a `SKILL.md` whose
YAML frontmatter holds `name` and `description` (and any other keys, kept verbatim), plus supporting
files at relative paths. This module holds the rules, with no storage and no MCP:

- `parse_frontmatter` reads YAML with PyYAML and refuses every plain scalar that a YAML 1.1 reader
  (PyYAML) and a YAML 1.2 reader (the JavaScript checkers) would read differently (`yes`, `on`,
  `017`, `1_000`, `0o17`, `1e3`, dates), plus duplicate keys, merge keys and non-JSON values, so
  every checker sees the same frontmatter. Quoting the value is always the fix.
- `agent_name` derives the Agent Skills name (1-64 of `a-z0-9-`, no leading, trailing or double
  hyphen) from a selfMCP name.
- `check_files` validates supporting files (paths: relative, no `..`, no backslash, no control
  character, NFC; at most `MAX_FILES` files and `MAX_TOTAL_BYTES` a skill) and keeps their bytes
  exactly (no newline or BOM rewriting).
- `present` gives the folder a skill is shown as; `runnable` says what `skill_execute` runs.

What runs, in order: a plain-Python body; else the ```python blocks of a SKILL.md body; else the
script the frontmatter names under `metadata.entrypoint` (a `.py` file among the skill's files);
else `scripts/main.py`. A skill with none of these is a knowledge skill (not executable).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


from selfmcp import skillmd
from selfmcp.errors import InvalidFiles, InvalidFrontmatter

if TYPE_CHECKING:
    import yaml

MAX_FILES = 512  # a skill's files, SKILL.md included (the extension's per-skill limit)
MAX_TOTAL_BYTES = 16 * 1024 * 1024  # SKILL.md and every file together
MAX_PATH_CHARS = 1024
SKILL_MD = "SKILL.md"
MAIN_SCRIPT = "scripts/main.py"
ENTRYPOINT_KEY = "entrypoint"  # frontmatter `metadata.entrypoint`: the script a SKILL.md without code runs
AGENT_NAME_RE = re.compile(r"^(?!-)(?!.*--)[a-z0-9-]{1,64}(?<!-)$")
# Metadata keys the export of a plain-Python skill carries (JSON text), and an import reads back.
META_DEPENDENCIES, META_PARAMS_SCHEMA, META_AUTH_CONFIG = ("selfmcp-dependencies", "selfmcp-params-schema",
                                                          "selfmcp-auth-config")

_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)(?:\r?\n)?^---[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# ----------------------------------------------------------------------------- frontmatter

def split_frontmatter(text: str) -> str | None:
    """The YAML text between the leading `---` lines, or None when the document has none."""
    match = _FRONTMATTER.match(text)
    return match.group(1) if match else None


def _yaml12(value: str) -> Any:
    """A plain scalar as the YAML 1.2 core schema reads it (what the JavaScript checkers see)."""
    if re.fullmatch(r"null|Null|NULL|~|", value):
        return None
    if re.fullmatch(r"true|True|TRUE", value):
        return True
    if re.fullmatch(r"false|False|FALSE", value):
        return False
    if re.fullmatch(r"[-+]?[0-9]+", value):
        return int(value)
    if re.fullmatch(r"0o[0-7]+", value):
        return int(value[2:], 8)
    if re.fullmatch(r"0x[0-9a-fA-F]+", value):
        return int(value, 16)
    if re.fullmatch(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", value):
        return float(value)
    if re.fullmatch(r"[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN", value):
        return float(value.replace(".", "", 1))
    return value


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _check_node(node: yaml.Node, loader: yaml.SafeLoader, where: str) -> None:
    import yaml  # lazily: start-up needs no YAML
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise InvalidFrontmatter(f"The frontmatter uses a YAML merge key ('<<') at {where or 'the top'}.",
                                         hint="Write the keys out; YAML 1.2 readers have no merge keys.")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise InvalidFrontmatter(f"The frontmatter key {key_node.value!r} at {where or 'the top'} is "
                                         "not a string.", hint="Quote the key.")
            key = key_node.value
            if key in seen:
                raise InvalidFrontmatter(f"The frontmatter key {key!r} appears twice.", hint="Keep one of them.")
            seen.add(key)
            _check_node(value_node, loader, f"{where}.{key}" if where else key)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_node(item, loader, f"{where}[{i}]")
    elif isinstance(node, yaml.ScalarNode):
        value = loader.construct_object(node, deep=True)
        if node.style is None:  # plain: resolved by the schema, where YAML 1.1 and 1.2 differ
            other = _yaml12(node.value)
            if not _same(value, other):
                raise InvalidFrontmatter(
                    f"The frontmatter value {node.value!r} at {where} reads as {value!r} in YAML 1.1 but "
                    f"{other!r} in YAML 1.2.", hint=f"Quote it ({where}: \"{node.value}\") so every reader "
                                                  "sees the same value.", key=where)
        elif node.tag != "tag:yaml.org,2002:str":
            raise InvalidFrontmatter(f"The frontmatter value at {where} has an explicit tag {node.tag!r}.",
                                     hint="Drop the tag; write a plain string, number or boolean.", key=where)
        if value is not None and not isinstance(value, str | bool | int | float):
            raise InvalidFrontmatter(f"The frontmatter value at {where} is a {type(value).__name__}, not text.",
                                     hint=f"Quote it ({where}: \"{node.value}\").", key=where)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFrontmatter(f"The frontmatter value at {where} is {node.value!r}, not a finite number.",
                                     hint="Quote it or use a finite number.", key=where)


MAX_FLOW_DEPTH = 32


def _flow_depth(text: str) -> int:
    """How deep '[' and '{' nest in `text` (counted everywhere, quoted or not: an upper bound)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return deepest


def parse_frontmatter(text: str) -> dict[str, Any]:
    """The frontmatter mapping, read the same by YAML 1.1 and 1.2; raises InvalidFrontmatter."""
    import yaml  # lazily: start-up needs no YAML

    try:
        if _flow_depth(text) > MAX_FLOW_DEPTH:  # PyYAML's scanner is quadratic in the depth of [ and {
            raise InvalidFrontmatter(f"The frontmatter nests '[' or '{{' more than {MAX_FLOW_DEPTH} levels deep.",
                                     hint="Use flat `key: value` lines and short lists.")
        # Aliases make a tree of a few lines refer to itself exponentially often (a "billion laughs"):
        # checking or constructing it would hold the server for hours. Frontmatter never needs them.
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
                raise InvalidFrontmatter("The frontmatter uses YAML anchors or aliases ('&', '*').",
                                         hint="Write the values out; SKILL.md frontmatter has no aliases.")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return {}
            if not isinstance(node, yaml.MappingNode):
                raise InvalidFrontmatter("The frontmatter is not a mapping of keys to values.",
                                         hint="Write `key: value` lines between the `---` lines.")
            _check_node(node, loader, "")
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise InvalidFrontmatter("The frontmatter is nested too deeply.", hint="Use flat `key: value` lines.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidFrontmatter(f"The frontmatter is not valid YAML{line}: {problem}.",
                                 hint="Fix the YAML; quote values that contain ': ' or start with a special "
                                      "character.") from None
    return data


def document_frontmatter(text: str) -> dict[str, Any] | None:
    """The checked frontmatter of a SKILL.md text, or None when it has no frontmatter block."""
    raw = split_frontmatter(text)
    return None if raw is None else parse_frontmatter(raw)


def dump_frontmatter(data: Mapping[str, Any]) -> str:
    """YAML text for `data` that YAML 1.1 and 1.2 read the same (quoting every string if need be)."""
    import yaml  # lazily: start-up needs no YAML

    text = yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=1 << 20)
    try:
        if parse_frontmatter(text) == data:
            return text
    except InvalidFrontmatter:
        pass
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=1 << 20, default_style='"')


# ------------------------------------------------------------------------------- names

def valid_agent_name(name: Any) -> bool:
    return isinstance(name, str) and bool(AGENT_NAME_RE.match(name))


def agent_name(name: str) -> str:
    """The Agent Skills name of a selfMCP name: lower case, runs of other characters become one '-'."""
    derived = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:64].strip("-")
    return derived or "skill"


# ------------------------------------------------------------------------------- files

def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_path(path: Any) -> str:
    """A supporting file's path, NFC-normalised; raises InvalidFiles for any unsafe path."""
    if not isinstance(path, str) or not path:
        raise InvalidFiles(f"Invalid file path {path!r}.", path=path)
    if _CONTROL.search(path):
        raise InvalidFiles(f"The file path {path!r} contains a control character.", path=path)
    if "\\" in path:
        raise InvalidFiles(f"The file path {path!r} contains a backslash.", path=path)
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidFiles(f"The file path {path!r} is absolute.", path=path)
    if len(path) > MAX_PATH_CHARS:
        raise InvalidFiles(f"The file path {path[:40]!r}... is longer than {MAX_PATH_CHARS} characters.")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidFiles(f"The file path {path!r} has an empty, '.' or '..' segment.", path=path)
    return unicodedata.normalize("NFC", path)


def decode_content(path: str, value: Any) -> bytes:
    """A file's bytes from the tool argument: text (stored as UTF-8), or {"base64": "..."} for binary."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, Mapping) and set(value) == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidFiles(f"The content of {path!r} is not valid base64.", path=path) from None
    raise InvalidFiles(f"The content of {path!r} must be text or {{\"base64\": \"...\"}}.", path=path)


def check_files(files: Mapping[str, bytes], *, body: str, plain_python: bool) -> dict[str, bytes]:
    """`files` with checked, NFC paths (sorted); raises InvalidFiles for a clash or a limit passed."""
    out: dict[str, bytes] = {}
    for raw, data in files.items():
        path = check_path(raw)
        if path in out:
            raise InvalidFiles(f"Two files have the path {path!r} (after Unicode NFC normalisation).", path=path)
        out[path] = data
    reserved = {SKILL_MD, MAIN_SCRIPT} if plain_python else {SKILL_MD}
    for path in sorted(out):
        if path in reserved:
            raise InvalidFiles(f"{path!r} cannot be a supporting file: it is "
                               f"{'the skill body' if path == SKILL_MD else 'where the Python body is shown'}.",
                               hint="Put that content in `body`, or use another path.", path=path)
        prefix = path + "/"
        if any(other.startswith(prefix) for other in out):
            raise InvalidFiles(f"{path!r} is both a file and a folder.", path=path)
    count = len(out) + 1 + (1 if plain_python else 0)
    if count > MAX_FILES:
        raise InvalidFiles(f"The skill would have {count} files; the limit is {MAX_FILES}, SKILL.md included.",
                           count=count)
    total = sum(len(d) for d in out.values()) + len(body.encode("utf-8"))
    if total > MAX_TOTAL_BYTES:
        raise InvalidFiles(f"The skill's files come to {total} bytes; the limit is 16 MiB.", bytes=total)
    return dict(sorted(out.items()))


def manifest(files: Mapping[str, bytes]) -> list[dict[str, Any]]:
    """What a skill's row keeps of its files: path, size and digest each, sorted by path."""
    return [{"path": p, "size": len(d), "digest": digest(d)} for p, d in sorted(files.items())]


# ----------------------------------------------------------------------- the folder shown

@dataclass(frozen=True)
class Presented:
    """A skill as an Agent Skills folder: its name, frontmatter and files (SKILL.md first)."""

    name: str
    frontmatter: dict[str, Any]
    files: dict[str, bytes]

    @property
    def skill_md(self) -> bytes:
        return self.files[SKILL_MD]


def python_skill_md(name: str, description: str, *, dependencies: list[str] | None = None,
                    params_schema: dict[str, Any] | None = None,
                    auth_config: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The SKILL.md that presents a plain-Python skill (its code is scripts/main.py), and its frontmatter."""
    metadata = {ENTRYPOINT_KEY: MAIN_SCRIPT}
    if dependencies:
        metadata[META_DEPENDENCIES] = json.dumps(dependencies)
    if params_schema:
        metadata[META_PARAMS_SCHEMA] = json.dumps(params_schema, sort_keys=True)
    if auth_config:
        metadata[META_AUTH_CONFIG] = json.dumps(auth_config, sort_keys=True)
    frontmatter: dict[str, Any] = {"name": name, "description": description, "metadata": metadata}
    lines = [f"# {name}", "", description.strip(), "", "## How to run it", "",
             "Run `python scripts/main.py` from this folder. It reads its parameters as a JSON object from the "
             "`SELFMCP_PARAMS` environment variable and prints its result."]
    if dependencies:
        lines += ["", "It needs these Python packages: " + ", ".join(f"`{d}`" for d in dependencies) + "."]
    if params_schema:
        schema = json.dumps(params_schema, indent=2, sort_keys=True)
        lines += ["", "Parameters (JSON Schema):", "", "```json", schema, "```"]
    if auth_config:
        names = [auth_config.get(k) for k in ("env_var", "client_id_env", "client_secret_env") if auth_config.get(k)]
        if names:
            lines += ["", "It needs these environment variables: " + ", ".join(f"`{n}`" for n in names) + "."]
    return "---\n" + dump_frontmatter(frontmatter) + "---\n" + "\n".join(lines) + "\n", frontmatter


def present(name: str, description: str, body: str, files: Mapping[str, bytes], *,
            dependencies: list[str] | None = None, params_schema: dict[str, Any] | None = None,
            auth_config: dict[str, Any] | None = None) -> Presented:
    """The Agent Skills folder of a skill whose Agent Skills name is `name`.

    A SKILL.md body whose frontmatter already has this name and a description is served byte for
    byte; any other SKILL.md gets its frontmatter completed (name, description) and re-written; a
    plain-Python body becomes scripts/main.py beside a generated SKILL.md.
    """
    if not skillmd.looks_like_markdown(body):
        text, frontmatter = python_skill_md(name, description, dependencies=dependencies,
                                            params_schema=params_schema, auth_config=auth_config)
        shown = {SKILL_MD: text.encode("utf-8"), MAIN_SCRIPT: body.encode("utf-8")}
    else:
        try:
            frontmatter = document_frontmatter(body) or {}
        except InvalidFrontmatter:  # stored before frontmatter was checked: show it as plain text
            frontmatter = {}
        if frontmatter.get("name") == name and isinstance(frontmatter.get("description"), str) \
                and frontmatter["description"].strip():
            shown = {SKILL_MD: body.encode("utf-8")}
        else:
            match = _FRONTMATTER.match(body)
            rest = body[match.end():] if match else body
            frontmatter = {**frontmatter, "name": name}
            if not (isinstance(frontmatter.get("description"), str) and frontmatter["description"].strip()):
                frontmatter["description"] = description
            frontmatter = {"name": name, "description": frontmatter["description"],
                           **{k: v for k, v in frontmatter.items() if k not in ("name", "description")}}
            shown = {SKILL_MD: ("---\n" + dump_frontmatter(frontmatter) + "---\n" + rest).encode("utf-8")}
    for path, data in sorted(files.items()):
        shown.setdefault(path, data)
    return Presented(name, frontmatter, shown)


# --------------------------------------------------------------------------- what runs

@dataclass(frozen=True)
class Runnable:
    """What skill_execute runs: `code`, written at `script` (relative to the skill folder)."""

    code: str
    script: str


def _entry_script(body: str, paths: Any) -> str | None:
    """The script a SKILL.md with no ```python block runs: `metadata.entrypoint`, else scripts/main.py."""
    try:
        frontmatter = document_frontmatter(body) or {}
    except InvalidFrontmatter:
        frontmatter = {}
    metadata = frontmatter.get("metadata")
    named = metadata.get(ENTRYPOINT_KEY) if isinstance(metadata, dict) else None
    for script in ([named] if isinstance(named, str) else []) + [MAIN_SCRIPT]:
        if script in paths and script.endswith(".py"):
            return script
    return None


def is_executable(body: str, paths: Any) -> bool:
    """Whether a skill with this body and these file paths has code to run (else: a knowledge skill)."""
    parsed = skillmd.parse_body(body)
    return parsed.code is not None or _entry_script(body, paths) is not None


def runnable(body: str, files: Mapping[str, bytes]) -> Runnable | None:
    """The code a skill runs and where it sits in the skill folder; None for a knowledge skill."""
    parsed = skillmd.parse_body(body)
    if not parsed.is_markdown:
        # With no files a plain body runs as it always has; with files it runs as it is shown.
        return Runnable(body, MAIN_SCRIPT if files else "skill.py")
    if parsed.code is not None:
        script = "skill.py"
        while script in files:
            script = "_" + script
        return Runnable(parsed.code, script)
    script = _entry_script(body, files)
    if script is None:
        return None
    try:
        return Runnable(files[script].decode("utf-8"), script)
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------- a stored skill's folder

@dataclass(frozen=True)
class SkillFolder:
    """A stored skill as the outside sees it: the generated files' bytes and the supporting files' manifest."""

    skill_id: int
    name: str  # the selfMCP name
    agent_name: str
    description: str
    version: int
    frontmatter: dict[str, Any]
    generated: dict[str, bytes]  # SKILL.md (and scripts/main.py for a plain-Python body)
    stored: list[dict[str, Any]]  # [{path, size, digest}] of the supporting files
    executable: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SkillFolder:
        stored = json.loads(row["files_json"]) if row["files_json"] else []
        loads = (lambda key, default: json.loads(row[key]) if row[key] else default)  # noqa: E731
        shown = present(agent_name(row["name"]), row["description"], row["body"], {},
                        dependencies=loads("dependencies_json", []), params_schema=loads("params_schema_json", None),
                        auth_config=loads("auth_config_json", None))
        paths = {f["path"] for f in stored}
        return cls(row["id"], row["name"], shown.name, row["description"], row["version"], shown.frontmatter,
                   shown.files, stored, is_executable(row["body"], paths))

    def resources(self) -> list[dict[str, Any]]:
        """Every file once, SKILL.md first: [{path, size, digest}] over exactly the bytes served."""
        out = [{"path": p, "size": len(d), "digest": digest(d)} for p, d in self.generated.items()]
        return out + [f for f in self.stored if f["path"] not in self.generated]

    @property
    def instructions(self) -> str:
        """The SKILL.md text (what a prompt of a knowledge skill returns)."""
        return self.generated[SKILL_MD].decode("utf-8")
