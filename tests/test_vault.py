"""The credential vault: sealed at rest, injected only into its skill's runs, redacted, managed from the CLI."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import pytest
from mcp.client.client import Client

import skills
from conftest import ROOT, FakeEmbedder, assert_error, clean_env, payload, stdio_params
from selfmcp.cli import vault_commands
from selfmcp.vault import OAUTH_TOKEN_ENTRY, Vault, key_path_for

SECRET = "sk-vault-test-0123456789abcdef"
ECHO_KEY = "import os\nprint('key:', os.environ['ACME_API_KEY'])\nprint('len', len(os.environ['ACME_API_KEY']))"
API_KEY = {"type": "api_key", "env_var": "ACME_API_KEY", "instructions": "Get one at acme.example."}


def make_registry(db_path, **environ):
    registry = skills.Registry(db_path, FakeEmbedder(), environ={"PATH": os.environ["PATH"], **environ})
    registry.seed_core_skills()
    return registry


def test_a_value_is_stored_sealed_and_opens_only_for_its_skill_and_name(reg, db_path):
    a = reg.create("a", "Skill a.", "print(1)", auth_config=API_KEY)["id"]
    b = reg.create("b", "Skill b.", "print(1)", auth_config=API_KEY)["id"]
    reg.vault.set(a, "ACME_API_KEY", SECRET)
    assert reg.vault.values_for(a) == {"ACME_API_KEY": SECRET}
    assert reg.vault.values_for(b) == {}
    assert SECRET.encode() not in db_path.read_bytes()
    with reg.store.write() as tx:  # a sealed value copied to another skill does not open there
        stored = tx.credentials(a)[0]["value"]
        tx.put_credential(b, "ACME_API_KEY", stored, now="x")
        tx.put_credential(a, "OTHER_API_KEY", stored, now="x")
    assert reg.vault.values_for(b) == {} and reg.vault.names(a) == ["ACME_API_KEY"]


def test_the_key_file_is_owner_only_and_made_once(reg, db_path):
    reg.vault.key()
    path = key_path_for(db_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert Vault(reg.store).key() == reg.vault.key() and path.read_text() == first


def test_a_lost_key_means_re_entering_never_a_crash(reg, db_path):
    sid = reg.create("a", "Skill a.", "print(1)", auth_config=API_KEY)["id"]
    reg.vault.set(sid, "ACME_API_KEY", SECRET)
    key_path_for(db_path).unlink()
    fresh = make_registry(db_path)
    assert fresh.vault.values_for(sid) == {} and fresh.vault.names(sid) == []
    with pytest.raises(skills.MissingCredentials) as info:
        fresh.prepare_execution(sid, {}, 5)
    assert info.value.payload()["missing"] == ["ACME_API_KEY"]
    assert fresh.vault.listing()[0]["unreadable"] == ["ACME_API_KEY"]


def test_an_environment_key_seals_and_a_different_one_cannot_open(db_path):
    one = skills.Registry(db_path, FakeEmbedder(), secret_key="first key")
    sid = one.create("a", "Skill a.", "print(1)", auth_config=API_KEY)["id"]
    one.vault.set(sid, "ACME_API_KEY", SECRET)
    assert not key_path_for(db_path).exists()
    assert skills.Registry(db_path, FakeEmbedder(), secret_key="first key").vault.values_for(sid)
    assert skills.Registry(db_path, FakeEmbedder(), secret_key="other key").vault.values_for(sid) == {}


@pytest.mark.anyio
async def test_a_run_gets_its_vault_value_over_the_server_variable_and_sees_it_redacted(db_path):
    registry = make_registry(db_path, ACME_API_KEY="server-wide-value-123")
    sid = registry.create("acme", "Use ACME.", ECHO_KEY, auth_config=API_KEY)["id"]
    other = registry.create("acme2", "Use ACME too.", ECHO_KEY, auth_config=API_KEY)["id"]
    registry.vault.set(sid, "ACME_API_KEY", SECRET)
    out = await registry.execute(sid, {}, 10)
    assert out["stdout"] == f"key: [REDACTED:ACME_API_KEY]\nlen {len(SECRET)}\n"
    assert SECRET not in json.dumps(out)
    assert (await registry.execute(other, {}, 10))["stdout"].startswith("key: [REDACTED:ACME_API_KEY]\nlen 21")


@pytest.mark.anyio
async def test_missing_credentials_counts_the_vault(db_path):
    registry = make_registry(db_path)
    sid = registry.create("acme", "Use ACME.", ECHO_KEY, auth_config=API_KEY)["id"]
    with pytest.raises(skills.MissingCredentials):
        await registry.execute(sid, {}, 10)
    assert registry.auth_url(sid)["missing"] == ["ACME_API_KEY"]
    registry.vault.set(sid, "ACME_API_KEY", SECRET)
    assert (await registry.execute(sid, {}, 10))["exit_code"] == 0
    assert registry.auth_url(sid)["ready"] is True


@pytest.mark.anyio
async def test_env_keys_lists_the_skills_with_vault_entries_by_name_only(db_path):
    registry = make_registry(db_path)
    sid = registry.create("acme", "Use ACME.", ECHO_KEY, auth_config=API_KEY)["id"]
    registry.vault.set(sid, "ACME_API_KEY", SECRET)
    env_keys = registry.search("selfmcp_env_keys", "keyword", 1)["results"][0]["id"]
    out = await registry.execute(env_keys, {}, 10)
    assert json.loads(out["stdout"])["vault_entries"] == [{"skill_id": sid, "name": "acme", "keys": ["ACME_API_KEY"]}]
    assert SECRET not in out["stdout"]


def test_the_oauth_token_record_gives_the_access_token_in_token_env(reg):
    auth = {"type": "oauth2", "auth_url": "https://p.example/a", "token_url": "https://p.example/t",
            "client_id_env": "P_CLIENT_ID", "token_env": "P_ACCESS_TOKEN"}
    sid = reg.create("p", "Use P.", "print(1)", auth_config=auth)["id"]
    reg.vault.set(sid, OAUTH_TOKEN_ENTRY, json.dumps({"access_token": "at-123456789", "refresh_token": "rt"}))
    reg.vault.set(sid, "P_CLIENT_ID", "client-1")
    assert reg.vault.values_for(sid, auth) == {"P_ACCESS_TOKEN": "at-123456789", "P_CLIENT_ID": "client-1"}


@pytest.mark.parametrize(("name", "value"), [("bad name", "v"), ("ACME_API_KEY", ""), ("X", "v" * 20000),
                                           ("SELFMCP_AUTH_TOKEN", "v")])
def test_bad_entries_are_refused_and_change_nothing(reg, name, value):
    sid = reg.create("a", "Skill a.", "print(1)")["id"]
    with pytest.raises(skills.InvalidArgument):
        reg.vault.set(sid, name, value)
    assert reg.vault.listing() == []


# ------------------------------------------------------------------------------ command line

def cli(db_path, *argv, stdin="", secret_key=None):
    lines: list[str] = []
    code = vault_commands.run(list(argv), db_path=db_path, secret_key=secret_key, stdin=io.StringIO(stdin),
                            out=lines.append)
    return code, "\n".join(lines)


def test_cli_sets_lists_and_deletes_by_skill_name(reg, db_path):
    sid = reg.create("acme", "Use ACME.", "print(1)", auth_config=API_KEY)["id"]
    assert cli(db_path, "set", "acme", "ACME_API_KEY", stdin=SECRET + "\n")[0] == 0
    assert reg.vault.values_for(sid) == {"ACME_API_KEY": SECRET}
    code, text = cli(db_path, "list")
    assert code == 0 and "acme" in text and "ACME_API_KEY" in text and SECRET not in text
    assert cli(db_path, "delete", str(sid), "ACME_API_KEY")[0] == 0
    assert reg.vault.values_for(sid) == {}
    assert cli(db_path, "delete", "acme", "ACME_API_KEY")[0] == 1
    code, text = cli(db_path, "set", "nosuchskill", "ACME_API_KEY", stdin="x\n")
    assert code == 1 and "nosuchskill" in text


def test_cli_rotate_key_re_seals_under_a_new_key_file(reg, db_path):
    sid = reg.create("acme", "Use ACME.", "print(1)", auth_config=API_KEY)["id"]
    reg.vault.set(sid, "ACME_API_KEY", SECRET)
    before = key_path_for(db_path).read_text()
    code, text = cli(db_path, "rotate-key")
    assert code == 0 and "1 entries" in text
    assert key_path_for(db_path).read_text() != before
    assert stat.S_IMODE(key_path_for(db_path).stat().st_mode) == 0o600
    assert reg.vault.values_for(sid) == {"ACME_API_KEY": SECRET}  # the running vault reads the new file


def test_cli_rotate_key_with_an_environment_key_reads_the_new_one(db_path):
    registry = skills.Registry(db_path, FakeEmbedder(), secret_key="old key")
    sid = registry.create("acme", "Use ACME.", "print(1)", auth_config=API_KEY)["id"]
    registry.vault.set(sid, "ACME_API_KEY", SECRET)
    assert cli(db_path, "rotate-key", stdin="new key\n", secret_key="old key")[0] == 0
    assert skills.Registry(db_path, FakeEmbedder(), secret_key="new key").vault.values_for(sid)
    assert skills.Registry(db_path, FakeEmbedder(), secret_key="old key").vault.values_for(sid) == {}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_over_stdio_selfmcp_secrets_set_then_the_run_uses_the_key(tmp_path, mode):
    params = stdio_params(tmp_path)
    async with Client(params, mode=mode) as client:
        created = payload(await client.call_tool("skill_create", {
            "name": "acme", "description": "Use ACME.", "body": ECHO_KEY, "auth_config": API_KEY}))
        missing = assert_error(await client.call_tool("skill_execute", {"skill_id": created["id"]}),
                               "missing_credentials")
        assert missing["missing"] == ["ACME_API_KEY"] and "selfmcp secrets set" in missing["hint"]
        done = subprocess.run([sys.executable, "server.py", "secrets", "set", "acme", "ACME_API_KEY"], cwd=ROOT,
                              input=SECRET + "\n", text=True, capture_output=True, env=clean_env(**{
                                  k: v for k, v in params.env.items() if k.startswith("SELFMCP_")}), timeout=60)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
        out = payload(await client.call_tool("skill_execute", {"skill_id": created["id"]}))
        assert out["stdout"] == f"key: [REDACTED:ACME_API_KEY]\nlen {len(SECRET)}\n"
    assert SECRET.encode() not in (tmp_path / "e2e.db").read_bytes()


@pytest.mark.anyio
async def test_no_run_gets_the_vault_key(db_path):
    registry = make_registry(db_path, SELFMCP_SECRET_KEY="the vault key itself")
    sid = registry.create("peek", "Peek.", "import os\nprint('SELFMCP_SECRET_KEY' in os.environ)")["id"]
    assert (await registry.execute(sid, {}, 10))["stdout"] == "False\n"
