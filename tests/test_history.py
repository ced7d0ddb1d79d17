"""Version history through the eight tools: reading old versions, diffs, restores, and optimistic concurrency.

End-to-end tests drive server.py through the SDK's client (stdio and streamable HTTP, both protocol
eras); the race test runs two server processes on one database file, so two real writers compete.
"""

from __future__ import annotations

import contextlib
import threading

import anyio
import pytest
from mcp import Client

import db
import skills
from conftest import FakeEmbedder, assert_error, connected_client, payload, stdio_params

pytestmark = pytest.mark.anyio


def make(reg, name="greeter", body="print('hello')\n", **kw):
    return reg.create(name, "Greet someone by name.", body, **kw)


def version_rows(db_path, skill_id):
    with contextlib.closing(db.connect(db_path)) as conn:
        return [tuple(r) for r in conn.execute(
            "select version, body, change, restored_from from skill_versions where skill_id = ? order by id",
            (skill_id,))]


# ------------------------------------------------------------------------------ registry

def test_update_says_previous_and_new_version_and_history_lists_each_version_once(reg, db_path):
    sid = make(reg)["id"]
    first = reg.update(sid, body="print('hi')\n")
    second = reg.update(sid, description="Greet a person.")
    assert (first["previous_version"], first["version"]) == (1, 2)
    assert (second["previous_version"], second["version"]) == (2, 3)
    history = reg.get_detail(sid, include_history=True)["history"]
    assert [(h["version"], h["change"], h["changed_fields"]) for h in history] == [
        (1, "created", []), (2, "updated", ["body"]), (3, "updated", ["description"])]
    assert history[1]["size"] == len("print('hi')\n")
    assert [r[0] for r in version_rows(db_path, sid)] == [1, 2, 3]


def test_an_old_version_is_returned_whole_and_marked_historical(reg):
    sid = make(reg, dependencies=["requests"])["id"]
    reg.update(sid, body="print('v2')\n", dependencies=[])
    old = reg.get_detail(sid, version=1)
    assert old["historical"] is True and old["version"] == 1 and old["current_version"] == 2
    assert old["body"] == "print('hello')\n" and old["dependencies"] == ["requests"]
    current = reg.get_detail(sid, version=2)
    assert current["historical"] is False


def test_diff_has_a_unified_diff_of_the_body_and_of_each_changed_field(reg):
    sid = make(reg)["id"]
    reg.update(sid, body="print('hello, world')\n")
    reg.update(sid, params_schema={"type": "object"})
    diff = reg.get_detail(sid, diff_from=1)["diff"]
    assert (diff["from_version"], diff["to_version"]) == (1, 3)
    assert diff["changed_fields"] == ["body", "params_schema"]
    assert diff["diffs"]["body"].startswith("--- v1/body\n+++ v3/body\n")
    assert "-print('hello')\n+print('hello, world')\n" in diff["diffs"]["body"]
    assert '+  "type": "object"' in diff["diffs"]["params_schema"]
    back = reg.get_detail(sid, version=1, diff_from=3)["diff"]
    assert (back["from_version"], back["to_version"]) == (3, 1)


def test_restore_makes_an_old_version_current_as_a_new_version(reg, db_path):
    sid = make(reg)["id"]
    reg.update(sid, body="print('v2')\n", name="greeter2")
    reg.update(sid, body="print('v3')\n")
    result = reg.update(sid, restore_version=1)
    assert result == {"id": sid, "name": "greeter", "version": 4, "previous_version": 3,
                      "updated_fields": ["body", "name"], "restored_from": 1}
    detail = reg.get_detail(sid)
    assert (detail["name"], detail["body"], detail["version"]) == ("greeter", "print('hello')\n", 4)
    assert version_rows(db_path, sid) == [(1, "print('hello')\n", "created", None), (2, "print('v2')\n", "updated", None),
                                          (3, "print('v3')\n", "updated", None),
                                          (4, "print('hello')\n", "restored", 1)]
    assert reg.search("greeter", mode="keyword")["results"][0]["id"] == sid  # the index follows the restore


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"restore_version": 9}, "version_not_found"),
    ({"restore_version": 1, "body": "print(1)"}, "invalid_argument"),
    ({"expected_version": 0, "body": "print(1)"}, "invalid_argument"),
    ({"expected_version": 5, "body": "print(1)"}, "version_conflict"),
    ({"expected_version": 1, "restore_version": 1}, "version_conflict"),
])
def test_a_refused_update_changes_nothing(reg, db_path, kwargs, code):
    sid = make(reg)["id"]
    reg.update(sid, body="print('v2')\n")
    before = (reg.get_detail(sid), version_rows(db_path, sid))
    with pytest.raises(skills.SkillError) as caught:
        reg.update(sid, **kwargs)
    assert caught.value.code == code
    assert (reg.get_detail(sid), version_rows(db_path, sid)) == before
    if code == "version_conflict":
        assert caught.value.details["current_version"] == 2


@pytest.mark.parametrize(("kwargs", "code"), [({"version": 7}, "version_not_found"),
                                              ({"diff_from": 7}, "version_not_found"),
                                              ({"version": "1"}, "invalid_argument")])
def test_reading_a_missing_version_names_the_versions_that_exist(reg, kwargs, code):
    sid = make(reg)["id"]
    with pytest.raises(skills.SkillError) as caught:
        reg.get_detail(sid, **kwargs)
    assert caught.value.code == code
    if code == "version_not_found":
        assert caught.value.details["versions"] == [1]


def test_reactivation_and_restore_keep_every_version_row(reg, db_path):
    sid = make(reg)["id"]
    reg.update(sid, body="print('v2')\n")
    reg.delete(sid)
    assert make(reg, body="print('v3')\n")["version"] == 3
    reg.update(sid, restore_version=2)
    assert version_rows(db_path, sid) == [(1, "print('hello')\n", "created", None),
                                          (2, "print('v2')\n", "updated", None),
                                          (3, "print('v3')\n", "reactivated", None),
                                          (4, "print('v2')\n", "restored", 2)]


def test_concurrent_writers_get_consecutive_versions_and_stale_expectations_lose(db_path):
    """Threads, each with its own Registry and connection, all update one skill at once."""
    setup = skills.Registry(db_path, FakeEmbedder())
    sid = make(setup)["id"]
    registries = [skills.Registry(db_path, FakeEmbedder()) for _ in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(registries))

    def writer(i: int, reg: skills.Registry) -> None:
        start.wait()
        for n in range(10):
            reg.update(sid, body=f"print({i}, {n})\n")
        try:
            reg.update(sid, body="print('stale')\n", expected_version=1)
            outcomes.append("ok")
        except skills.VersionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i, r)) for i, r in enumerate(registries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == ["conflict"] * 8
    assert [r[0] for r in version_rows(db_path, sid)] == list(range(1, 82))


def test_the_version_migration_keeps_older_history_readable(tmp_path):
    path = tmp_path / "old.db"
    with contextlib.closing(db.connect(path, migrate_schema=False)) as conn:
        while db.schema_version(conn) < len(db.MIGRATIONS) - 1:  # every step before this one
            with db.transaction(conn):
                version = db.schema_version(conn)
                for statement in db.MIGRATIONS[version].statements:
                    conn.execute(statement)
                conn.execute(f"pragma user_version = {version + 1}")
        with db.transaction(conn):
            conn.execute("insert into skills(name, description, body, created_at, updated_at) "
                         "values ('old', 'An old skill.', 'print(1)', 'then', 'then')")
            conn.execute("insert into skill_versions(skill_id, version, name, description, body, changed_at) "
                         "select id, version, name, description, body, created_at from skills")
    reg = skills.Registry(path, FakeEmbedder())
    assert reg.update(1, body="print(2)")["version"] == 2
    assert [(h["version"], h["change"]) for h in reg.get_detail(1, include_history=True)["history"]] == [
        (1, "created"), (2, "updated")]


# ------------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_history_walk_through_a_real_client(tmp_path, transport, mode):
    async with connected_client(tmp_path, transport, mode) as client:
        async def call(tool, **args):
            result = await client.call_tool(tool, args)
            assert not result.is_error, result
            return payload(result)

        sid = (await call("skill_create", name="shout", description="Shout a word.", body="print('a')\n"))["id"]
        assert (await call("skill_update", skill_id=sid, body="print('b')\n"))["previous_version"] == 1
        third = await call("skill_update", skill_id=sid, body="print('c')\n", expected_version=2)
        assert (third["previous_version"], third["version"]) == (2, 3)

        old = await call("skill_get_detail", skill_id=sid, version=1)
        assert (old["body"], old["historical"], old["current_version"]) == ("print('a')\n", True, 3)
        diff = (await call("skill_get_detail", skill_id=sid, diff_from=1))["diff"]
        assert (diff["from_version"], diff["to_version"], diff["changed_fields"]) == (1, 3, ["body"])
        assert "-print('a')\n+print('c')\n" in diff["diffs"]["body"]

        restored = await call("skill_update", skill_id=sid, restore_version=1)
        assert (restored["version"], restored["previous_version"], restored["restored_from"]) == (4, 3, 1)
        detail = await call("skill_get_detail", skill_id=sid, include_history=True)
        assert detail["body"] == "print('a')\n"
        assert [h["version"] for h in detail["history"]] == [1, 2, 3, 4]
        assert detail["history"][3]["restored_from"] == 1

        stale = await client.call_tool("skill_update", {"skill_id": sid, "body": "print('x')", "expected_version": 3})
        body = assert_error(stale, "version_conflict")
        assert body["current_version"] == 4
        missing = await client.call_tool("skill_get_detail", {"skill_id": sid, "version": 99})
        assert_error(missing, "version_not_found")
        assert_error(await client.call_tool("skill_update", {"skill_id": sid, "restore_version": 0}), "invalid_argument")
        after = await call("skill_get_detail", skill_id=sid, include_history=True)
        assert (after["body"], after["version"], len(after["history"])) == ("print('a')\n", 4, 4)


async def test_two_clients_editing_the_same_version_at_once_one_wins_each_time(tmp_path):
    """Two server processes on one database file; each round both read version N, then both write."""
    rounds = 50
    async with Client(stdio_params(tmp_path), mode="legacy") as a, Client(stdio_params(tmp_path)) as b:
        created = payload(await a.call_tool("skill_create", {"name": "race", "description": "A contested skill.",
                                                            "body": "print(0)\n"}))
        sid = created["id"]
        for n in range(rounds):
            seen = [payload(await c.call_tool("skill_get_detail", {"skill_id": sid}))["version"] for c in (a, b)]
            assert seen == [n + 1, n + 1]
            results: dict[str, object] = {}

            async def write(label: str, client: Client, version: int) -> None:
                results[label] = await client.call_tool("skill_update", {
                    "skill_id": sid, "body": f"print({label!r}, {n})\n", "expected_version": version})

            async with anyio.create_task_group() as tg:
                tg.start_soon(write, "a", a, seen[0])
                tg.start_soon(write, "b", b, seen[1])
            winners = [label for label, r in results.items() if not r.is_error]
            assert len(winners) == 1, results
            loser = results["b" if winners == ["a"] else "a"]
            assert assert_error(loser, "version_conflict")["current_version"] == n + 2
        history = payload(await b.call_tool("skill_get_detail", {"skill_id": sid, "include_history": True}))
    assert [h["version"] for h in history["history"]] == list(range(1, rounds + 2))
    assert history["version"] == rounds + 1


def test_a_restore_brings_back_the_versions_files(reg):
    sid = reg.create("with_files", "A skill with a data file.", "print(open('data.csv').read())",
                     files={"data.csv": "a,b\n1,2\n"})["id"]
    reg.update(sid, files={"data.csv": "a,b\n3,4\n", "notes.md": "new"})
    history = reg.get_detail(sid, include_history=True)["history"]
    assert history[1]["changed_fields"] == ["files"]
    diff = reg.get_detail(sid, diff_from=1)["diff"]
    assert diff["changed_fields"] == ["files"] and "notes.md" in diff["diffs"]["files"]
    assert reg.update(sid, restore_version=1)["updated_fields"] == ["files"]
    detail = reg.get_detail(sid)
    assert [f["path"] for f in detail["files"]] == ["data.csv"]
    assert detail["files"] == reg.get_detail(sid, version=1)["files"]
