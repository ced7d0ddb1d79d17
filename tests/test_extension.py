"""Skills over MCP (SEP-2640) end to end: skills/list, skills/get, resources/read of a file and a
directory, a knowledge skill's prompt, and list-changed notifications, through a real MCP client
in process, over stdio and over streamable HTTP, on both protocol eras."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import PaginatedRequestParams, Request, RequestParams
from pydantic import TypeAdapter

from selfmcp.folders import SkillFolders
from conftest import FakeEmbedder, connected_client, http_server, stdio_params
from server import Settings, create_server

pytestmark = pytest.mark.anyio
EXT = "io.modelcontextprotocol/skills"
HELPER = "def shout(text):\n    return text.upper() + '!'\n"
MAIN = ("import json, os\nfrom helper import shout\n"
        "print(shout(open('assets/greeting.txt').read().strip()), json.loads(os.environ['SELFMCP_PARAMS']))\n")
KNOWLEDGE = ("---\nname: style-guide\ndescription: How we write commit messages.\n---\n"
             "# Style\r\n\r\nUse the imperative.\n")


class ListParams(PaginatedRequestParams):
    pass


class UriParams(RequestParams):
    uri: str


class DirParams(PaginatedRequestParams):
    uri: str


class SkillsList(Request[ListParams, str]):
    method: str = "skills/list"


class SkillsGet(Request[UriParams, str]):
    method: str = "skills/get"


class DirectoryRead(Request[DirParams, str]):
    method: str = "resources/directory/read"


async def send(client: Client, request: Request[Any, Any]) -> dict[str, Any]:
    return await client.session.send_request(request, TypeAdapter(dict))


def seed(reg) -> None:
    """A Python skill with supporting files, a knowledge skill, and a plain-Python skill."""
    reg.create("shouter", "Shout a greeting.", "---\nname: shouter\ndescription: Shout a greeting.\n---\n# Shouter\n",
               files={"scripts/main.py": MAIN, "scripts/helper.py": HELPER, "assets/greeting.txt": "hello\n",
                      "assets/logo.bin": {"base64": base64.b64encode(b"\x89PNG\x00\xff").decode()}})
    reg.create("style_guide", "How we write commit messages.", KNOWLEDGE)
    reg.create("adder", "Add two numbers.", "print(1 + 1)\n")


@contextlib.asynccontextmanager
async def connected(kind: str, mode: str, tmp_path, reg=None):
    if kind == "memory":
        server = create_server(Settings(db_path=tmp_path / "e2e.db", embedder=FakeEmbedder()), reg)
        async with Client(server, mode=mode) as client:
            yield client
    else:
        async with connected_client(tmp_path, kind, mode) as client:
            yield client


async def create_via_tools(client: Client) -> None:
    for args in ({"name": "shouter", "description": "Shout a greeting.",
                  "body": "---\nname: shouter\ndescription: Shout a greeting.\n---\n# Shouter\n",
                  "files": {"scripts/main.py": MAIN, "scripts/helper.py": HELPER, "assets/greeting.txt": "hello\n",
                            "assets/logo.bin": {"base64": base64.b64encode(b"\x89PNG\x00\xff").decode()}}},
                 {"name": "style_guide", "description": "How we write commit messages.", "body": KNOWLEDGE},
                 {"name": "adder", "description": "Add two numbers.", "body": "print(1 + 1)\n"}):
        result = await client.call_tool("skill_create", args)
        assert not result.is_error, result


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", ["memory", "stdio", "http"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_skills_are_served_as_agent_skills(kind, mode, tmp_path):
    async with connected(kind, mode, tmp_path) as client:
        assert EXT in (client.server_capabilities.extensions or {})
        assert client.server_capabilities.extensions[EXT] == {"directoryRead": True}
        await create_via_tools(client)

        listing = await send(client, SkillsList(params=ListParams()))
        entries = {e["frontmatter"]["name"]: e for e in listing["skills"]}
        assert {"shouter", "style-guide", "adder", "selfmcp-about", "selfmcp-env-keys"} <= set(entries)
        if mode == "auto":
            assert listing["ttlMs"] >= 0 and listing["cacheScope"] in ("public", "private")
        shouter = entries["shouter"]
        paths = [r["uri"] for r in shouter["resources"]]
        assert paths[0] == shouter["uri"] == "skill://shouter/SKILL.md"
        assert set(paths) == {f"skill://shouter/{p}" for p in
                              ("SKILL.md", "scripts/main.py", "scripts/helper.py", "assets/greeting.txt",
                               "assets/logo.bin")}
        # the plain-Python skill is shown as scripts/main.py beside a generated SKILL.md
        assert {r["uri"] for r in entries["adder"]["resources"]} == {"skill://adder/SKILL.md",
                                                                       "skill://adder/scripts/main.py"}

        # every digest and size covers exactly the bytes resources/read serves
        for entry in (shouter, entries["adder"], entries["style-guide"]):
            for res in entry["resources"]:
                content = (await client.read_resource(res["uri"])).contents[0]
                data = content.text.encode() if hasattr(content, "text") else base64.b64decode(content.blob)
                assert (len(data), sha(data)) == (res["size"], res["digest"]), res["uri"]
        knowledge = (await client.read_resource("skill://style-guide/SKILL.md")).contents[0]
        assert knowledge.text == KNOWLEDGE  # byte for byte: CRLF kept
        blob = (await client.read_resource("skill://shouter/assets/logo.bin")).contents[0]
        assert base64.b64decode(blob.blob) == b"\x89PNG\x00\xff"

        got = await send(client, SkillsGet(params=UriParams(uri="skill://shouter/SKILL.md")))
        assert got["skill"] == shouter and "nextCursor" not in got
        with pytest.raises(MCPError) as err:
            await send(client, SkillsGet(params=UriParams(uri="skill://no-such-skill-9f3a/SKILL.md")))
        assert err.value.error.code == -32602

        root = await send(client, DirectoryRead(params=DirParams(uri="skill://shouter")))
        assert [(r["name"], r["mimeType"]) for r in root["resources"][:2]] == [
            ("assets", "inode/directory"), ("scripts", "inode/directory")]
        scripts = await send(client, DirectoryRead(params=DirParams(uri="skill://shouter/scripts")))
        assert [r["uri"] for r in scripts["resources"]] == ["skill://shouter/scripts/helper.py",
                                                           "skill://shouter/scripts/main.py"]
        for bad in ("skill://shouter/SKILL.md", "skill://shouter/nope", "skill://nobody"):
            with pytest.raises(MCPError) as err:
                await send(client, DirectoryRead(params=DirParams(uri=bad)))
            assert err.value.error.code == -32602
        with pytest.raises(MCPError) as err:
            await client.read_resource("skill://shouter/missing.txt")
        assert err.value.error.code == -32602

        # resources/list names each SKILL.md only; the other files come through a template
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert "skill://shouter/SKILL.md" in listed and not any("scripts/" in u for u in listed)
        md = next(r for r in (await client.list_resources()).resources if str(r.uri) == "skill://shouter/SKILL.md")
        assert (md.name, md.description, md.mime_type) == ("shouter", "Shout a greeting.", "text/markdown")
        templates = (await client.list_resource_templates()).resource_templates
        assert any(t.uri_template.startswith("skill://") for t in templates)

        # a knowledge skill is a prompt returning its instructions; runnable skills are not prompts
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert "style-guide" in prompts and "shouter" not in prompts and "adder" not in prompts
        prompt = await client.get_prompt("style-guide")
        assert prompt.messages[0].content.text == KNOWLEDGE

        # the Python skill with a helper module and a data file runs from its folder
        shouter_id = (await client.call_tool("skill_search", {"query": "shout greeting", "mode": "keyword"})
                      ).structured_content["results"][0]["id"]
        run = (await client.call_tool("skill_execute", {"skill_id": shouter_id, "params": {"n": 1}})
               ).structured_content
        assert run["stdout"] == "HELLO! {'n': 1}\n", run


async def test_skills_list_pages_hold_whole_entries_and_cursors_round_trip(reg, tmp_path):
    seed(reg)
    server = create_server(Settings(db_path=tmp_path / "e2e.db", embedder=FakeEmbedder()), reg)

    extension = next(e for e in server._extensions if e.identifier == EXT)  # noqa: SLF001
    extension.page_size = 2
    async with Client(server) as client:
        seen, cursor, pages = [], None, 0
        while True:
            page = await send(client, SkillsList(params=ListParams(cursor=cursor)))
            pages += 1
            seen += [e["frontmatter"]["name"] for e in page["skills"]]
            assert all(e["resources"][0]["uri"] == e["uri"] for e in page["skills"])
            cursor = page.get("nextCursor")
            if cursor is None:
                break
        assert pages >= 3 and len(seen) == len(set(seen)) == len(SkillFolders(reg.store).list())
        with pytest.raises(MCPError) as err:
            await send(client, SkillsList(params=ListParams(cursor="not-a-cursor")))
        assert err.value.error.code == -32602


@pytest.mark.parametrize("kind", ["memory", "stdio", "http"])
async def test_a_listen_stream_hears_that_lists_changed_after_skill_create(kind, tmp_path):
    async with connected(kind, "auto", tmp_path) as client:
        async with client.listen(resources_list_changed=True, prompts_list_changed=True) as sub:
            await create_via_tools(client)
            kinds = set()
            with anyio.fail_after(20):
                async for event in sub:
                    kinds.add(type(event).__name__)
                    if {"ResourcesListChanged", "PromptsListChanged"} <= kinds:
                        break


@pytest.mark.parametrize("kind", ["memory", "stdio", "http"])
async def test_a_legacy_session_is_notified_when_lists_change_after_skill_create(kind, tmp_path):
    heard: list[str] = []
    both = anyio.Event()

    async def on_message(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if method in ("notifications/resources/list_changed", "notifications/prompts/list_changed"):
            heard.append(method)
            if len(set(heard)) == 2:
                both.set()

    if kind == "memory":
        server = create_server(Settings(db_path=tmp_path / "e2e.db", embedder=FakeEmbedder()))
        target: Any = server
    elif kind == "stdio":
        target = stdio_params(tmp_path)
    with contextlib.ExitStack() as stack:
        if kind == "http":
            target = stack.enter_context(http_server(tmp_path)) + "/mcp"
        async with Client(target, mode="legacy", message_handler=on_message) as client:
            caps = client.server_capabilities
            assert caps.resources.list_changed and caps.prompts.list_changed
            await client.call_tool("skill_create", {"name": "style_guide", "description": "Commit style.",
                                                    "body": KNOWLEDGE})
            with anyio.fail_after(20):
                await both.wait()
