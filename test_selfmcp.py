"""Tests of the registry (against a temporary database) and of the real server end to end.

Unit tests call skills.py directly. End-to-end tests start `server.py` as a subprocess and
drive it with the SDK's client over stdio and over streamable HTTP, with both the 2025
handshake protocol ("legacy") and the 2026 protocol ("auto").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import Client

import db
import skills
from conftest import (
    ROOT,
    BrokenEmbedder,
    FakeEmbedder,
    assert_error,
    clean_env,
    http_client,
    http_server,
    payload,
    stdio_params,
)
from embeddings import FallbackEmbedder, LiteLLMEmbedder, make_embedder
from server import ConfigError, Settings

TOOL_NAMES = {"skill_create", "skill_update", "skill_delete", "skill_execute", "skill_list_summary",
              "skill_get_detail", "skill_search", "skill_auth_url"}


# ------------------------------------------------------------------------------ fixtures

def make(reg, name="csv_to_json", description="Convert a CSV file into JSON records.", body="print('ok')", **kw):
    return reg.create(name, description, body, **kw)


def rows(db_path, sql, *args):
    with contextlib.closing(db.connect(db_path)) as conn:
        return [tuple(r) for r in conn.execute(sql, args)]


# ------------------------------------------------------------------------ storage

def test_fresh_database_reaches_the_newest_schema_and_migrating_again_changes_nothing(db_path):
    conn = db.connect(db_path)
    assert db.schema_version(conn) == len(db.MIGRATIONS)
    assert db.migrate(conn) == len(db.MIGRATIONS)
    tables = {r[0] for r in conn.execute("select name from sqlite_master")}
    assert {"skills", "skill_versions", "skills_fts", "skill_embeddings", "skill_credentials",
            "skill_summary_cache"} <= tables
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("pragma foreign_keys").fetchone()[0] == 1
    conn.close()


def test_create_writes_fts_embedding_summary_and_version_one(reg, db_path):
    sid = make(reg)["id"]
    assert reg.search_index.wait_idle()  # the vector is made after the commit, in the background
    assert rows(db_path, "select version from skill_versions where skill_id = ?", sid) == [(1,)]
    assert rows(db_path, "select rowid from skills_fts where skills_fts match 'csv'") == [(sid,)]
    assert rows(db_path, "select model, dim from skill_embeddings where skill_id = ?", sid) == [("fake-32", 32)]
    summary = json.loads(rows(db_path, "select summary_json from skill_summary_cache where id = ?", sid)[0][0])
    assert summary == {"id": sid, "name": "csv_to_json", "short_description": "Convert a CSV file into JSON records."}


def test_a_write_that_fails_midway_leaves_no_half_written_rows(db_path):
    def failing_index_write(*args, **kwargs):
        raise RuntimeError("disk full")

    registry = skills.Registry(db_path, FakeEmbedder(), environ={})
    registry.search_index.write = failing_index_write
    with pytest.raises(RuntimeError):
        registry.create("x", "Does x.", "print(1)")
    for table in ("skills", "skill_versions", "skill_summary_cache", "skill_embeddings"):
        assert rows(db_path, f"select count(*) from {table}") == [(0,)]


def test_update_patches_only_given_fields_and_bumps_the_version(reg):
    sid = make(reg, dependencies=["requests"])["id"]
    out = reg.update(sid, description="Turn CSV into JSON.")
    assert out["version"] == 2 and out["updated_fields"] == ["description"]
    detail = reg.get_detail(sid)
    assert detail["description"] == "Turn CSV into JSON."
    assert detail["body"] == "print('ok')" and detail["dependencies"] == ["requests"]
    assert detail["versions"] == [1, 2]


def test_delete_then_create_reactivates_the_same_skill_and_keeps_history(reg, db_path):
    sid = make(reg)["id"]
    reg.update(sid, body="print('v2')")
    reg.delete(sid)
    assert reg.search("csv", "keyword", 5)["results"] == []
    with pytest.raises(skills.SkillNotFound):
        reg.get_detail(sid)
    again = make(reg, body="print('v3')")
    assert again == {"id": sid, "name": "csv_to_json", "version": 3, "status": "reactivated"}
    assert rows(db_path, "select version, body from skill_versions where skill_id = ? order by version", sid) == [
        (1, "print('ok')"), (2, "print('v2')"), (3, "print('v3')")]


def test_creating_an_active_name_twice_is_refused(reg):
    make(reg)
    with pytest.raises(skills.SkillExists):
        make(reg)


def test_renaming_onto_another_skills_name_is_refused_and_changes_nothing(reg):
    a = make(reg, name="a")["id"]
    make(reg, name="b")
    with pytest.raises(skills.SkillExists):
        reg.update(a, name="b")
    assert reg.get_detail(a)["name"] == "a" and reg.get_detail(a)["version"] == 1


# -------------------------------------------------------------------------- core skills

def test_core_skills_are_seeded_and_guarded(reg):
    names = {s["name"]: s["id"] for s in reg.list_summary()["skills"]}
    assert {"selfmcp_about", "selfmcp_env_keys"} <= set(names)
    about = names["selfmcp_about"]
    with pytest.raises(skills.CannotDeleteCoreSkill):
        reg.delete(about)
    with pytest.raises(skills.CannotRenameCoreSkill):
        reg.update(about, name="about2")
    assert reg.update(about, description="Custom about text.")["version"] == 2


def test_a_core_skill_found_deleted_is_reactivated_on_start(reg, db_path):
    with contextlib.closing(db.connect(db_path)) as conn:
        conn.execute("update skills set is_active = 0 where name = 'selfmcp_env_keys'")
    reg.seed_core_skills()
    assert "selfmcp_env_keys" in {s["name"] for s in reg.list_summary()["skills"]}


@pytest.mark.anyio
async def test_about_prints_one_section_and_lists_sections_for_an_unknown_one(reg):
    about = reg.search("selfmcp_about", "keyword", 1)["results"][0]["id"]
    out = await reg.execute(about, {"section": "versioning"}, 10)
    assert json.loads(out["stdout"])["section"] == "versioning"
    bad = await reg.execute(about, {"section": "nope"}, 10)
    assert bad["exit_code"] != 0
    assert "replit_setup" in json.loads(bad["stdout"])["available_sections"]
    everything = json.loads((await reg.execute(about, {}, 10))["stdout"])["sections"]
    assert set(everything) == {"source_code", "interface", "transport", "persistence", "versioning",
                               "execution", "sandbox", "in_force", "auth", "bootstrap_tools", "search",
                               "replit_setup"}


@pytest.mark.anyio
async def test_env_keys_reports_names_and_never_values(db_path):
    secret = "sk-test-value-abcdef123456"
    registry = skills.Registry(db_path, FakeEmbedder(), environ={
        "PATH": os.environ["PATH"], "ANTHROPIC_API_KEY": secret, "MY_SERVICE_TOKEN": secret})
    registry.seed_core_skills()
    sid = registry.search("selfmcp_env_keys", "keyword", 1)["results"][0]["id"]
    out = await registry.execute(sid, {}, 10)
    report = json.loads(out["stdout"])
    assert secret not in out["stdout"]
    assert report["known_services"]["ANTHROPIC_API_KEY"] == {"present": True, "service": "Anthropic (Claude)"}
    assert report["known_services"]["OPENAI_API_KEY"]["present"] is False
    assert report["detected_credential_env_vars"] == ["MY_SERVICE_TOKEN"]


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("field", "value", "code"), [
    ("name", "", "invalid_name"),
    ("name", "a b", "invalid_name"),
    ("name", "a/b", "invalid_name"),
    ("name", "x" * 65, "invalid_name"),
    ("name", "tab\there", "invalid_name"),
    ("description", "   ", "invalid_description"),
    ("description", "d" * 4097, "invalid_description"),
    ("body", "", "invalid_body"),
    ("body", "#" * (256 * 1024 + 1), "invalid_body"),
    ("body", "def f(:", "invalid_code"),
    ("body", "# Doc\n```python\nprint(\n```\n", "invalid_code"),
    ("dependencies", "requests", "invalid_dependency"),
    ("dependencies", [""], "invalid_dependency"),
    ("dependencies", ["-e /"], "invalid_dependency"),
    ("dependencies", ["git+https://example.com/x.git"], "invalid_dependency"),
    ("dependencies", ["pkg @ file:///tmp/x"], "invalid_dependency"),
    ("auth_config", {"type": "magic"}, "invalid_auth_config"),
    ("auth_config", {"type": "api_key", "env_var": "not valid"}, "invalid_auth_config"),
    ("auth_config", {"type": "oauth2", "auth_url": "ftp://x", "client_id_env": "ID"}, "invalid_auth_config"),
])
def test_bad_create_input_is_refused_with_its_code_and_changes_nothing(reg, field, value, code):
    args = {"name": "good_name", "description": "Does things.", "body": "print(1)", field: value}
    before = reg.list_summary()["total"]
    with pytest.raises(skills.SkillError) as info:
        reg.create(**args)
    assert info.value.code == code
    assert info.value.hint and str(info.value)
    assert reg.list_summary()["total"] == before


@pytest.mark.anyio
@pytest.mark.parametrize(("kwargs", "code"), [
    ({"timeout": 0}, "invalid_timeout"),
    ({"timeout": 601}, "invalid_timeout"),
    ({"params": [1, 2]}, "invalid_params"),
    ({"params": {"blob": "x" * (1024 * 1024)}}, "invalid_params"),
])
async def test_bad_execute_input_is_refused(reg, kwargs, code):
    sid = make(reg)["id"]
    with pytest.raises(skills.SkillError) as info:
        await reg.execute(sid, **kwargs)
    assert info.value.code == code


# ------------------------------------------------------------------------------ search

@pytest.mark.parametrize("query", ['"', 'NOT', 'csv OR', '-csv', 'csv*', 'name:csv', 'a AND (b', '日本語 ü',
                                   '', '   ', "it's", 'NEAR(csv json)', '^csv', '***'])
@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
def test_any_query_string_searches_without_error(reg, query, mode):
    make(reg)
    out = reg.search(query, mode, 5)
    assert all(0.0 <= r["score"] <= 1.0 for r in out["results"])


def test_search_modes_find_the_skill_with_scores_in_range(reg):
    target = make(reg)["id"]
    make(reg, name="weather", description="Current weather for a city.")
    for mode in ("keyword", "vector", "hybrid"):
        results = reg.search("convert csv to json", mode, 3)["results"]
        assert results[0]["id"] == target, mode
        assert all(0 <= r["score"] <= 1 for r in results)
    scores = [r["score"] for r in reg.search("convert csv to json", "hybrid", 10)["results"]]
    assert scores == sorted(scores, reverse=True)


def test_equal_scores_are_ordered_by_id(reg):
    ids = [make(reg, name=f"twin{i}", description="Identical twin skill.")["id"] for i in range(4)]
    results = reg.search("identical twin", "hybrid", 4)["results"]
    assert [r["id"] for r in results] == ids


@pytest.mark.parametrize(("mode", "top_k", "code"), [("fuzzy", 5, "invalid_mode"), ("hybrid", 0, "invalid_top_k"),
                                                     ("hybrid", 51, "invalid_top_k")])
def test_bad_search_arguments_are_clear_errors(reg, mode, top_k, code):
    with pytest.raises(skills.SkillError) as info:
        reg.search("csv", mode, top_k)
    assert info.value.code == code


def test_hybrid_falls_back_to_keyword_results_when_the_query_cannot_be_embedded(db_path):
    embedder = BrokenEmbedder()
    embedder.broken = False
    registry = skills.Registry(db_path, embedder, environ={})
    sid = make(registry)["id"]
    embedder.broken = True
    out = registry.search("csv json", "hybrid", 5)
    assert [r["id"] for r in out["results"]] == [sid] and "note" in out


def test_model_change_re_embeds_every_vector_and_never_mixes_dimensions(db_path):
    old = skills.Registry(db_path, FakeEmbedder(32, "old-32"), environ={})
    ids = [make(old, name=f"s{i}", description=f"Skill number {i} about topic {i}.")["id"] for i in range(5)]
    old.search("topic", "vector", 5)  # loads the old model's index
    new = skills.Registry(db_path, FakeEmbedder(16, "new-16"), environ={})
    assert new.search("topic 3", "vector", 5)["results"] == []  # no vector of the new model yet
    assert sorted(new.search_index.stale_embeddings()) == ids
    assert new.search_index.reembed_stale(batch_size=2) == 5
    assert new.search_index.stale_embeddings() == []
    assert rows(db_path, "select distinct model, dim from skill_embeddings") == [("new-16", 16)]
    assert new.search("topic 3", "vector", 1)["results"][0]["id"] == ids[3]


def test_vectors_made_by_the_fallback_are_re_embedded_when_the_remote_answers_again(db_path):
    remote = BrokenEmbedder()
    embedder = FallbackEmbedder(remote, FakeEmbedder(32, "offline-32"))
    registry = skills.Registry(db_path, embedder, environ={})
    sid = make(registry)["id"]
    assert registry.search_index.wait_idle()
    assert rows(db_path, "select model from skill_embeddings where skill_id = ?", sid) == [("offline-32",)]
    assert registry.search("csv json", "vector", 3)["results"][0]["id"] == sid  # offline query vs offline vectors
    remote.broken = False
    assert registry.search_index.stale_embeddings() == [s["id"] for s in registry.list_summary()["skills"]]
    registry.search("anything", "vector", 3)  # the remote answers again: a re-embed pass starts
    deadline = time.monotonic() + 10
    while registry.search_index.stale_embeddings() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rows(db_path, "select distinct model from skill_embeddings") == [("remote-model",)]
    assert registry.search("csv json", "vector", 3)["results"][0]["id"] == sid


def test_search_answers_while_a_re_embed_runs(db_path):
    embedding, release = threading.Event(), threading.Event()

    class StuckEmbedder(FakeEmbedder):
        def embed(self, texts):
            if len(texts) > 1:  # a re-embed batch: held until the search below has answered
                embedding.set()
                assert release.wait(30)
            return super().embed(texts)

    old = skills.Registry(db_path, FakeEmbedder(32, "old"), environ={})
    for i in range(6):
        make(old, name=f"s{i}", description=f"Skill {i}.")
    new = skills.Registry(db_path, StuckEmbedder(32, "new"), environ={})
    worker = threading.Thread(target=new.search_index.reembed_stale, kwargs={"batch_size": 2})
    worker.start()
    try:
        assert embedding.wait(30)  # the re-embed is in the middle of a batch
        out = new.search("skill", "hybrid", 3)  # would wait for `release` if searches waited on the re-embed
        assert out["results"] and worker.is_alive()
    finally:
        release.set()
        worker.join()


def test_pagination_returns_every_skill_exactly_once(reg):
    for i in range(23):
        make(reg, name=f"p{i}", description=f"Paged skill {i}.")
    seen, cursor = [], None
    while True:
        page = reg.list_summary(limit=5, cursor=cursor)
        assert page["total"] == 25
        seen.extend(s["id"] for s in page["skills"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 25 and len(set(seen)) == 25


@pytest.mark.parametrize(("limit", "cursor", "code"), [(0, None, "invalid_limit"), (5000, None, "invalid_limit"),
                                                       (10, "abc", "invalid_cursor")])
def test_bad_pagination_arguments_are_clear_errors(reg, limit, cursor, code):
    with pytest.raises(skills.SkillError) as info:
        reg.list_summary(limit, cursor)
    assert info.value.code == code


# -------------------------------------------------------------------- auth and execution

OAUTH = {"type": "oauth2", "auth_url": "https://accounts.example.com/o/auth?prompt=consent",
         "token_url": "https://accounts.example.com/token",
         "scopes": ["https://www.example.com/auth/calendar.readonly", "email"],
         "client_id_env": "EX_CLIENT_ID", "client_secret_env": "EX_CLIENT_SECRET"}


def test_oauth2_auth_url_is_prefilled_and_correctly_encoded(db_path):
    registry = skills.Registry(db_path, FakeEmbedder(), environ={"EX_CLIENT_ID": "id with&odd=chars"})
    sid = make(registry, auth_config=OAUTH)["id"]
    out = registry.auth_url(sid)
    parts = urllib.parse.urlsplit(out["auth_url"])
    query = urllib.parse.parse_qs(parts.query)
    assert parts.netloc == "accounts.example.com" and parts.path == "/o/auth"
    assert query["client_id"] == ["id with&odd=chars"]
    assert query["scope"] == ["https://www.example.com/auth/calendar.readonly email"]
    assert query["response_type"] == ["code"] and query["prompt"] == ["consent"]
    assert query["state"] == [out["state"]] and len(out["state"]) >= 16
    assert out["missing"] == ["EX_CLIENT_SECRET"]


def test_api_key_auth_url_gives_instructions_and_a_replit_link_on_replit(db_path):
    registry = skills.Registry(db_path, FakeEmbedder(), environ={"REPL_OWNER": "ann", "REPL_SLUG": "tools"})
    sid = make(registry, auth_config={"type": "api_key", "env_var": "ACME_API_KEY",
                                      "instructions": "Get a key at https://acme.example/keys."})["id"]
    out = registry.auth_url(sid)
    assert "https://acme.example/keys" in out["instructions"] and "ACME_API_KEY" in out["instructions"]
    assert out["replit_secrets_url"] == "https://replit.com/@ann/tools#secrets"


@pytest.mark.anyio
async def test_execute_refuses_before_running_when_credentials_are_missing(db_path, tmp_path):
    marker = tmp_path / "ran"
    registry = skills.Registry(db_path, FakeEmbedder(), environ={"REPL_OWNER": "ann", "REPL_SLUG": "tools",
                                                                 "PATH": os.environ["PATH"]})
    sid = make(registry, body=f"open({str(marker)!r}, 'w').write('x')",
               auth_config={"type": "api_key", "env_var": "ACME_API_KEY"})["id"]
    with pytest.raises(skills.MissingCredentials) as info:
        await registry.execute(sid)
    payload = info.value.payload()
    assert payload["missing"] == ["ACME_API_KEY"]
    assert f"skill_auth_url(skill_id={sid})" in payload["hint"]
    assert "https://replit.com/@ann/tools#secrets" in payload["hint"]
    assert not marker.exists()


@pytest.mark.anyio
async def test_execute_passes_params_and_runs_the_python_blocks_of_a_skill_md(reg):
    body = ("---\nname: greet\ndescription: Greets.\ntags: [hello, greeting]\n---\n# Greet\n\n"
            "```python\nimport json, os\np = json.loads(os.environ['SELFMCP_PARAMS'])\n```\n\nThen:\n\n"
            "```python\nprint('hello', p['who'])\n```\n")
    sid = make(reg, name="greet", description="Greet someone by name.", body=body)["id"]
    out = await reg.execute(sid, {"who": "Ada"}, 10)
    assert out["stdout"] == "hello Ada\n" and out["exit_code"] == 0 and out["timed_out"] is False
    assert reg.search("greeting", "keyword", 3)["results"][0]["id"] == sid  # frontmatter tags are searchable


@pytest.mark.anyio
async def test_a_skill_md_without_python_is_not_executable(reg):
    sid = make(reg, name="howto", description="How to do it.", body="# How to\n\nJust read me.\n\n```bash\nls\n```\n")["id"]
    with pytest.raises(skills.NotExecutable):
        await reg.execute(sid)


def test_litellm_embeddings_against_a_local_fake_server(monkeypatch):
    calls: list[dict[str, Any]] = []

    class FakeOpenAI(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(body)
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [{"object": "embedding", "index": i, "embedding": [float(len(t)), 1.0, 0.0]}
                    for i, t in enumerate(inputs)]
            out = json.dumps({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-for-local-test")
        embedder = LiteLLMEmbedder("openai/text-embedding-3-small", api_base=f"http://127.0.0.1:{httpd.server_port}/v1")
        vectors = embedder.embed(["abc", "abcdef"])
    finally:
        httpd.shutdown()
    assert calls and calls[0]["input"] == ["abc", "abcdef"]
    assert vectors.shape == (2, 3)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert embedder.model_id == "litellm:openai/text-embedding-3-small"


def test_the_optional_sentence_transformers_model_is_chosen_by_name_and_loaded_lazily(monkeypatch):
    import types

    loaded: list[str] = []

    class FakeSentenceTransformer:
        def __init__(self, path, device):
            loaded.append(path)

        def encode(self, texts, **kwargs):
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=FakeSentenceTransformer))
    embedder = make_embedder("sentence-transformers:/models/my-minilm", use_remote=False)
    assert embedder.model_id == "sentence-transformers:my-minilm" and loaded == []
    vectors = embedder.embed(["ab", "abcd"])
    assert loaded == ["/models/my-minilm"] and vectors.shape == (2, 2)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_the_static_offline_embedder_is_the_shipped_static_model():
    embedder = make_embedder("static", use_remote=False)
    assert embedder.model_id.startswith("minilm-l6-static")
    near, far = embedder.embed(["send an email to a colleague", "get tomorrow's weather forecast"])
    query = embedder.embed(["compose and deliver electronic mail"])[0]
    assert float(query @ near) > float(query @ far)


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize(("env", "message"), [
    ({"SELFMCP_TRANSPORT": "carrier-pigeon"}, "SELFMCP_TRANSPORT"),
    ({"SELFMCP_PORT": "eighty"}, "SELFMCP_PORT"),
    ({"PORT": "70000"}, "PORT"),
])
def test_invalid_settings_are_refused_clearly(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_port_falls_back_to_port_then_8000():
    assert Settings.from_env({"PORT": "3000"}).port == 3000
    assert Settings.from_env({"SELFMCP_PORT": "9000", "PORT": "3000"}).port == 9000
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env({}).transport == "streamable-http" and Settings.from_env({}).host == "0.0.0.0"


def test_an_invalid_transport_exits_with_a_clear_message(tmp_path):
    proc = subprocess.run([sys.executable, "server.py"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SELFMCP_TRANSPORT": "tcp", "SELFMCP_DB_PATH": str(tmp_path / "x.db")})
    assert proc.returncode == 2
    assert "SELFMCP_TRANSPORT" in proc.stderr and "Traceback" not in proc.stderr


# -------------------------------------------------------------------------- end to end

async def walk_through(client: Client) -> None:
    """The specification's walk-through, step by step, through a real client."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert tool.description and tool.output_schema, tool.name
    assert tools["skill_search"].annotations.read_only_hint is True
    assert tools["skill_delete"].annotations.destructive_hint is True

    body = "import json, os\np = json.loads(os.environ['SELFMCP_PARAMS'])\nprint(p['a'] + p['b'])"
    created = payload(await client.call_tool("skill_create", {
        "name": "add_numbers", "description": "Add two numbers a and b and print the sum.", "body": body}))
    sid = created["id"]
    assert created["version"] == 1 and created["status"] == "created"
    found = payload(await client.call_tool("skill_search", {"query": "sum of two numbers"}))
    assert found["results"][0]["id"] == sid
    detail = payload(await client.call_tool("skill_get_detail", {"skill_id": sid}))
    assert detail["body"] == body
    run = payload(await client.call_tool("skill_execute", {"skill_id": sid, "params": {"a": 2, "b": 3}}))
    assert run["stdout"].strip() == "5" and run["exit_code"] == 0 and run["timed_out"] is False
    updated = payload(await client.call_tool("skill_update", {"skill_id": sid, "description": "Sum a and b."}))
    assert updated["version"] == 2
    assert payload(await client.call_tool("skill_delete", {"skill_id": sid}))["deleted"] is True
    assert_error(await client.call_tool("skill_get_detail", {"skill_id": sid}), "skill_not_found")
    again = payload(await client.call_tool("skill_create", {
        "name": "add_numbers", "description": "Add two numbers.", "body": body}))
    assert (again["id"], again["version"], again["status"]) == (sid, 3, "reactivated")
    assert payload(await client.call_tool("skill_get_detail", {"skill_id": sid}))["versions"] == [1, 2, 3]

    about = payload(await client.call_tool("skill_search", {"query": "selfmcp_about", "mode": "keyword"}))
    about_id = about["results"][0]["id"]
    assert_error(await client.call_tool("skill_delete", {"skill_id": about_id}), "cannot_delete_core_skill")
    assert_error(await client.call_tool("skill_update", {"skill_id": about_id, "name": "x"}),
                 "cannot_rename_core_skill")

    keyed = payload(await client.call_tool("skill_create", {
        "name": "acme_report", "description": "Fetch the ACME report.", "body": "print('never runs')",
        "auth_config": {"type": "api_key", "env_var": "ACME_TEST_API_KEY", "instructions": "Ask ACME."}}))
    missing = assert_error(await client.call_tool("skill_execute", {"skill_id": keyed["id"]}), "missing_credentials")
    assert missing["missing"] == ["ACME_TEST_API_KEY"] and "skill_auth_url" in missing["hint"]
    auth = payload(await client.call_tool("skill_auth_url", {"skill_id": keyed["id"]}))
    assert auth["type"] == "api_key" and "ACME_TEST_API_KEY" in auth["instructions"]


BAD_CALLS = [
    ("skill_create", {"name": "bad name", "description": "d", "body": "print(1)"}, "invalid_name"),
    ("skill_create", {"name": "ok", "description": "", "body": "print(1)"}, "invalid_description"),
    ("skill_create", {"name": "ok", "description": "d", "body": "def f(:"}, "invalid_code"),
    ("skill_create", {"name": "ok", "description": "d", "body": "x", "dependencies": "requests"}, "invalid_dependency"),
    ("skill_update", {"skill_id": 9999, "description": "d"}, "skill_not_found"),
    ("skill_update", {"skill_id": 1}, "nothing_to_update"),
    ("skill_delete", {"skill_id": 9999}, "skill_not_found"),
    ("skill_execute", {"skill_id": 1, "timeout": 0}, "invalid_timeout"),
    ("skill_execute", {"skill_id": 1, "params": [1]}, "invalid_params"),
    ("skill_search", {"query": "x", "mode": "fuzzy"}, "invalid_mode"),
    ("skill_search", {"query": "x", "top_k": 51}, "invalid_top_k"),
    ("skill_search", {"query": "x", "top_k": 0}, "invalid_top_k"),
    ("skill_list_summary", {"cursor": "nope"}, "invalid_cursor"),
    ("skill_get_detail", {"skill_id": "abc"}, "invalid_argument"),
    ("skill_auth_url", {"skill_id": 1}, "no_auth_config"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_walk_through_and_bad_inputs_over_stdio(tmp_path, mode):
    async with Client(stdio_params(tmp_path), mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        await walk_through(client)
        before = payload(await client.call_tool("skill_list_summary", {}))["total"]
        for tool, args, code in BAD_CALLS:
            assert_error(await client.call_tool(tool, args), code)
        assert payload(await client.call_tool("skill_list_summary", {}))["total"] == before


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_walk_through_over_streamable_http(tmp_path, mode):
    token = "walk-through-token-0123456789"
    with http_server(tmp_path, token=token) as base:
        with urllib.request.urlopen(base + "/health") as resp:
            health = json.loads(resp.read())
        assert health["status"] == "ok" and health["skills"] == 2
        async with http_client(base, token, mode=mode) as client:
            await walk_through(client)


@pytest.mark.anyio
async def test_the_legacy_sse_transport_serves_the_tools(tmp_path):
    from mcp.client.session import ClientSession
    from mcp.client.sse import sse_client

    with http_server(tmp_path, SELFMCP_TRANSPORT="sse") as base:
        async with sse_client(base + "/sse") as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert {t.name for t in (await session.list_tools()).tools} == TOOL_NAMES
            result = await session.call_tool("skill_list_summary", {})
            assert result.structured_content["total"] == 2


def test_stdio_mode_writes_nothing_but_protocol_to_stdout(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "server.py")], cwd=ROOT,
                            env=clean_env(SELFMCP_DB_PATH=str(tmp_path / "e2e.db"), SELFMCP_TRANSPORT="stdio", SELFMCP_LOG_LEVEL="DEBUG"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}}
    out, err = proc.communicate(json.dumps(init).encode() + b"\n", timeout=30)
    lines = [line for line in out.decode().splitlines() if line.strip()]
    assert lines, err.decode()
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0"
    assert b"selfMCP" in err  # the start-up log went to stderr


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["pipe", "file"])
async def test_the_stdio_streams_read_lines_and_write_on_pipes_and_on_plain_files(tmp_path, kind):
    from selfmcp.remote import stdio_transport

    if kind == "pipe":
        in_read, in_write = os.pipe()
        out_read, out_write = os.pipe()
        os.write(in_write, b'{"a": 1}\n{"b": "\xc3\xa9"}\n')
        os.close(in_write)
    else:
        (tmp_path / "in").write_bytes(b'{"a": 1}\n{"b": "\xc3\xa9"}\n')
        in_read = os.open(tmp_path / "in", os.O_RDONLY)
        out_write = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    stdin, stdout = await stdio_transport.open_streams(in_read, out_write)
    assert [line async for line in stdin] == ['{"a": 1}\n', '{"b": "é"}\n']
    await stdout.write('{"reply": "é"}\n')
    await stdout.flush()
    if kind == "pipe":
        assert os.read(out_read, 100) == '{"reply": "é"}\n'.encode()
    else:
        await stdout.aclose()
        assert (tmp_path / "out").read_text(encoding="utf-8") == '{"reply": "é"}\n'


@pytest.mark.anyio
async def test_bearer_token_is_required_on_http_when_configured(tmp_path):
    token = "test-token-0123456789"
    with http_server(tmp_path, SELFMCP_AUTH_TOKEN=token) as base:
        with urllib.request.urlopen(base + "/health") as resp:
            assert resp.status == 200
        request = urllib.request.Request(base + "/mcp", method="POST", data=b"{}",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer wrong-token"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request)
        assert info.value.code == 401
        assert token not in (tmp_path.glob("server-*.log").__next__()).read_text()
        import httpx

        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            from mcp.client.streamable_http import streamable_http_client

            async with Client(streamable_http_client(base + "/mcp", http_client=http), mode="legacy") as client:
                tools = (await client.list_tools()).tools
                assert {t.name for t in tools} == TOOL_NAMES


def pids_with_marker(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.anyio
async def test_timeout_kills_the_whole_process_tree_while_other_sessions_are_answered(tmp_path):
    marker = f"selfmcp-test-marker-{os.getpid()}-{time.time_ns()}"
    body = (
        "import subprocess, sys, time\n"
        f"code = 'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", \"import time; time.sleep(60)\", \"{marker}\"]); time.sleep(60)'\n"
        f"subprocess.Popen([sys.executable, '-c', code, '{marker}'])\n"
        "time.sleep(60)\n"
    )
    with http_server(tmp_path) as base:
        async with Client(base + "/mcp", mode="legacy") as runner, Client(base + "/mcp", mode="legacy") as other:
            sid = payload(await runner.call_tool("skill_create", {
                "name": "sleepy_tree", "description": "Starts a grandchild and sleeps.", "body": body}))["id"]
            outcome: dict[str, Any] = {}

            async def run() -> None:
                started = time.perf_counter()
                outcome["result"] = payload(await runner.call_tool("skill_execute", {"skill_id": sid, "timeout": 2}))
                outcome["seconds"] = time.perf_counter() - started

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                deadline = time.monotonic() + 5
                while len(pids_with_marker(marker)) < 2 and time.monotonic() < deadline:
                    await anyio.sleep(0.05)
                assert len(pids_with_marker(marker)) >= 2  # child and grandchild are running
                listing = payload(await other.call_tool("skill_list_summary", {}))
                assert "result" not in outcome and listing["total"] >= 3  # answered while the run goes on
            assert outcome["result"]["timed_out"] is True
            assert outcome["seconds"] < 30  # killed at its 2 s timeout, not after the 60 s it asked for
            await asyncio.sleep(0.2)
            assert pids_with_marker(marker) == []


# ------------------------------------------------------------------------------ docs

def test_every_tool_and_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in TOOL_NAMES:
        assert f"`{name}`" in readme, name
    source = (ROOT / "server.py").read_text()
    import re

    for var in sorted(set(re.findall(r"\b(SELFMCP_[A-Z_]+)\b", source))):
        assert f"`{var}`" in readme, var
