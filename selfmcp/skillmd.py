"""The two body formats a skill can have: a plain Python script, or a SKILL.md.

A SKILL.md (the Agent Skills format) is Markdown with optional YAML-style frontmatter
between `---` lines; its runnable part is the concatenation, joined by a blank line, of
its fenced code blocks whose info string is python, py or python3 (any case). What a Markdown reader
shows as a python block is exactly what runs: the blocks are found by a CommonMark parser
(markdown-it-py), so a fence may be of backticks or tildes and of any length of at least
three, closes only with a fence of the same kind at least as long, and a fence inside an
HTML comment or other HTML block, or an indented code block, is not a python block.

Which format a body has: a body that starts with frontmatter is a SKILL.md; otherwise a
body that compiles as Python is a script (a fence inside one of its strings or docstrings
is text, not code); otherwise, when it has a fence, it is a SKILL.md.

Only the simple `key: value` / `key: [a, b]` / indented `- item` subset of YAML is
read here: enough for name, description, tags and metadata, with no YAML dependency.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any
from dataclasses import dataclass, field


_FRONTMATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
# A CommonMark fence opening: up to three spaces, then three or more backticks or tildes.
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)
PYTHON_INFO = ("python", "py", "python3")


@functools.cache
def _markdown() -> Any:
    """The CommonMark parser, made on first use (start-up needs none)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark")


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


def _compiles(body: str) -> bool:
    try:
        compile(body, "<skill>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def looks_like_markdown(body: str) -> bool:
    if _FRONTMATTER.match(body):
        return True
    return bool(_FENCE.search(body)) and not _compiles(body)


def python_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks whose info string's first word is python, py or python3."""
    blocks = []
    for token in _markdown().parse(markdown):
        language = token.info.split(maxsplit=1)[0].lower() if token.info.strip() else ""
        if token.type == "fence" and language in PYTHON_INFO:
            blocks.append(token.content)
    return blocks


def parse_body(body: str) -> ParsedBody:
    """Split a body into frontmatter and runnable code."""
    if not looks_like_markdown(body):
        return ParsedBody(is_markdown=False, code=body)
    match = _FRONTMATTER.match(body)
    frontmatter = parse_frontmatter(match.group(1)) if match else {}
    blocks = python_blocks(body[match.end():] if match else body)
    return ParsedBody(is_markdown=True, frontmatter=frontmatter, code="\n\n".join(blocks) if blocks else None)


def nfc(text: str) -> str:
    """`text` in Unicode normal form C: the form names are compared in."""
    return unicodedata.normalize("NFC", text)


def code_fields(body: str) -> dict[str, object]:
    """`format` ("python" or "skill_md"), and for a SKILL.md the exact `code` that runs (None when it has none)."""
    parsed = parse_body(body)
    if not parsed.is_markdown:
        return {"format": "python"}
    return {"format": "skill_md", "code": parsed.code}


def frontmatter_search_text(frontmatter: dict[str, object]) -> str:
    """The words of the frontmatter worth indexing (tags, keywords, metadata), as one string."""
    parts: list[str] = []
    for key, value in frontmatter.items():
        if key in ("name", "description"):
            continue
        values = value if isinstance(value, list) else [value]
        parts.extend(str(v) for v in values if str(v).strip())
    return " ".join(parts)
