"""The `selfmcp` command line against temporary databases: each command, human and --json output, exit codes.

Most commands run in-process through `server.main(argv)` (what `python3 server.py COMMAND` runs: the
CLI with the settings and registry only server.py builds); the other entry points (`python3 -m selfmcp`,
`selfmcp serve`, re-executing through server.py) and everything that involves a running server use
real processes.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import threading
import tomllib
import urllib.request
from pathlib import Path

import anyio
import pytest
from mcp import Client

import db
import server
from conftest import ROOT, Server, clean_env, payload, run_server
from selfmcp import cli
from selfmcp.remote import oauth

ADDER = '"""Add two numbers a and b."""\nimport json, os\np = json.loads(os.environ["SELFMCP_PARAMS"])\nprint(p["a"] + p["b"])\n'


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith(("SELFMCP_", "REPLIT_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SELFMCP_HOST", "127.0.0.1")


@pytest.fixture
def dbfile(tmp_path):
    return tmp_path / "cli.db"


def selfmcp(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `python3 server.py ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        code = server.main(list(argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def as_json(capsys, *argv: str, code: int = 0):
    status, out, err = selfmcp(capsys, *argv, "--json")
    assert status == code, (out, err)
    return json.loads(out)


@pytest.fixture
def adder(tmp_path, dbfile, capsys):
    source = tmp_path / "adder.py"
    source.write_text(ADDER)
    created = as_json(capsys, "--db", str(dbfile), "create", str(source))
    assert (created["name"], created["version"], created["status"]) == ("adder", 1, "created")
    return created["id"]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Command line")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


# ------------------------------------------------------------------------------ help and docs

def test_every_command_has_clear_help_and_is_documented_in_the_readme(capsys):
    section = readme_section()
    for name, command in cli.COMMANDS.items():
        code, out, _ = selfmcp(capsys, name, "--help")
        assert code == 0 and f"usage: selfmcp {name}" in out and command.help.split("(")[0].strip() in out
        assert "--db PATH" in out and "--json" in out
        assert f"selfmcp {name}" in section, f"`selfmcp {name}` is not in the README's Command line section"
    code, out, _ = selfmcp(capsys, "--help")
    assert code == 0 and all(name in out for name in cli.COMMANDS) and "Exit codes" in out


def test_the_readme_says_why_this_cli_library_was_chosen():
    section = readme_section()
    assert "argparse" in section and "click" in section and "typer" in section and "tqdm" in section


def test_entry_points_run_the_command_line(tmp_path, dbfile, adder):
    env = clean_env(SELFMCP_DB_PATH=str(dbfile))
    for argv in ([sys.executable, "-m", "selfmcp", "--help"], [sys.executable, "server.py", "--help"]):
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "reset-owner-password" in proc.stdout, proc.stderr
    for argv in ([sys.executable, "server.py", "--json", "show", "adder"],  # in-process, with the backend
                 [sys.executable, "-m", "selfmcp", "--json", "show", "adder"]):  # re-executed through server.py
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and json.loads(proc.stdout)["body"] == ADDER, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "selfmcp", "list"], cwd=ROOT, env=clean_env(SELFMCP_DB_PATH=str(
        tmp_path / "none.db")), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "No database" in proc.stderr and proc.stdout == ""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["selfmcp"] == "selfmcp.cli:main"


def test_list_loads_neither_numpy_nor_mcp(tmp_path, adder, dbfile):
    code = ("import sys; from selfmcp import cli; status = cli.main(['--db', sys.argv[1], 'list']);"
            "print(status, sorted(m for m in ('numpy', 'mcp', 'skills', 'server') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(dbfile)], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stderr


# ------------------------------------------------------------------------------ skills

def test_create_list_show_and_search(capsys, dbfile, adder):
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "list")
    lines = out.splitlines()
    assert code == 0 and re.match(r"ID\s+NAME\s+SHORT_DESCRIPTION$", lines[0])
    assert any(re.match(rf"{adder}\s+adder\s+Add two numbers a and b\.$", line) for line in lines)
    assert lines[-1] == "3 skills"  # with the two core skills
    listing = as_json(capsys, "list", "--db", str(dbfile))
    assert listing["total"] == 3 and {"id": adder, "name": "adder",
                                      "short_description": "Add two numbers a and b."} in listing["skills"]

    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "show", "adder")
    assert code == 0 and re.search(r"^version\s+1$", out, re.M) and out.rstrip().endswith('print(p["a"] + p["b"])')
    assert as_json(capsys, "--db", str(dbfile), "show", str(adder))["body"] == ADDER

    found = as_json(capsys, "--db", str(dbfile), "search", "add two numbers", "--top-k", "2")
    assert found["results"][0]["id"] == adder
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "search", "add two numbers", "--mode", "keyword")
    assert code == 0 and re.search(rf"^{adder}\s+adder\s+1\.000\s", out, re.M)


def test_create_from_a_skill_folder_takes_frontmatter_and_requirements(capsys, tmp_path, dbfile):
    folder = tmp_path / "weather"
    folder.mkdir()
    (folder / "SKILL.md").write_text("---\nname: weather_report\ndescription: Report the weather.\n---\n\n"
                                     "```python\nprint('sunny')\n```\n")
    (folder / "requirements.txt").write_text("# pinned\nrequests>=2\n")
    created = as_json(capsys, "--db", str(dbfile), "create", str(folder))
    detail = as_json(capsys, "--db", str(dbfile), "show", "weather_report")
    assert created["name"] == "weather_report" and detail["dependencies"] == ["requests>=2"]
    assert detail["description"] == "Report the weather."


def test_run_prints_the_skill_output_and_its_exit_status(capsys, tmp_path, dbfile, adder):
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "run", "adder", "--params", '{"a": 2, "b": 40}')
    assert (code, out) == (0, "42\n")
    result = as_json(capsys, "--db", str(dbfile), "run", str(adder), "--params", '{"a": 1, "b": 1}')
    assert (result["stdout"], result["exit_code"]) == ("2\n", 0)
    code, out, err = selfmcp(capsys, "--db", str(dbfile), "run", "adder", "--params", '{"a": 1}')
    assert code == 1 and "KeyError" in err


def test_edit_history_diff_rollback_and_delete(capsys, tmp_path, dbfile, adder):
    source = tmp_path / "adder.py"
    source.write_text(ADDER.replace('p["b"])', 'p["b"] + 0)'))
    edited = as_json(capsys, "--db", str(dbfile), "edit", "adder", str(source), "--expected-version", "1")
    assert (edited["previous_version"], edited["version"], edited["updated_fields"]) == (1, 2, ["body"])
    renamed = as_json(capsys, "--db", str(dbfile), "edit", "adder", "--description", "Add a and b.")
    assert renamed["version"] == 3

    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "history", "adder")
    assert code == 0 and re.match(r"VERSION\s+CHANGED_AT\s+CHANGE\s+CHANGED_FIELDS\s+SIZE$", out.splitlines()[0])
    assert re.search(r"^2\s+\S+\s+updated\s+body\s+\d+$", out, re.M)
    history = as_json(capsys, "--db", str(dbfile), "history", "adder")["history"]
    assert [h["version"] for h in history] == [1, 2, 3]

    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "diff", "adder", "1", "3")
    assert code == 0 and out.startswith("--- v1/description\n+++ v3/description\n")
    assert '-print(p["a"] + p["b"])\n+print(p["a"] + p["b"] + 0)' in out
    diff = as_json(capsys, "--db", str(dbfile), "diff", "adder", "1", "3")
    assert diff["changed_fields"] == ["description", "body"]
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "diff", "adder", "2", "2")
    assert code == 0 and "same content" in out

    conflict = as_json(capsys, "--db", str(dbfile), "rollback", "adder", "1", "--expected-version", "2", code=1)
    assert conflict["error"] == "version_conflict" and conflict["current_version"] == 3
    rolled = as_json(capsys, "--db", str(dbfile), "rollback", "adder", "1")
    assert (rolled["version"], rolled["restored_from"]) == (4, 1)
    assert as_json(capsys, "--db", str(dbfile), "show", "adder")["body"] == ADDER
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "show", "adder", "--version", "2", "--history")
    assert code == 0 and "historical; current is 4" in out and "restored from 1" in out

    assert as_json(capsys, "--db", str(dbfile), "delete", "adder")["deleted"] is True
    code, _, err = selfmcp(capsys, "--db", str(dbfile), "show", "adder")
    assert code == 1 and "No active skill named 'adder'" in err


@pytest.mark.parametrize("argv", [["frobnicate"], ["show"], ["history", "adder", "extra"],
                                  ["show", "adder", "--version", "two"], ["run", "adder", "--params", "{nope"],
                                  []])
def test_usage_errors_exit_2(capsys, dbfile, adder, argv):
    code, out, err = selfmcp(capsys, "--db", str(dbfile), *argv)
    assert code == 2 and ("usage: selfmcp" in err + out or "--params" in err)


@pytest.mark.parametrize(("argv", "error"), [(["show", "nope"], "skill_not_found"),
                                             (["show", "999"], "skill_not_found"),
                                             (["show", "adder", "--version", "9"], "version_not_found"),
                                             (["diff", "adder", "1", "9"], "version_not_found"),
                                             (["delete", "selfmcp_about"], "cannot_delete_core_skill")])
def test_failures_exit_1_with_the_error_shape(capsys, dbfile, adder, argv, error):
    body = as_json(capsys, "--db", str(dbfile), *argv, code=1)
    assert body["error"] == error and body["message"] and body["hint"]
    code, out, err = selfmcp(capsys, "--db", str(dbfile), *argv)
    assert code == 1 and out == "" and err.startswith("selfmcp: ")


def test_commands_on_a_missing_database_fail_without_creating_it(capsys, tmp_path):
    missing = tmp_path / "none.db"
    for argv in (["list"], ["show", "x"], ["backup", str(tmp_path / "b.db")], ["doctor"], ["clients"]):
        assert as_json(capsys, "--db", str(missing), *argv, code=1)["error"] == "database_not_found"
    assert not missing.exists()


# ------------------------------------------------------------------------------ upkeep

def test_backup_and_restore_round_trip(capsys, tmp_path, dbfile, adder):
    copy = tmp_path / "copy.db"
    made = as_json(capsys, "--db", str(dbfile), "backup", str(copy))
    assert (made["integrity"], made["skills"], made["schema_version"]) == ("ok", 3, len(db.MIGRATIONS))
    code, _, err = selfmcp(capsys, "--db", str(dbfile), "backup", str(copy))
    assert code == 1 and "--force" in err
    assert as_json(capsys, "--db", str(dbfile), "backup", str(copy), "--force")["integrity"] == "ok"

    as_json(capsys, "--db", str(dbfile), "delete", "adder")
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "restore", str(copy))
    assert code == 0 and re.search(r"^skills\s+3$", out, re.M)
    assert as_json(capsys, "--db", str(dbfile), "show", "adder")["id"] == adder
    assert Path(str(dbfile) + ".before-restore").exists()

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert as_json(capsys, "--db", str(dbfile), "restore", str(junk), code=1)["error"] == "invalid_backup"


def test_reindex_reembeds_every_skill(capsys, dbfile, adder):
    with contextlib.closing(db.connect(dbfile)) as conn:
        conn.execute("delete from skill_embeddings")
    assert as_json(capsys, "--db", str(dbfile), "doctor")["checks"][3]["status"] == "warn"  # pending re-embeds
    done = as_json(capsys, "--db", str(dbfile), "reindex")
    assert done["reembedded"] == 3
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "reindex")
    assert code == 0 and re.search(r"^reembedded\s+3$", out, re.M)
    with contextlib.closing(db.connect(dbfile)) as conn:
        assert conn.execute("select count(*) from skill_embeddings").fetchone()[0] == 3


def test_doctor_reports_each_check_and_fails_on_a_schema_from_the_future(capsys, dbfile, adder):
    report = as_json(capsys, "--db", str(dbfile), "doctor")
    names = [c["check"] for c in report["checks"]]
    assert report["ok"] is True and names[:5] == ["integrity", "schema", "server", "embedder", "sandbox"]
    assert {"limits", "environments", "permissions file", "permissions folder"} <= set(names)
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "doctor")
    assert code == 0 and re.search(r"^integrity\s+ok\s+ok$", out, re.M)
    with contextlib.closing(sqlite3.connect(dbfile)) as conn:
        conn.execute("pragma user_version = 99")
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "doctor")
    assert code == 1 and re.search(r"^schema\s+fail\s+version 99", out, re.M)


def test_clients_and_revoke(capsys, dbfile, adder):
    info = {"client_id": "c1", "client_name": "Claude", "redirect_uris": ["https://claude.ai/cb"]}
    with contextlib.closing(db.connect(dbfile)) as conn:
        conn.execute("insert into oauth_clients values ('c1', ?, 1700000000, 1700000100)", (json.dumps(info),))
        conn.execute("insert into oauth_tokens values ('h', 'access', 'c1', 'g', '', null, 9999999999, 1, null)")
    listed = as_json(capsys, "--db", str(dbfile), "clients")
    assert listed == [{"client_id": "c1", "client_name": "Claude", "redirect_uris": ["https://claude.ai/cb"],
                       "created_at": 1700000000, "last_used_at": 1700000100, "tokens": 1}]
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "clients")
    assert code == 0 and re.search(r"^c1\s+Claude\s+2023-11-14 22:13:20Z\s+2023-11-14 22:15:00Z\s+1\s", out, re.M)
    assert as_json(capsys, "--db", str(dbfile), "revoke", "c1") == {"revoked": "c1"}
    assert as_json(capsys, "--db", str(dbfile), "clients") == []
    assert as_json(capsys, "--db", str(dbfile), "revoke", "c1", code=1)["error"] == "client_not_found"
    with contextlib.closing(db.connect(dbfile)) as conn:
        assert conn.execute("select count(*) from oauth_tokens").fetchone()[0] == 0


def test_token_prints_or_rotates_the_static_token(capsys, monkeypatch, dbfile, adder):
    assert as_json(capsys, "--db", str(dbfile), "token", code=1)["error"] == "no_token"
    monkeypatch.setenv("SELFMCP_AUTH_TOKEN", "t" * 40)
    assert selfmcp(capsys, "--db", str(dbfile), "token")[:2] == (0, "t" * 40 + "\n")
    assert as_json(capsys, "--db", str(dbfile), "token")["token"] == "t" * 40
    rotated = as_json(capsys, "--db", str(dbfile), "token", "--rotate")
    assert len(rotated["token"]) >= 40 and rotated["token"] != "t" * 40
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "token", "--rotate")
    assert code == 0 and "SELFMCP_AUTH_TOKEN" in out


def test_reset_owner_password_stores_a_new_password(capsys, dbfile, adder):
    password = as_json(capsys, "--db", str(dbfile), "reset-owner-password")["owner_password"]
    with contextlib.closing(db.connect(dbfile)) as conn:
        stored = conn.execute("select password_hash from oauth_owner").fetchone()[0]
    assert oauth.verify_password(password, stored) and password not in stored
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "reset-owner-password")
    assert code == 0 and "New owner password" in out


# ------------------------------------------------------------------------------ with a server running

def test_serve_runs_the_server_and_restore_refuses_while_it_runs(tmp_path, capsys):
    dbfile = tmp_path / "served.db"
    backup = tmp_path / "backup.db"
    server = Server(tmp_path, {"SELFMCP_DB_PATH": str(dbfile), "SELFMCP_HOST": "127.0.0.1"},
                    cmd=[sys.executable, "-m", "selfmcp", "serve", "--transport", "streamable-http"])
    server.start()
    try:
        with urllib.request.urlopen(server.base + "/health", timeout=5) as resp:
            assert json.load(resp)["skills"] == 2
        assert as_json(capsys, "--db", str(dbfile), "backup", str(backup))["skills"] == 2
        refused = as_json(capsys, "--db", str(dbfile), "restore", str(backup), code=1)
        assert refused["error"] == "server_running"
        assert not Path(str(dbfile) + ".before-restore").exists()  # nothing was touched
        report = as_json(capsys, "--db", str(dbfile), "doctor")
        assert report["checks"][2]["detail"] == "running on this file"
    finally:
        server.stop()
    assert as_json(capsys, "--db", str(dbfile), "restore", str(backup))["skills"] == 2


@pytest.mark.anyio
async def test_backup_while_a_server_writes_holds_every_acknowledged_skill(tmp_path):
    with run_server(tmp_path, SELFMCP_LOG_LEVEL="WARNING", SELFMCP_AUTH="none") as server:
        acknowledged: list[str] = []
        before_backup: list[str] = []
        stop = threading.Event()

        async def writer(client: Client) -> None:
            n = 0
            while not stop.is_set():
                name = f"skill_{n}"
                result = await client.call_tool("skill_create", {"name": name, "description": f"Skill number {n}.",
                                                                 "body": f"print({n})"})
                assert payload(result)["status"] == "created"
                acknowledged.append(name)
                n += 1

        def backup() -> subprocess.CompletedProcess[str]:
            before_backup.extend(acknowledged)
            return subprocess.run([sys.executable, "-m", "selfmcp", "--db", str(server.db_path), "--json", "backup",
                                   str(tmp_path / "live.db")], cwd=ROOT, env=clean_env(), capture_output=True,
                                  text=True, timeout=120)

        async with Client(server.base + "/mcp") as client, anyio.create_task_group() as tg:
            tg.start_soon(writer, client)
            while len(acknowledged) < 20:
                await anyio.sleep(0.01)
            proc = await anyio.to_thread.run_sync(backup)
            after = len(acknowledged)
            while len(acknowledged) < after + 5:  # the server kept writing after the copy
                await anyio.sleep(0.01)
            stop.set()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["integrity"] == "ok"
    with contextlib.closing(sqlite3.connect(tmp_path / "live.db")) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        names = {r[0] for r in conn.execute("select name from skills where is_active = 1")}
    assert len(before_backup) >= 20 and set(before_backup) <= names


def test_writing_commands_print_aligned_fields_for_people(capsys, tmp_path, dbfile, adder):
    source = tmp_path / "adder.py"
    source.write_text(ADDER.replace("a + b", "a+b"))
    db_args = ("--db", str(dbfile))
    steps = [(("edit", "adder", "--description", "Add a and b."), r"^previous_version\s+1\n?"),
             (("rollback", "adder", "1"), r"^restored_from\s+1$"),
             (("backup", str(tmp_path / "b.db")), r"^integrity\s+ok$"),
             (("delete", "adder"), r"^deleted\s+true$"),
             (("create", str(source)), r"^status\s+reactivated$")]
    for argv, pattern in steps:
        code, out, err = selfmcp(capsys, *db_args, *argv)
        assert code == 0 and re.search(pattern, out, re.M), (argv, out, err)
    with contextlib.closing(db.connect(dbfile)) as conn:
        conn.execute("insert into oauth_clients values ('c2', '{}', 1, null)")
    code, out, _ = selfmcp(capsys, *db_args, "clients")
    assert code == 0 and re.search(r"^c2\s+-\s+1970-01-01 00:00:01Z\s+never\s+0\s+-$", out, re.M)
    code, out, _ = selfmcp(capsys, *db_args, "revoke", "c2")
    assert code == 0 and re.search(r"^revoked\s+c2$", out, re.M)


def test_import_and_export_agent_skills_folders(capsys, tmp_path, dbfile, adder):
    source = tmp_path / "skills"
    (source / "csv-tools" / "scripts").mkdir(parents=True)
    (source / "csv-tools" / "SKILL.md").write_text("---\nname: csv-tools\ndescription: Convert CSV files.\n---\n\n"
                                                   "Run scripts/main.py.\n")
    (source / "csv-tools" / "scripts" / "main.py").write_text("print('converted')\n")
    (source / "broken").mkdir()
    (source / "broken" / "SKILL.md").write_text("---\nname: broken\n---\n\nNo description.\n")
    report = as_json(capsys, "--db", str(dbfile), "import", str(source), code=1)  # one skill refused
    assert report["added"] == ["csv-tools"] and [r["skill"] for r in report["refused"]] == ["broken"]
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "import", str(source / "csv-tools"))
    assert code == 0 and re.search(r"^unchanged\s+csv-tools", out, re.M)
    assert selfmcp(capsys, "--db", str(dbfile), "run", "csv-tools")[:2] == (0, "converted\n")

    exported = as_json(capsys, "--db", str(dbfile), "export", str(tmp_path / "out"))
    assert "csv-tools" in exported["exported"]
    assert (tmp_path / "out" / "csv-tools" / "scripts" / "main.py").read_text() == "print('converted')\n"
    code, out, _ = selfmcp(capsys, "--db", str(dbfile), "export", str(tmp_path / "out2"))
    assert code == 0 and re.search(r"^exported\s+4$", out, re.M)  # two core skills, adder, csv-tools
