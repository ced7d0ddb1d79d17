"""Skills over MCP (SEP-2640, `io.modelcontextprotocol/skills`): every skill served as an Agent Skill.

- `SkillsExtension` declares the extension with `directoryRead: true` and serves `skills/list`
  (paginated by skill id, one entry per skill, so entries are atomic), `skills/get` and
  `resources/directory/read`; an unknown URI is -32602. `ttlMs`/`cacheScope` ride the
  2026-07-28 answers; the TTL is short because the registry changes while clients are connected.
- `SkillsServerMixin` (mixed into the server class) serves every file as `skill://<name>/<path>`
  through `resources/read`, byte for byte (UTF-8 text as text, anything else as a blob: the
  digests and sizes are over exactly those bytes); lists each skill's SKILL.md only in
  `resources/list` (the other files through a template, so the list does not grow with them);
  offers each knowledge skill (no code to run) as a prompt returning its SKILL.md, paginated;
  and says `notifications/resources/list_changed` and `prompts/list_changed` after a skill
  changes: on legacy sessions it has seen, and to 2026-07-28 `subscriptions/listen` streams.
- `advertise_on_handshake` is the middleware that puts the declaration (and the listChanged
  flags) into the 2025-11-25 `initialize` result, which mcp 2.3 strips on its own.

Nothing here writes: the registry's store, read through `selfmcp.folders.SkillFolders`, is the source.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import mimetypes
import weakref
from collections.abc import Iterable
from typing import Any

import anyio.to_thread
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.subscriptions import PromptsListChanged, ResourcesListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import (INVALID_PARAMS, GetPromptResult, ListPromptsResult, PaginatedRequestParams, PromptMessage,
                       RequestParams, TextContent)
from mcp_types import Prompt as MCPPrompt
from mcp_types import Resource as MCPResource
from mcp_types import ResourceTemplate as MCPResourceTemplate
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from selfmcp import documents
from selfmcp.folders import SkillFolders

log = logging.getLogger("selfmcp.extension")

IDENTIFIER = "io.modelcontextprotocol/skills"
SCHEME = "skill://"
TTL_MS = 10_000  # short: skills change while clients are connected
CACHE_SCOPE = "private"
PAGE_SIZE = 50
DIRECTORY_PAGE_SIZE = 100
DIRECTORY_MIME = "inode/directory"
MUTATING_TOOLS = frozenset({"skill_create", "skill_update", "skill_delete"})


class SkillGetParams(RequestParams):
    uri: str


class DirectoryReadParams(PaginatedRequestParams):
    uri: str


def _invalid(message: str, **data: Any) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=message, data=data or None)


def _cursor(cursor: str | None) -> int:
    """The position an opaque cursor stands for (0 for none); -32602 for one we did not give."""
    if not cursor:
        return 0
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))["at"]
        if isinstance(value, int) and value >= 0:
            return value
    except (ValueError, KeyError, TypeError, binascii.Error):
        pass
    raise _invalid(f"Invalid cursor {cursor!r}.", cursor=cursor)


def _next_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"at": position}).encode()).decode()


def _cacheable(ctx: Any, result: dict[str, Any]) -> dict[str, Any]:
    if getattr(ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS:
        result["ttlMs"], result["cacheScope"] = TTL_MS, CACHE_SCOPE
    return result


def skill_uri(name: str, path: str = "") -> str:
    return f"{SCHEME}{name}/{path}" if path else f"{SCHEME}{name}"


def parse_uri(uri: str) -> tuple[str, str] | None:
    """(skill name, path inside its folder; "" for the root) of a skill:// URI, or None."""
    if not uri.startswith(SCHEME):
        return None
    name, _, path = uri[len(SCHEME):].partition("/")
    return (name, path) if documents.valid_agent_name(name) and not path.endswith("/") else None


def mime_type(path: str) -> str:
    if path.endswith(".md"):
        return "text/markdown"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


class SkillCatalogue:
    """The registry seen as skill folders: entries, files and directories, read in a worker thread."""

    def __init__(self, folders: SkillFolders) -> None:
        self.store = folders

    async def folders(self) -> list[documents.SkillFolder]:
        return await anyio.to_thread.run_sync(self.store.list)

    async def folder(self, name: str) -> documents.SkillFolder | None:
        return next((f for f in await self.folders() if f.agent_name == name), None)

    @staticmethod
    def entry(folder: documents.SkillFolder) -> dict[str, Any]:
        """The SEP-2640 Skill entry: uri, frontmatter and the complete manifest."""
        return {"uri": skill_uri(folder.agent_name, documents.SKILL_MD), "frontmatter": folder.frontmatter,
                "resources": [{"uri": skill_uri(folder.agent_name, f["path"]), "digest": f["digest"],
                               "size": f["size"]} for f in folder.resources()]}

    async def read(self, name: str, path: str) -> bytes | None:
        folder = await self.folder(name)
        if folder is None:
            return None
        if path in folder.generated:
            return folder.generated[path]
        if not any(f["path"] == path for f in folder.stored):
            return None
        files = await anyio.to_thread.run_sync(self.store.files, folder.skill_id)
        return files.get(path)


def directory_children(folder: documents.SkillFolder, path: str) -> list[dict[str, Any]] | None:
    """Direct children of `path` ("" = the skill root) as Resources; None when it is not a directory."""
    prefix = path + "/" if path else ""
    files: dict[str, int] = {}
    dirs: set[str] = set()
    for f in folder.resources():
        if not f["path"].startswith(prefix):
            continue
        head, sep, _ = f["path"][len(prefix):].partition("/")
        if sep:
            dirs.add(head)
        else:
            files[head] = f["size"]
    if not files and not dirs:
        return None
    out = [{"uri": skill_uri(folder.agent_name, prefix + d), "name": d, "mimeType": DIRECTORY_MIME}
           for d in sorted(dirs)]
    out += [{"uri": skill_uri(folder.agent_name, prefix + n), "name": n, "mimeType": mime_type(n), "size": size}
            for n, size in sorted(files.items())]
    return out


class SkillsExtension(Extension):
    """The three SEP-2640 methods over the registry's skill folders."""

    identifier = IDENTIFIER

    def __init__(self, catalogue: SkillCatalogue, *, page_size: int = PAGE_SIZE) -> None:
        self.catalogue = catalogue
        self.page_size = page_size

    def settings(self) -> dict[str, Any]:
        return {"directoryRead": True}

    def methods(self) -> list[MethodBinding]:
        return [MethodBinding("skills/list", PaginatedRequestParams, self.list_skills),
                MethodBinding("skills/get", SkillGetParams, self.get_skill),
                MethodBinding("resources/directory/read", DirectoryReadParams, self.read_directory)]

    async def list_skills(self, ctx: Any, params: PaginatedRequestParams | None) -> dict[str, Any]:
        after = _cursor(params.cursor if params else None)  # the last skill id of the previous page
        folders = [f for f in await self.catalogue.folders() if f.skill_id > after]
        page = folders[:self.page_size]
        result: dict[str, Any] = {"skills": [self.catalogue.entry(f) for f in page]}
        if len(folders) > self.page_size:
            result["nextCursor"] = _next_cursor(page[-1].skill_id)
        return _cacheable(ctx, result)

    async def get_skill(self, ctx: Any, params: SkillGetParams) -> dict[str, Any]:
        parsed = parse_uri(params.uri)
        folder = await self.catalogue.folder(parsed[0]) if parsed and parsed[1] == documents.SKILL_MD else None
        if folder is None:
            raise _invalid(f"No skill at {params.uri!r}; skills/get takes the skill://<name>/SKILL.md URI of a "
                           "skill from skills/list.", uri=params.uri)
        return _cacheable(ctx, {"skill": self.catalogue.entry(folder)})

    async def read_directory(self, ctx: Any, params: DirectoryReadParams) -> dict[str, Any]:
        parsed = parse_uri(params.uri)
        folder = await self.catalogue.folder(parsed[0]) if parsed else None
        children = directory_children(folder, parsed[1]) if folder is not None and parsed else None
        if children is None:
            raise _invalid(f"{params.uri!r} is not a directory of a skill.", uri=params.uri)
        start = _cursor(params.cursor)
        result: dict[str, Any] = {"resources": children[start:start + DIRECTORY_PAGE_SIZE]}
        if start + DIRECTORY_PAGE_SIZE < len(children):
            result["nextCursor"] = _next_cursor(start + DIRECTORY_PAGE_SIZE)
        return _cacheable(ctx, result)


def advertise_on_handshake(extensions: dict[str, dict[str, Any]]):
    """Middleware: add `extensions` and the listChanged flags to a 2025-era `initialize` result."""

    async def middleware(ctx: Any, call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict):
            capabilities = result.setdefault("capabilities", {})
            capabilities.setdefault("extensions", {}).update(extensions)
            for kind in ("resources", "prompts"):
                if isinstance(capabilities.get(kind), dict):
                    capabilities[kind]["listChanged"] = True
        return result

    return middleware


class SkillsServerMixin:
    """Resources, prompts and change notifications for an MCPServer subclass holding `self.registry`."""

    def install_skills(self, page_size: int = PAGE_SIZE) -> SkillsExtension:
        """Declare the extension and its handlers; call once, after MCPServer.__init__."""
        self.skill_catalogue = SkillCatalogue(SkillFolders(self.registry.store))
        self._prompt_page_size = page_size
        self._legacy_sessions: weakref.WeakSet[Any] = weakref.WeakSet()
        extension = SkillsExtension(self.skill_catalogue, page_size=page_size)
        self._apply_extension(extension)  # noqa: SLF001 - MCPServer applies extensions the same way
        self.middleware.append(advertise_on_handshake({IDENTIFIER: extension.settings()}))
        self.middleware.append(self._remember_session)
        return extension

    async def _remember_session(self, ctx: Any, call_next: Any) -> Any:
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS and ctx.session is not None:
            try:
                self._legacy_sessions.add(ctx.session)
            except TypeError:
                pass
        return await call_next(ctx)

    async def skills_changed(self) -> None:
        """Tell connected clients that the resource and prompt lists changed."""
        await self._subscriptions.publish(ResourcesListChanged())
        await self._subscriptions.publish(PromptsListChanged())
        for session in list(self._legacy_sessions):
            try:
                await session.send_resource_list_changed()
                await session.send_prompt_list_changed()
            except Exception:  # a closed session: it will not hear about changes again
                log.debug("dropping a session that could not be notified", exc_info=True)
                self._legacy_sessions.discard(session)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        result = await super().call_tool(name, arguments, context)
        if name in MUTATING_TOOLS and not getattr(result, "is_error", False):
            await self.skills_changed()
        return result

    # -- resources

    async def list_resources(self) -> list[MCPResource]:
        own = [MCPResource(uri=skill_uri(f.agent_name, documents.SKILL_MD), name=f.agent_name,
                           description=str(f.frontmatter.get("description", f.description)),
                           mime_type="text/markdown", size=len(f.generated[documents.SKILL_MD]))
               for f in await self.skill_catalogue.folders()]
        return [*await super().list_resources(), *own]

    async def list_resource_templates(self) -> list[MCPResourceTemplate]:
        template = MCPResourceTemplate(
            uri_template="skill://{name}/{+path}", name="skill-file", mime_type=None,
            description="A file of a skill's folder (Agent Skills layout): scripts, references, assets. "
                        "skills/list gives every skill's files with sizes and sha256 digests.")
        return [*await super().list_resource_templates(), template]

    async def read_resource(self, uri: Any, context: Any = None) -> Iterable[Any]:
        text = str(uri)
        if not text.startswith(SCHEME):
            return await super().read_resource(uri, context)
        from mcp.server.lowlevel.helper_types import ReadResourceContents

        parsed = parse_uri(text)
        data = await self.skill_catalogue.read(*parsed) if parsed and parsed[1] else None
        if data is None:
            raise ResourceNotFoundError(f"No skill file at {text!r}.")
        try:
            return [ReadResourceContents(content=data.decode("utf-8"), mime_type=mime_type(parsed[1]))]
        except UnicodeDecodeError:
            return [ReadResourceContents(content=data, mime_type=mime_type(parsed[1]))]

    # -- prompts: one per knowledge skill

    async def _knowledge(self) -> list[documents.SkillFolder]:
        return [f for f in await self.skill_catalogue.folders() if not f.executable]

    async def list_prompts(self) -> list[MCPPrompt]:
        own = [MCPPrompt(name=f.agent_name, title=f.name, description=str(f.frontmatter.get("description",
                                                                                           f.description)))
               for f in await self._knowledge()]
        return [*await super().list_prompts(), *own]

    async def _handle_list_prompts(self, ctx: Any, params: PaginatedRequestParams | None) -> ListPromptsResult:
        prompts = await self.list_prompts()
        start = _cursor(params.cursor if params else None)
        end = start + self._prompt_page_size
        return ListPromptsResult(prompts=prompts[start:end], next_cursor=_next_cursor(end) if end < len(prompts)
                                 else None)

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        folder = next((f for f in await self._knowledge() if f.agent_name == name), None)
        if folder is None:
            return await super().get_prompt(name, arguments, context)
        return GetPromptResult(description=str(folder.frontmatter.get("description", folder.description)),
                               messages=[PromptMessage(role="user", content=TextContent(type="text",
                                                                                       text=folder.instructions))])
