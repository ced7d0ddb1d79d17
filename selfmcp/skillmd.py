"""The two body formats a skill can have: a plain Python script, or a SKILL.md.

A SKILL.md (the Agent Skills format) is Markdown with optional YAML-style frontmatter
between `---` lines; its runnable part is the concatenation of its ```python blocks.
Only the simple `key: value` / `key: [a, b]` / indented `- item` subset of YAML is
read here: enough for name, description, tags and metadata, with no YAML dependency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_PY_OPEN = re.compile(r"```[ \t]*(?:python|py|python3)[ \t]*\r?")
_PY_CLOSE = re.compile(r"```[ \t]*")
_FENCE = re.compile(r"^```", re.MULTILINE)


@dataclass
class ParsedBody:
    is_markdown: bool
    frontmatter: dict[str, object] = field(default_factory=dict)
    code: str | None = None  # the Python to run, or None when the body has none


def _scalar(value: str) -> object:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    if value.startswith("[") and value.endswith("]"):
        return [str(_scalar(v)) for v in value[1:-1].split(",") if v.strip()]
    return value


def parse_frontmatter(text: str) -> dict[str, object]:
    """Read the simple subset of YAML that SKILL.md frontmatter uses."""
    data: dict[str, object] = {}
    key: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = re.match(r"^\s+-\s*(.*)$", line)
        if item and key is not None:
            current = data.get(key)
            data[key] = [*current, str(_scalar(item.group(1)))] if isinstance(current, list) else [str(_scalar(item.group(1)))]
            continue
        pair = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*:\s*(.*)$", line)
        if pair:
            key, value = pair.group(1), pair.group(2)
            data[key] = _scalar(value) if value.strip() else []
    return {k: ("" if v == [] else v) for k, v in data.items()}


def looks_like_markdown(body: str) -> bool:
    return bool(_FRONTMATTER.match(body) or _FENCE.search(body))


def parse_body(body: str) -> ParsedBody:
    """Split a body into frontmatter and runnable code."""
    if not looks_like_markdown(body):
        return ParsedBody(is_markdown=False, code=body)
    match = _FRONTMATTER.match(body)
    frontmatter = parse_frontmatter(match.group(1)) if match else {}
    blocks = _python_blocks(body)
    return ParsedBody(is_markdown=True, frontmatter=frontmatter, code="\n\n".join(blocks) if blocks else None)


def _python_blocks(body: str) -> list[str]:
    """The contents of the ```python blocks, each up to the first closing ``` line after its opening.

    One pass over the lines: a single regex over the whole body was quadratic in the number of
    unclosed openings, and a 256 KiB body of them held the interpreter for minutes.
    """
    lines = body.split("\n")
    blocks: list[str] = []
    i = 0
    while i < len(lines) - 1:  # an opening line needs the newline after it
        if not _PY_OPEN.fullmatch(lines[i]):
            i += 1
            continue
        close = next((j for j in range(i + 1, len(lines)) if _PY_CLOSE.fullmatch(lines[j])), None)
        if close is None:  # no closing line anywhere below: no later opening has one either
            break
        blocks.append("".join(line + "\n" for line in lines[i + 1:close]))
        i = close + 1
    return blocks


def frontmatter_search_text(frontmatter: dict[str, object]) -> str:
    """The words of the frontmatter worth indexing (tags, keywords, metadata), as one string."""
    parts: list[str] = []
    for key, value in frontmatter.items():
        if key in ("name", "description"):
            continue
        values = value if isinstance(value, list) else [value]
        parts.extend(str(v) for v in values if str(v).strip())
    return " ".join(parts)
