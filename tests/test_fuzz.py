"""Fuzz all eight tools through a real MCP client (issue 10, acceptance 2).

Hypothesis generates arguments for every tool, mixing plausible values with hostile ones (ids outside
SQLite's range, booleans and strings for integers, Unicode digits, deep JSON, huge numbers, schemas
with remote references and backtracking patterns, unparsable URLs). One long-lived in-process
`Client(create_server(...))` session takes every call. Each answer must be a success or the error
shape with a code other than internal_error, never a protocol error, and a refused call must leave
the database exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from typing import Any

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from mcp import Client

from conftest import FakeEmbedder
from server import Settings, create_server

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="selfmcp-hypothesis-"))  # not a .hypothesis folder in the repo
CALLS = 2100  # acceptance: at least 2,000 generated calls

TOOLS = ("skill_create", "skill_search", "skill_execute", "skill_list_summary", "skill_get_detail",
         "skill_update", "skill_delete", "skill_auth_url")

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
hostile_text = st.sampled_from([
    "", " ", "²", "①", "١٢", "\x00", "a" * 65, "NOT", '"', "csv-json", "*", "a OR b", "'; drop table skills; --",
    "../../etc/passwd", "http://[::1", "x" * 5000, "12345678901234567890", "-1", "9223372036854775807",
    "${jndi:ldap://127.0.0.1/a}", "\ud7ff\ue000", "SELECT", "NEAR(a b)", "a:b", "^", "skill_search",
])
text = st.text(max_size=60) | hostile_text
names = st.from_regex(r"[a-z][a-z0-9_.-]{0,12}", fullmatch=True) | hostile_text
ids = (st.sampled_from([1, 2, 3, 4, 0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**20, True, False, "1", 1.0, "①"])
       | st.integers(min_value=-5, max_value=60) | json_values)
bodies = st.sampled_from([
    "print('ok')", "import json, os\nprint(json.loads(os.environ['SELFMCP_PARAMS']))", "def f(:", "x = " + "1+" * 40000 + "1",
    "---\nname: doc\ndescription: a document\n---\n# Just words", "print('\x00')", "\x00", "", "   ",
    "---\ntags: [a\n---\n```python\nprint(1)\n```", "import sys; sys.exit(3)",
]) | st.text(max_size=80)
schemas_ = st.sampled_from([
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}},
    {"$ref": "http://127.0.0.1:9/schema.json"}, {"$ref": "#"}, {"$ref": "#/$defs/none"}, {"$schema": {}},
    {"$schema": 5}, {"type": "object", "required": ["city"]}, {"patternProperties": {"(?=x)": {}}},
    {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}, {"uniqueItems": True},
    {"type": "nope"}, {},
]) | st.dictionaries(st.sampled_from(["type", "properties", "$ref", "pattern", "items", "$schema", "enum"]),
                     json_values, max_size=3)
auth_configs = st.sampled_from([
    {"type": "api_key", "env_var": "FUZZ_API_KEY"}, {"type": "oauth2", "auth_url": "http://[::1",
                                                     "client_id_env": "FUZZ_ID"},
    {"type": "oauth2", "auth_url": "https://example.com/auth", "client_id_env": "FUZZ_ID", "scopes": ["a"]},
    {"type": "api_key", "env_var": "lower case"}, {"type": "magic"}, {},
]) | st.dictionaries(st.text(max_size=10), json_values, max_size=3)


def args_for(tool: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments for `tool`: each one plausible, hostile, any JSON, or left out."""
    def arg(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return good | json_values

    optional: dict[str, st.SearchStrategy[Any]] = {
        "skill_create": {"name": arg(names), "description": arg(text), "body": arg(bodies),
                         "dependencies": arg(st.lists(st.sampled_from(["requests>=2", "", "not a req!!", "x==1"]),
                                                      max_size=3)),
                         "auth_config": arg(auth_configs), "params_schema": arg(schemas_)},
        "skill_update": {"skill_id": ids, "name": arg(names), "description": arg(text), "body": arg(bodies),
                         "auth_config": arg(auth_configs), "params_schema": arg(schemas_)},
        "skill_search": {"query": arg(text), "mode": arg(st.sampled_from(["hybrid", "keyword", "vector", "fuzzy"])),
                         "top_k": arg(st.integers(min_value=-2, max_value=60))},
        "skill_execute": {"skill_id": ids, "params": arg(st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
                          "timeout": arg(st.sampled_from([0, 0.5, 1, 5, 601, -1, 1e308]))},
        "skill_list_summary": {"limit": arg(st.integers(min_value=-2, max_value=1100)), "cursor": arg(text)},
        "skill_get_detail": {"skill_id": ids},
        "skill_delete": {"skill_id": ids},
        "skill_auth_url": {"skill_id": ids},
    }[tool]
    return st.fixed_dictionaries({}, optional=optional)


calls = st.sampled_from(TOOLS).flatmap(lambda tool: st.tuples(st.just(tool), args_for(tool)))


def fingerprint(db_path) -> str:
    """Everything a refused call must leave alone (run history excepted: it is written after runs)."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        digest = hashlib.sha256()
        for query in ("select id, name, description, body, version, is_active, dependencies_json, auth_config_json, "
                      "params_schema_json from skills order by id",
                      "select skill_id, version from skill_versions order by skill_id, version",
                      "select rowid, name, description from skills_fts order by rowid",
                      "select skill_id, content_hash from skill_embeddings order by skill_id",
                      "select id, summary_json from skill_summary_cache order by id"):
            digest.update(repr(conn.execute(query).fetchall()).encode())
        return digest.hexdigest()


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    db_path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    server = create_server(Settings(db_path=db_path, transport="stdio", embedder=FakeEmbedder(),
                                    environ={"PATH": os.environ["PATH"], "FUZZ_API_KEY": "k"}))
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(Client(server)) as client:
        stats = {"calls": 0, "errors": {}}
        yield portal, client, db_path, stats, server.registry
    assert stats["calls"] >= CALLS, stats


@settings(max_examples=CALLS, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(call=calls)
def test_every_tool_answers_every_input_with_a_result_or_the_error_shape(session, call):
    portal, client, db_path, stats, registry = session
    tool, arguments = call
    assert registry.search_index.wait_idle()  # the vectors of earlier creates are written in the background
    before = fingerprint(db_path)
    result = portal.call(client.call_tool, tool, arguments)  # a protocol error raises here and fails the test
    stats["calls"] += 1
    if not result.is_error:
        assert isinstance(result.structured_content, dict)
        return
    body = result.structured_content
    assert isinstance(body, dict) and {"error", "message", "hint"} <= body.keys(), result.content
    assert json.loads(result.content[0].text) == body
    assert body["error"] != "internal_error", (tool, arguments, body)
    assert body["message"] and body["hint"]
    stats["errors"][body["error"]] = stats["errors"].get(body["error"], 0) + 1
    assert fingerprint(db_path) == before, (tool, arguments, body)
