"""Agent Skills documents and files, what runs, and import/export (selfmcp/documents.py, transfer.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from mcp import Client

import db
import skills
from conftest import FakeEmbedder, assert_error
from selfmcp import documents, errors, transfer
from selfmcp.folders import SkillFolders
from server import Settings, create_server

pytestmark = pytest.mark.anyio
DATA = Path(__file__).parent / "data" / "agent-skills"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "agent-skills" / "anthropics-skills"
HELPER = "def shout(text):\n    return text.upper() + '!'\n"
MAIN = ("import json, os\nfrom helper import shout\n"
        "print(shout(open('assets/greeting.txt').read().strip()), json.loads(os.environ['SELFMCP_PARAMS']))\n")
DOC = "---\nname: {name}\ndescription: {desc}\n---\n# {name}\n\nSome instructions.\n"


def folders_of(reg: skills.Registry):
    return SkillFolders(reg.store).list()


def files_of(reg: skills.Registry, skill_id: int) -> dict[str, bytes]:
    return SkillFolders(reg.store).files(skill_id)


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), following nothing."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def state(reg: skills.Registry) -> tuple:
    """Everything a write could change: skill rows, version rows, stored blobs."""
    conn = sqlite3.connect(reg.db_path)
    try:
        return tuple(conn.execute(f"select * from {t} order by 1").fetchall()
                     for t in ("skills", "skill_versions", "skill_blobs"))
    finally:
        conn.close()


# --------------------------------------------------------------------- documents and files

@pytest.mark.parametrize("line", ["flag: yes", "flag: on", "n: 017", "n: 1_000", "when: 2024-01-01", "n: 0o17",
                                  "n: 1e3", "a: 1\na: 2", "<<: {a: 1}", "d: use when: x"])
def test_frontmatter_that_yaml_readers_see_differently_is_refused(reg, line):
    body = f"---\nname: x\ndescription: d\n{line}\n---\n# x\n"
    before = state(reg)
    with pytest.raises(errors.InvalidFrontmatter):
        reg.create("x", "d", body)
    assert state(reg) == before


def test_quoted_frontmatter_is_kept_verbatim_and_served_byte_for_byte(reg):
    body = "---\nname: x\ndescription: d\nflag: 'yes'\nwhen: \"2024-01-01\"\nmetadata:\n  n: '017'\n---\r\n# x\r\n"
    sid = reg.create("x", "d", body)["id"]
    folder = next(f for f in folders_of(reg) if f.skill_id == sid)
    assert folder.frontmatter == {"name": "x", "description": "d", "flag": "yes", "when": "2024-01-01",
                                  "metadata": {"n": "017"}}
    assert files_of(reg, sid)["SKILL.md"] == body.encode()


@pytest.mark.parametrize("path", ["../x.py", "a/../../x", "/etc/passwd", "a\\b.py", "a//b", "./a", "a/", "",
                                  "bad\x00name", "tab\tname", "C:/x"])
def test_unsafe_file_paths_are_refused_and_nothing_is_written(reg, path):
    before = state(reg)
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={path: "x"})
    assert state(reg) == before


def test_file_limits_and_clashes_are_refused(reg):
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={f"f{i}.txt": "x" for i in range(600)})
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={"big.bin": {"base64": base64.b64encode(b"\0" * (17 << 20)).decode()}})
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={"scripts/main.py": "print(2)"})  # where the body is shown
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={"a": "1", "a/b": "2"})
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={"e\u0301.txt": "1", "\u00e9.txt": "2"})  # the same after NFC
    with pytest.raises(errors.InvalidFiles):
        reg.create("x", "d", "print(1)", files={"a.bin": {"base64": "not base64!"}})


def test_files_are_stored_byte_exact_and_versioned_with_the_skill(reg):
    raw = b"\xef\xbb\xbfline\r\nnext\n"
    sid = reg.create("x", "d", DOC.format(name="x", desc="d"),
                     files={"references/a.md": {"base64": base64.b64encode(raw).decode()}, "b.txt": "b\r\n"})["id"]
    detail = reg.get_detail(sid)
    assert detail["agent_name"] == "x"
    assert [(f["path"], f["size"]) for f in detail["files"]] == [("b.txt", 3), ("references/a.md", len(raw))]
    assert detail["files"][1]["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert files_of(reg, sid)["references/a.md"] == raw
    out = reg.update(sid, files={"b.txt": None, "c.txt": "c"})
    assert out["updated_fields"] == ["files"]
    assert [f["path"] for f in reg.get_detail(sid)["files"]] == ["c.txt", "references/a.md"]
    conn = sqlite3.connect(reg.db_path)
    versions = dict(conn.execute("select version, files_json from skill_versions where skill_id = ?", (sid,)))
    conn.close()
    assert [f["path"] for f in json.loads(versions[1])] == ["b.txt", "references/a.md"]
    assert [f["path"] for f in json.loads(versions[2])] == ["c.txt", "references/a.md"]


def test_two_skills_may_not_share_an_agent_skills_name(reg):
    reg.create("my_skill", "d", "print(1)")
    with pytest.raises(skills.SkillExists):
        reg.create("My.Skill", "d", "print(1)")
    other = reg.create("other", "d", "print(1)")["id"]
    with pytest.raises(skills.SkillExists):
        reg.update(other, name="my-skill")
    assert documents.agent_name("My__Skill..v2") == "my-skill-v2"


@settings(max_examples=500, deadline=None, database=None, derandomize=True)
@given(name=st.from_regex(skills.NAME_RE, fullmatch=True) | st.text("_.-aZ9", min_size=1, max_size=64))
def test_the_indexed_agent_name_in_sql_is_the_agent_name(name):
    with sqlite3.connect(":memory:") as conn:  # the clash check looks names up by db.AGENT_NAME_SQL
        assert conn.execute(f"select {db.AGENT_NAME_SQL} from (select ? as name)", (name,)).fetchone()[0] == \
            documents.agent_name(name)


# ------------------------------------------------------------------------------ what runs

@pytest.mark.anyio
async def test_a_knowledge_skill_is_not_executable_and_says_to_read_it(reg):
    sid = reg.create("guide", "How to write.", DOC.format(name="guide", desc="How to write."))["id"]
    with pytest.raises(skills.NotExecutable) as err:
        await reg.execute(sid, {}, 10)
    assert "skill_get_detail" in err.value.hint


@pytest.mark.anyio
async def test_a_skill_md_runs_the_script_its_frontmatter_names_from_the_skill_folder(reg):
    body = "---\nname: tool\ndescription: d\nmetadata:\n  entrypoint: bin/run.py\n---\n# tool\n"
    sid = reg.create("tool", "d", body, files={"bin/run.py": "import os\nprint(sorted(os.listdir('.')))\n",
                                                "scripts/main.py": "print('not me')\n"})["id"]
    out = await reg.execute(sid, {}, 10)
    assert out["stdout"] == "['SKILL.md', 'bin', 'scripts']\n" or "bin" in out["stdout"], out
    assert "not me" not in out["stdout"]


@pytest.mark.anyio
async def test_a_python_skill_with_a_helper_module_and_a_data_file_runs_inside_the_sandbox(db_path):
    probe = skills.Registry(db_path, FakeEmbedder(), execution=skills.ExecutionConfig(sandbox="auto"))
    if probe.runtime().sandbox.mode != "bwrap":
        pytest.skip(f"bubblewrap cannot run here: {probe.runtime().sandbox.note}")
    reg = skills.Registry(db_path, FakeEmbedder(), environ={"PATH": os.environ["PATH"]},
                          execution=skills.ExecutionConfig(sandbox="bwrap"))
    server = create_server(Settings(db_path=db_path, embedder=FakeEmbedder()), reg)
    async with Client(server) as client:
        for body in (MAIN, "---\nname: shout-md\ndescription: d\n---\n# Shout\n"):
            name = "shout-py" if body == MAIN else "shout-md"
            files = {"scripts/helper.py": HELPER, "assets/greeting.txt": "hello\n"}
            if body != MAIN:
                files["scripts/main.py"] = MAIN
            created = (await client.call_tool("skill_create", {"name": name, "description": "Shout.", "body": body,
                                                               "files": files})).structured_content
            run = (await client.call_tool("skill_execute", {"skill_id": created["id"], "params": {"k": 2}})
                   ).structured_content
            assert run["stdout"] == "HELLO! {'k': 2}\n", run
            assert run["sandbox"] == "bwrap" and run["exit_code"] == 0


async def test_bad_files_reach_a_client_as_invalid_files(tmp_path):
    server = create_server(Settings(db_path=tmp_path / "s.db", embedder=FakeEmbedder()))
    async with Client(server) as client:
        result = await client.call_tool("skill_create", {"name": "x", "description": "d", "body": "print(1)",
                                                         "files": {"../evil.py": "x"}})
        assert_error(result, "invalid_files")
        result = await client.call_tool("skill_create", {"name": "x", "description": "d",
                                                         "body": "---\nname: x\ndescription: d\nok: yes\n---\n"})
        assert_error(result, "invalid_frontmatter")


# -------------------------------------------------------------------------- import, export

def _import_and_export(reg, source: Path, tmp_path: Path) -> None:
    report = transfer.import_source(reg, source)
    names = sorted(p.name for p in (source / "skills").iterdir())
    assert sorted(report["added"] + [r["skill"].rsplit("/", 1)[-1] for r in report["refused"]]) == names
    refused = {r["skill"]: r for r in report["refused"]}
    assert set(refused) == {"skills/claude-api"}
    assert refused["skills/claude-api"]["error"] == "invalid_frontmatter"
    assert "1024" in refused["skills/claude-api"]["reason"]

    out = tmp_path / "export"
    exported = transfer.export_all(reg, out)
    assert set(report["added"]) <= set(exported["exported"])
    for name in report["added"]:  # byte for byte the files that were imported
        assert tree(out / name) == tree(source / "skills" / name), name
    before = state(reg)
    again = transfer.import_source(reg, out)
    assert again["added"] == again["updated"] == again["refused"] == []
    assert state(reg)[:2] == before[:2]
    first = tree(out)
    transfer.export_all(reg, out)
    assert tree(out) == first


def test_the_agent_skills_examples_import_and_export_byte_for_byte(reg, tmp_path):
    _import_and_export(reg, DATA, tmp_path)


def test_the_full_shared_copy_of_anthropics_skills_imports_and_exports(reg, tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"the shared copy of anthropics/skills is not at {SHARED}")
    _import_and_export(reg, SHARED, tmp_path)


def test_an_export_of_plain_python_skills_imports_as_the_same_skills(reg, tmp_path):
    reg.create("add_two", "Add two numbers.", "print(1 + 1)\n", ["requests>=2"], None,
               {"type": "object", "properties": {"a": {"type": "number"}}},
               files={"scripts/helper.py": HELPER})
    transfer.export_all(reg, tmp_path / "a")
    assert (tmp_path / "a" / "add-two" / "scripts" / "main.py").read_text() == "print(1 + 1)\n"
    other = skills.Registry(tmp_path / "other.db", FakeEmbedder())
    report = transfer.import_source(other, tmp_path / "a")
    assert "add-two" in report["added"] and report["refused"] == []
    detail = other.get_detail(next(f.skill_id for f in folders_of(other) if f.agent_name == "add-two"))
    assert detail["body"] == "print(1 + 1)\n" and detail["dependencies"] == ["requests>=2"]
    assert [f["path"] for f in detail["files"]] == ["scripts/helper.py"]
    transfer.export_all(other, tmp_path / "b")
    assert tree(tmp_path / "b" / "add-two") == tree(tmp_path / "a" / "add-two")


def _crafted_skills(root: Path) -> None:
    def skill(name: str, files: dict[str, bytes] | None = None) -> Path:
        folder = root / "skills" / name
        folder.mkdir(parents=True)
        (folder / "SKILL.md").write_text(DOC.format(name=name, desc="Crafted."))
        for rel, data in (files or {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        return folder

    skill("good-skill", {"scripts/run.py": b"print(1)\n"})
    skill("too-big", {"blob.bin": os.urandom(17 << 20)})
    skill("too-many", {f"f/{i}.txt": b"x" for i in range(600)})
    linked = skill("symlink-out")
    (linked / "passwd").symlink_to("/etc/passwd")
    (linked / "up").symlink_to("../good-skill/SKILL.md")
    skill("bad-name", {}).joinpath("SKILL.md").write_text(DOC.format(name="Bad_Name", desc="x"))


def test_a_crafted_folder_is_refused_skill_by_skill_with_nothing_written(reg, tmp_path):
    _crafted_skills(tmp_path / "src")
    before = state(reg)
    report = transfer.import_source(reg, tmp_path / "src")
    refused = {r["skill"].rsplit("/", 1)[-1]: r for r in report["refused"]}
    assert report["added"] == ["good-skill"]
    assert set(refused) == {"too-big", "too-many", "symlink-out", "bad-name"}
    assert "16 MiB" in refused["too-big"]["reason"] and "601 files" in refused["too-many"]["reason"]
    assert "symlink" in refused["symlink-out"]["reason"]
    assert all(r["error"] and r["reason"] for r in refused.values())
    after = state(reg)
    assert len(after[0]) == len(before[0]) + 1  # only good-skill's row
    assert sum(len(row[2]) for row in after[2]) < 1 << 20  # no refused file's bytes were stored


def test_a_crafted_archive_is_refused_skill_by_skill_with_nothing_written(reg, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ("good-skill", "dot-dot", "absolute", "too-big", "too-many", "linked"):
            archive.writestr(f"{name}/SKILL.md", DOC.format(name=name, desc="Crafted."))
        archive.writestr("good-skill/scripts/run.py", "print(1)\n")
        archive.writestr("dot-dot/../../escape.txt", "x")
        archive.writestr("/absolute/etc.txt", "x")
        archive.writestr("too-big/blob.bin", b"\0" * (17 << 20))
        for i in range(600):
            archive.writestr(f"too-many/f{i}.txt", "x")
        link = zipfile.ZipInfo("linked/passwd")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    path = tmp_path / "crafted.skill"
    path.write_bytes(buffer.getvalue())
    before = state(reg)
    report = transfer.import_source(reg, path)
    refused = {r["skill"]: r for r in report["refused"]}
    assert report["added"] == ["good-skill"]
    assert set(refused) == {"dot-dot", "absolute", "too-big", "too-many", "linked"}
    assert "'..'" in refused["dot-dot"]["reason"] and "absolute" in refused["absolute"]["reason"]
    assert len(state(reg)[0]) == len(before[0]) + 1
    assert not (tmp_path / "escape.txt").exists()


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_a_git_repository_imports_at_a_pinned_commit_which_the_skill_records(reg, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "skills" / "greeter").mkdir(parents=True)
    (repo / "skills" / "greeter" / "SKILL.md").write_text(DOC.format(name="greeter", desc="Greets, v1."))
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "v1", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    (repo / "skills" / "greeter" / "SKILL.md").write_text(DOC.format(name="greeter", desc="Greets, v2."))
    _git("commit", "-qam", "v2", cwd=repo)

    report = transfer.import_source(reg, repo.as_uri(), ref=first)
    assert report["added"] == ["greeter"] and report["commit"] == first
    sid = next(f.skill_id for f in folders_of(reg) if f.agent_name == "greeter")
    detail = reg.get_detail(sid)
    assert detail["description"] == "Greets, v1."
    assert detail["source"] == {"source": repo.as_uri(), "commit": first, "ref": first, "path": "skills/greeter"}
    latest = transfer.import_source(reg, repo.as_uri())
    assert latest["updated"] == ["greeter"] and reg.get_detail(sid)["description"] == "Greets, v2."
    with pytest.raises(transfer.TransferError):
        transfer.import_source(reg, repo.as_uri(), ref="no-such-ref")


def test_import_reports_progress(reg):
    seen: list[tuple[int, int, str]] = []
    transfer.import_source(reg, DATA, progress=lambda done, total, what: seen.append((done, total, what)))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == len(list((DATA / "skills").iterdir()))
