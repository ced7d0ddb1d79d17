"""Load, crash and hostile input (issue 10): one test per finding, through a real MCP client, and short
versions of the concurrency, crash and fuzz runs (the long ones are bench/concurrency.py, crash.py, soak.py).

Servers run as server.py subprocesses over streamable HTTP (both protocol eras) unless a test says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

import skills
from bench.workload import Ledger, ServerProcess, create_hot_skills, session, verify, write_until_killed
from conftest import ROOT, FakeEmbedder, assert_error, clean_env
from selfmcp import schemas, upkeep
from selfmcp.errors import storage_error
from server import Settings, create_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server.py over HTTP for the findings that do not need a fresh one."""
    tmp = tmp_path_factory.mktemp("reliability")
    with ServerProcess(tmp / "shared.db", tmp / "server.log") as running:
        yield running


@contextlib.contextmanager
def listener():
    """A loopback port that accepts connections into its backlog and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            conn, _ = sock.accept()
            conn.close()
            count += 1
    return count


async def create(client: Client, name: str, **extra: Any):
    return await client.call_tool("skill_create", {"name": name, "description": f"{name} does things",
                                                   "body": "print('ok')", **extra})


# ------------------------------------------------------------------ 1. remote $ref in params_schema

@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_remote_ref_in_params_schema_is_refused_at_create_and_nothing_is_fetched(server, mode):
    with listener() as peer:
        url = f"http://127.0.0.1:{peer.getsockname()[1]}/schema.json"
        async with Client(server.url, mode=mode) as client:
            with anyio.fail_after(60):  # the old server hung here (or on execute) waiting for the peer
                body = assert_error(await create(client, f"remote-ref-{mode}", params_schema={"$ref": url}),
                                    "invalid_params_schema")
                nested = {"type": "object", "properties": {"x": {"$ref": url + "#/defs/x"}}}
                assert_error(await create(client, f"remote-ref2-{mode}", params_schema=nested),
                             "invalid_params_schema")
        assert body["reason"] == "remote_ref" and body["path"] == "$.$ref"
        assert connections(peer) == 0
    assert server.health()[0] == 200


def test_validating_params_never_fetches_a_remote_ref_even_from_a_stored_schema():
    with listener() as peer:
        schema = {"$ref": f"http://127.0.0.1:{peer.getsockname()[1]}/s.json"}
        with pytest.raises(schemas.SchemaProblem):
            schemas.check_params(schema, {"a": 1})
        assert connections(peer) == 0


# --------------------------------------------------------------------- 2. backtracking patterns

async def test_a_backtracking_pattern_cannot_stall_the_server(server):
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
              "patternProperties": {"^(b+)+$": {"type": "integer"}}, "additionalProperties": False}
    async with Client(server.url) as client, Client(server.url, mode="legacy") as other:
        created = await create(client, "backtrack", params_schema=schema)
        assert not created.is_error, created
        skill_id = created.structured_content["id"]
        with anyio.fail_after(60):  # ^(a+)+$ on 40 a's and a b takes hours on a backtracking engine
            assert_error(await client.call_tool("skill_execute", {
                "skill_id": skill_id, "params": {"s": "a" * 40 + "b"}, "timeout": 5}), "invalid_params")
            assert_error(await client.call_tool("skill_execute", {
                "skill_id": skill_id, "params": {"s": "a", "b" * 40 + "c": "x"}, "timeout": 5}), "invalid_params")
            listed = await other.call_tool("skill_list_summary", {})
        assert not listed.is_error
    assert server.health()[0] == 200


@pytest.mark.parametrize("pattern", ["(?=a)b", r"(a)\1", "(?<!x)y"])
async def test_a_pattern_without_a_linear_time_engine_is_refused_at_create(server, pattern):
    async with Client(server.url) as client:
        body = assert_error(await create(client, "lookaround", params_schema={
            "type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}), "invalid_params_schema")
    assert body["path"] == "$.properties.s.pattern"


def test_schema_validation_stops_at_its_deadline():
    schema = {"anyOf": [{"type": "string"}, {"items": {"$ref": "#"}}, {"items": {"$ref": "#"}}]}
    deep: Any = 1
    for _ in range(18):
        deep = [deep, deep]
    with pytest.raises(schemas.ValidationTimedOut):
        schemas.check_params(schema, deep, deadline_s=0.2)


# ------------------------------------------------------- 3. the database file removed or replaced

@pytest.mark.parametrize("fault", ["removed", "replaced", "overwritten"])
async def test_writes_are_refused_once_the_database_file_is_removed_replaced_or_overwritten(tmp_path, fault):
    db_path = tmp_path / "fault.db"
    with ServerProcess(db_path, tmp_path / "server.log") as running:
        async with Client(running.url) as client:
            before = await create(client, "before-fault")
            assert not before.is_error
            if fault == "removed":
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            elif fault == "replaced":
                other = tmp_path / "other.db"
                with contextlib.closing(sqlite3.connect(other)) as conn:
                    conn.execute("create table t(x)")
                os.replace(other, db_path)
            else:
                with open(db_path, "r+b") as f:
                    f.write(os.urandom(4096))
            for name in ("after-fault-1", "after-fault-2"):
                assert_error(await create(client, name), "storage_unavailable")
            assert_error(await client.call_tool("skill_update", {"skill_id": before.structured_content["id"],
                                                                 "description": "changed"}), "storage_unavailable")
        status, body = running.health()
        assert status == 503 and body["error"] == "storage_unavailable"
    assert "Traceback" not in (tmp_path / "server.log").read_text()


# --------------------------------------------------- 4. concurrent text updates and the embedding

class SlowEmbedder(FakeEmbedder):
    """A model that takes a while to answer, as a remote one does: concurrent updates overlap."""

    def embed(self, texts):
        time.sleep(0.05)
        return super().embed(texts)


async def test_concurrent_text_updates_never_leave_a_skill_without_its_embedding(tmp_path):
    db_path, torn = tmp_path / "race.db", []
    server = create_server(Settings(db_path=db_path, transport="stdio", embedder=SlowEmbedder()))
    async with Client(server) as a, Client(server, mode="legacy") as b:
        skill_id = (await create(a, "race-target")).structured_content["id"]
        for round_ in range(20):
            async with anyio.create_task_group() as tg:  # a rename and a new description of one skill at once
                tg.start_soon(a.call_tool, "skill_update", {"skill_id": skill_id, "name": f"race-target-{round_}"})
                tg.start_soon(b.call_tool, "skill_update", {"skill_id": skill_id,
                                                            "description": f"racing description {round_}"})
            torn.extend(verify(db_path, Ledger())["torn_examples"])
        found = await a.call_tool("skill_search", {"query": "racing description 19", "mode": "vector", "top_k": 5})
    assert torn == []  # checked after every round: the old code dropped the vector in most of them
    assert skill_id in [r["id"] for r in found.structured_content["results"]]


async def test_the_upkeep_round_re_embeds_a_skill_whose_vector_went_missing(tmp_path):
    reg = skills.Registry(tmp_path / "u.db", FakeEmbedder())
    reg.seed_core_skills()
    async with Client(create_server(Settings(db_path=tmp_path / "u.db", transport="stdio"), reg)) as client:
        skill_id = (await create(client, "lost-vector", description="turns invoices into ledgers")).structured_content["id"]
        assert reg.search_index.wait_idle()
        with contextlib.closing(sqlite3.connect(tmp_path / "u.db")) as conn, conn:
            conn.execute("delete from skill_embeddings where skill_id = ?", (skill_id,))
        assert verify(tmp_path / "u.db", Ledger())["torn_skills"] == 1
        upkeep.upkeep_round(reg.store.db, reg.search_index).join()  # what the 30-second timer runs
        assert verify(tmp_path / "u.db", Ledger())["torn_skills"] == 0
        found = await client.call_tool("skill_search", {"query": "turns invoices into ledgers", "mode": "vector"})
        assert found.structured_content["results"][0]["id"] == skill_id


# ----------------------------------------------------------------- 5. every input gets the shape

BIG = 2**63
ID_TOOLS = [("skill_get_detail", {}), ("skill_update", {"description": "x"}), ("skill_delete", {}),
            ("skill_execute", {}), ("skill_auth_url", {})]


@pytest.mark.parametrize("tool,extra", ID_TOOLS)
@pytest.mark.parametrize("skill_id", [BIG, -BIG - 1, 10**30])
async def test_a_skill_id_outside_sqlite_range_gets_the_error_shape(server, tool, extra, skill_id):
    async with Client(server.url, mode="legacy") as client:
        assert_error(await client.call_tool(tool, {"skill_id": skill_id, **extra}), "invalid_argument")


@pytest.mark.parametrize("cursor", ["²", "①", "٣", "12345678901234567890", "-1", " 1", "1.0"])
async def test_a_cursor_that_is_not_plain_digits_in_range_is_invalid_cursor(server, cursor):
    async with Client(server.url) as client:
        assert_error(await client.call_tool("skill_list_summary", {"cursor": cursor}), "invalid_cursor")


@pytest.mark.parametrize("extra,code", [
    ({"auth_config": {"type": "oauth2", "auth_url": "http://[::1", "client_id_env": "X_ID"}}, "invalid_auth_config"),
    ({"auth_config": {"type": "oauth2", "auth_url": "https://x:99999/a", "client_id_env": "X_ID"}},
     "invalid_auth_config"),
    ({"body": "x = " + "1+" * 40000 + "1"}, "invalid_code"),
    ({"params_schema": {"$schema": {}}}, "invalid_params_schema"),
    ({"params_schema": {"$schema": "http://example.com/not-a-dialect"}}, "invalid_params_schema"),
    ({"params_schema": {"$ref": "#/$defs/missing"}}, "invalid_params_schema"),
    ({"params_schema": {"$ref": "#"}}, "invalid_params_schema"),
    ({"params_schema": {"$ref": "http://[::1"}}, "invalid_params_schema"),
])
async def test_hostile_create_arguments_get_their_code(server, extra, code):
    async with Client(server.url) as client:
        assert_error(await create(client, "hostile", **extra), code)
        assert_error(await client.call_tool("skill_get_detail", {"skill_id": 999_999}), "skill_not_found")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_an_unknown_tool_answers_in_the_error_shape(server, mode):
    async with Client(server.url, mode=mode) as client:
        assert_error(await client.call_tool("skill_frobnicate", {}), "unknown_tool")


def test_a_damaged_database_page_is_storage_unavailable(tmp_path):
    reg = skills.Registry(tmp_path / "d.db", FakeEmbedder())
    reg.seed_core_skills()
    assert reg.search_index.wait_idle()
    reg.store.db.close()
    data = bytearray((tmp_path / "d.db").read_bytes())
    data[4096:len(data)] = os.urandom(len(data) - 4096)  # every page but the header page
    (tmp_path / "d.db").write_bytes(bytes(data))
    conn = sqlite3.connect(tmp_path / "d.db")
    with pytest.raises(sqlite3.DatabaseError) as caught:
        conn.execute("select * from skills").fetchall()
    assert storage_error(caught.value).code == "storage_unavailable"


async def test_an_unexpected_exception_is_internal_error_with_no_detail(tmp_path, caplog):
    reg = skills.Registry(tmp_path / "i.db", FakeEmbedder())
    reg.seed_core_skills()

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    reg.list_summary = broken
    async with Client(create_server(Settings(db_path=tmp_path / "i.db", transport="stdio"), reg)) as client:
        body = assert_error(await client.call_tool("skill_list_summary", {}), "internal_error")
    assert "secret internals" not in json.dumps(body)
    assert "secret internals" in caplog.text and "Traceback" in caplog.text


# ------------------------------------------------------------------------------- 6. a small disk

@pytest.fixture
def small_volume(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_gives_storage_full_and_writes_recover_when_space_is_back(tmp_path, small_volume):
    ballast = small_volume / "ballast"
    with ServerProcess(small_volume / "small.db", tmp_path / "server.log") as running:
        free = shutil.disk_usage(small_volume).free
        ballast.write_bytes(b"\0" * max(0, free - 600_000))
        codes = []
        async with Client(running.url) as client:
            for i in range(40):
                result = await create(client, f"big-{i}", description="x" * 4000,
                                      body="# " + "y" * 200_000 + "\nprint(1)")
                codes.append(result.structured_content.get("error") if result.is_error else "ok")
                if codes[-1] == "storage_full":
                    break
            assert codes[-1] == "storage_full", codes
            assert_error(result, "storage_full")
            ballast.unlink()
            again = await create(client, "after-space-is-back")
            assert not again.is_error, again
        running.stop()
        running.start()
        async with Client(running.url) as client:
            names = {s["name"] for s in (await client.call_tool("skill_list_summary", {})).structured_content["skills"]}
            assert "after-space-is-back" in names
            assert not (await create(client, "after-restart")).is_error


# ------------------------------------------------------------------------ 7. strict integer ids

@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("skill_id", [True, "1", 1.0, "١"])
async def test_a_skill_id_that_is_not_a_json_integer_is_refused_not_coerced(server, mode, skill_id):
    async with Client(server.url, mode=mode) as client:
        before = (await client.call_tool("skill_get_detail", {"skill_id": 1})).structured_content
        assert_error(await client.call_tool("skill_update", {"skill_id": skill_id, "description": "hijacked"}),
                     "invalid_argument")
        after = (await client.call_tool("skill_get_detail", {"skill_id": 1})).structured_content
    assert after["version"] == before["version"] and after["description"] == before["description"]


# ------------------------------------------------------------------------------ 8. start-up faults

def _start_fails(db_path: Path) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "server.py")], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL,
                            env=clean_env(SELFMCP_DB_PATH=str(db_path), SELFMCP_TRANSPORT="stdio"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfmcp: cannot use the database"), result.stderr
    return lines[0]


def _good_database(path: Path) -> bytes:
    reg = skills.Registry(path, FakeEmbedder())
    reg.seed_core_skills()
    assert reg.search_index.wait_idle()  # no background thread may use a connection that close() closes
    reg.store.db.checkpoint()
    reg.store.db.close()
    return path.read_bytes()


@pytest.mark.parametrize("fault", ["garbage", "truncated", "corrupt page", "header only"])
def test_start_up_with_a_bad_database_says_what_to_do_in_one_line_and_leaves_the_file(tmp_path, fault):
    path = tmp_path / "bad.db"
    good = _good_database(tmp_path / "good.db")
    data = {"garbage": os.urandom(len(good)), "truncated": good[: len(good) // 2],
            "corrupt page": good[:8192] + os.urandom(4096) + good[12288:], "header only": good[:100]}[fault]
    path.write_bytes(data)
    line = _start_fails(path)
    assert "backup" in line
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_start_up_with_a_directory_as_the_database_says_so(tmp_path):
    assert "directory" in _start_fails(tmp_path)


def test_start_up_in_a_read_only_directory_says_so(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m,mode=755", "tmpfs", str(ro)]).returncode != 0:
            pytest.skip("root ignores directory permissions and cannot mount here")
    else:
        ro.chmod(0o555)
    try:
        assert "cannot be opened for writing" in _start_fails(ro / "selfmcp.db")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)


# ------------------------------------------------------------- short concurrency and crash runs

async def test_sixteen_sessions_of_mixed_writes_leave_a_consistent_database(tmp_path):
    ledger = Ledger()
    with ServerProcess(tmp_path / "load.db", tmp_path / "server.log") as running:
        hot = await create_hot_skills(running.url, ledger)
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(lambda i=i: session(running.url, ledger, seed=i, ops=25, hot_ids=hot,
                                                  mode="legacy" if i % 2 else "auto"))
        state = verify(running.db_path, ledger)
        for _ in range(100):  # the last creates' vectors are made in the background (as bench/concurrency.py waits)
            if state["torn_skills"] == 0:
                break
            await anyio.sleep(0.1)
            state = verify(running.db_path, ledger)
    assert ledger.generic == 0 and set(ledger.errors) <= {"skill_not_found"}, ledger.errors
    assert ledger.acknowledged > 100
    assert state["integrity"] == "ok"
    assert state["lost_writes"] == 0, state["lost_examples"]
    assert state["torn_skills"] == 0, state["torn_examples"]


async def test_kill_9_during_writes_loses_no_acknowledged_write(tmp_path):
    ledger = Ledger()
    running = ServerProcess(tmp_path / "crash.db", tmp_path / "server.log")
    try:
        for round_ in range(10):
            running.start()
            await write_until_killed(running, ledger, 15, seed=round_ * 100, timeout_s=60)
            state = verify(running.db_path, ledger)
            assert state["integrity"] == "ok", (round_, state)
            assert state["lost_writes"] == 0, (round_, state["lost_examples"])
        running.start()  # restart re-embeds whatever a kill left without a vector
        state = verify(running.db_path, ledger)
        for _ in range(100):
            if state["torn_skills"] == 0:
                break
            await anyio.sleep(0.1)
            state = verify(running.db_path, ledger)
        assert state["torn_skills"] == 0, state["torn_examples"]
    finally:
        running.stop()


# ------------------------------------------------- every other place client input meets a regex

async def test_a_body_of_unclosed_python_fences_does_not_stall_the_server(server):
    async with Client(server.url) as client:
        with anyio.fail_after(60):  # the old single-regex scan took minutes on this body
            result = await create(client, "many-fences", body="```python\n" * 25000)
        # CommonMark reads one fence running to the end, whose lines are not Python.
        assert_error(result, "invalid_code")


def _alias_bomb() -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines)


@pytest.mark.parametrize("frontmatter", [_alias_bomb(), "tags: " + "[" * 60000, "tags: " + "{a: " * 20000])
async def test_hostile_skill_md_frontmatter_is_refused_without_stalling(server, frontmatter):
    async with Client(server.url, mode="legacy") as client:
        with anyio.fail_after(60):  # aliases expand 9^9 times; PyYAML scans deep [ and { in quadratic time
            assert_error(await create(client, "yaml-bomb", body=f"---\nname: yaml-bomb\ndescription: d\n"
                                                                f"{frontmatter}\n---\n# A document"),
                         "invalid_frontmatter")
