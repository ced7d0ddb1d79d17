"""Every source of an error reaches the client in the one shape: {error, message, hint, ...details}.

Sources: the registry's SkillError classes (called from Python and over MCP), the SDK's argument
validation, storage failures, and the HTTP guard's own bodies.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3

import httpx2
import pytest

import skills
from conftest import FakeEmbedder, assert_error, http_server
from mcp import Client
from selfmcp import errors
from server import Settings, create_server

pytestmark = pytest.mark.anyio

CODE_RE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
ERROR_CLASSES = sorted((c for c in vars(errors).values()
                        if isinstance(c, type) and issubclass(c, errors.SkillError) and c is not errors.SkillError),
                       key=lambda c: c.code)


def test_error_codes_are_unique_stable_snake_case():
    codes = [c.code for c in ERROR_CLASSES]
    assert len(codes) == len(set(codes))
    assert all(CODE_RE.match(code) for code in codes)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.code)
def test_every_registry_error_carries_code_message_and_hint(cls):
    body = cls("Something about 'x' went wrong.", extra=1).payload()
    assert list(body)[:3] == ["error", "message", "hint"]
    assert body["error"] == cls.code and body["message"] and body["hint"] and body["extra"] == 1


def test_the_same_bad_id_gets_the_same_code_from_python_and_over_mcp(reg):
    with pytest.raises(skills.InvalidArgument):
        reg.get_detail("abc")
    with pytest.raises(skills.SkillNotFound):
        reg.get_detail(123456)


@pytest.fixture
async def client(db_path):
    server = create_server(Settings(db_path=db_path, transport="stdio", embedder=FakeEmbedder(), environ={}))
    async with Client(server, raise_exceptions=True) as c:
        yield c


@pytest.mark.parametrize(("tool", "arguments", "code"), [
    ("skill_get_detail", {"skill_id": "abc"}, "invalid_argument"),  # the SDK's validation
    ("skill_search", {"query": "x", "top_k": "many"}, "invalid_top_k"),
    ("skill_create", {"name": "x", "description": "d"}, "invalid_body"),  # a required argument missing
    ("skill_get_detail", {"skill_id": 987654}, "skill_not_found"),  # the registry
    ("skill_create", {"name": "a b", "description": "d", "body": "print(1)"}, "invalid_name"),
])
async def test_argument_and_registry_errors_over_mcp_have_the_shape(client, tool, arguments, code):
    assert_error(await client.call_tool(tool, arguments), code)


async def test_a_locked_database_is_storage_unavailable_and_changes_nothing(client, db_path):
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("begin exclusive")
        result = await client.call_tool("skill_create", {"name": "locked_out", "description": "d",
                                                         "body": "print(1)"})
        assert_error(result, "storage_unavailable")
    finally:
        with contextlib.suppress(sqlite3.Error):
            blocker.execute("rollback")
        blocker.close()
    assert_error(await client.call_tool("skill_search", {"query": "x", "top_k": 0}), "invalid_top_k")
    listing = (await client.call_tool("skill_list_summary", {})).structured_content
    assert "locked_out" not in {s["name"] for s in listing["skills"]}


def test_the_http_guard_answers_in_the_error_shape(tmp_path):
    with http_server(tmp_path, SELFMCP_AUTH="none") as base:
        foreign = httpx2.post(base + "/mcp", headers={"Host": "evil.example"}, json={})
        assert foreign.status_code == 421
        too_big = httpx2.post(base + "/mcp", content=b" " * (5 << 20))
        assert too_big.status_code == 413
    for response in (foreign, too_big):
        body = response.json()
        assert list(body)[:3] == ["error", "message", "hint"] and all(body[k] for k in ("error", "message", "hint"))
        assert CODE_RE.match(body["error"])
