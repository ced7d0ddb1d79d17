"""The trust boundary (issue 9, findings 1, 5, 6, 7, 9, 10, 11, 13, 14), each through a real client or real HTTP.

Every test here failed on the code before the fix: a secret read through skill_auth_url, an open
loopback server, a forged X-Forwarded-For, registration and consent floods, code hidden from the
reader of a SKILL.md, encoded secrets in output, forged log lines, look-alike names, and the OAuth
odds and ends (userinfo in a redirect URI, public clients that could not revoke).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import sqlite3
import stat
import urllib.parse
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client

import db
from conftest import (PASSWORD, REDIRECT, assert_error, form_fields, http_client, mcp_post, payload, pkce,
                      register, run_server, stdio_params)
from selfmcp.remote import oauth

pytestmark = pytest.mark.anyio

SERVER_TOKEN = "server-token-0123456789abcdef"
OWNER = "owner-password-0123456789"
API_KEY = "sk-live-0123456789abcdefghij"


async def create(client: Any, name: str, body: str, **fields: Any) -> Any:
    return await client.call_tool("skill_create", {"name": name, "description": f"The {name} skill.", "body": body,
                                                   **fields})


def oauth2(client_id_env: str, **extra: Any) -> dict[str, Any]:
    return {"type": "oauth2", "auth_url": "https://accounts.example.com/auth", "client_id_env": client_id_env,
            **extra}


# -------------------------------------------------------------------- 1: no secret through a tool

@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_auth_config_cannot_name_a_server_only_or_secret_variable_and_results_are_redacted(tmp_path, mode):
    env = {"SELFMCP_OWNER_PASSWORD": OWNER, "ACME_API_KEY": API_KEY, "ACME_CLIENT_ID": "acme-public-client-id"}
    async with Client(stdio_params(tmp_path, **env), mode=mode) as client:
        for config in (oauth2("SELFMCP_AUTH_TOKEN"), oauth2("SELFMCP_OWNER_PASSWORD"), oauth2("ACME_API_KEY"),
                       oauth2("ACME_CLIENT_ID", client_secret_env="SELFMCP_OWNER_PASSWORD"),
                       {"type": "api_key", "env_var": "SELFMCP_OWNER_PASSWORD"}):
            assert_error(await create(client, "leak", "print(1)", auth_config=config), "invalid_auth_config")
        good = payload(await create(client, "acme", "print(1)", auth_config=oauth2("ACME_CLIENT_ID")))
        assert_error(await client.call_tool("skill_update", {"skill_id": good["id"],
                                                             "auth_config": oauth2("ACME_API_KEY")}),
                     "invalid_auth_config")
        url = payload(await client.call_tool("skill_auth_url", {"skill_id": good["id"]}))["auth_url"]
        assert parse_qs(urlsplit(url).query)["client_id"] == ["acme-public-client-id"]  # a client id is public

        # A row stored before the rule existed is still refused at skill_auth_url.
        with contextlib.closing(sqlite3.connect(tmp_path / "e2e.db")) as conn, conn:
            conn.execute("update skills set auth_config_json = ? where id = ?",
                         ('{"type": "oauth2", "auth_url": "https://x.example/a", '
                          '"client_id_env": "SELFMCP_OWNER_PASSWORD"}', good["id"]))
        refused = await client.call_tool("skill_auth_url", {"skill_id": good["id"]})
        assert_error(refused, "invalid_auth_config")
        assert OWNER not in refused.content[0].text

        # Whatever a tool returns is redacted, not only skill_execute's output.
        echo = payload(await create(client, "echo", "print(2)", auth_config={
            "type": "api_key", "env_var": "ACME_API_KEY", "instructions": f"Paste {API_KEY} here."}))
        detail = await client.call_tool("skill_get_detail", {"skill_id": echo["id"]})
        assert API_KEY not in detail.content[0].text and API_KEY not in str(detail.structured_content)
        assert "[REDACTED:ACME_API_KEY]" in detail.structured_content["auth_config"]["instructions"]


# -------------------------------------------------------------------- 5: loopback is no trust boundary

async def test_a_loopback_server_asks_for_credentials_and_a_skill_cannot_reach_it_without_one(tmp_path):
    db_path = tmp_path / "remote.db"
    db_path.touch(mode=0o644)  # an existing file is tightened on open
    os.chmod(db_path, 0o644)
    body = ("import json, os, urllib.request, urllib.error\n"
            "p = json.loads(os.environ['SELFMCP_PARAMS'])\n"
            "req = urllib.request.Request(p['url'], data=b'{}', method='POST', headers={'Content-Type': "
            "'application/json', 'Accept': 'application/json, text/event-stream'})\n"
            "try:\n    status = urllib.request.urlopen(req, timeout=10).status\n"
            "except urllib.error.HTTPError as exc:\n    status = exc.code\n"
            "print(status, any(k.startswith('SELFMCP_') and k != 'SELFMCP_PARAMS' and k != 'SELFMCP_RUN_ID' "
            "for k in os.environ if k in ('SELFMCP_AUTH_TOKEN', 'SELFMCP_OWNER_PASSWORD')))\n")
    with run_server(tmp_path, SELFMCP_SANDBOX="none") as running:  # 127.0.0.1, no SELFMCP_AUTH
        printed = re.findall(r"owner password \(shown only this once\): (\S+)", running.log_text)
        assert len(printed) == 1  # the banner still prints on the first OAuth start
        async with httpx2.AsyncClient() as http:
            assert (await http.post(running.base + "/mcp", json={})).status_code == 401
            tokens = await sign_in(http, running.base, printed[0])
        async with http_client(running.base, tokens["access_token"]) as client:
            sid = payload(await create(client, "call_home", body))["id"]
            out = payload(await client.call_tool("skill_execute", {"skill_id": sid,
                                                                   "params": {"url": running.base + "/mcp"}}))
        assert out["stdout"] == "401 False\n", out
        for path in (db_path, tmp_path / "remote.db-wal", tmp_path / "remote.db-shm"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        running.restart()
        assert len(re.findall(r"shown only this once", running.log_text)) == 1


def test_a_new_database_and_its_directory_are_owner_only(tmp_path):
    path = tmp_path / "fresh" / "skills.db"
    with contextlib.closing(db.connect(path)) as conn:
        conn.execute("insert into oauth_owner(id, password_hash, created_at) values (1, 'x', 'now')")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()} == {0o600}


# -------------------------------------------------------------------- OAuth helpers

async def open_consent(http: httpx2.AsyncClient, base: str, client: dict[str, Any] | None = None,
                       **headers: str) -> tuple[httpx2.Response, str]:
    """(consent page, verifier) for a fresh /authorize request of `client` (registered if None)."""
    client = client or await register(http, base)
    verifier, challenge = pkce()
    to_consent = await http.get(base + "/authorize", headers=headers, params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT, "state": "s",
        "code_challenge": challenge, "code_challenge_method": "S256", "resource": base + "/mcp"})
    assert to_consent.status_code == 302, to_consent.text
    return await http.get(to_consent.headers["location"], headers=headers), verifier


async def sign_in(http: httpx2.AsyncClient, base: str, password: str) -> dict[str, Any]:
    client = await register(http, base)
    page, verifier = await open_consent(http, base, client)
    approved = await http.post(base + "/consent", data={**form_fields(page), "password": password, "action": "allow"})
    assert approved.status_code == 302, approved.text
    code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
    response = await http.post(base + "/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client["client_id"],
        "code_verifier": verifier, "resource": base + "/mcp"})
    assert response.status_code == 200, response.text
    return {**response.json(), "client_id": client["client_id"]}


# -------------------------------------------------------------------- 6: the lockout keys on the real address

async def test_forged_x_forwarded_for_does_not_escape_the_consent_lockout(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        async with httpx2.AsyncClient() as http:
            page, _ = await open_consent(http, running.base)
            for i in range(5):
                wrong = await http.post(running.base + "/consent", headers={"X-Forwarded-For": f"198.51.100.{i}"},
                                        data={**form_fields(page), "password": "guess", "action": "allow"})
                assert wrong.status_code in (401, 429)
            right = await http.post(running.base + "/consent", headers={"X-Forwarded-For": "198.51.100.77"},
                                    data={**form_fields(page), "password": PASSWORD, "action": "allow"})
            assert right.status_code == 429  # 127.0.0.1 is locked, whatever the header says
        assert "198.51.100" not in running.log_text


async def test_a_named_proxy_is_believed_and_the_lockout_keys_on_the_forwarded_address(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD,
                    SELFMCP_TRUSTED_PROXIES="127.0.0.1") as running:
        async with httpx2.AsyncClient() as http:
            page, _ = await open_consent(http, running.base)
            for _ in range(5):
                await http.post(running.base + "/consent", headers={"X-Forwarded-For": "198.51.100.1"},
                                data={**form_fields(page), "password": "guess", "action": "allow"})
            locked = await http.post(running.base + "/consent", headers={"X-Forwarded-For": "198.51.100.1"},
                                     data={**form_fields(page), "password": PASSWORD, "action": "allow"})
            assert locked.status_code == 429
            other = await http.post(running.base + "/consent", headers={"X-Forwarded-For": "198.51.100.2"},
                                    data={**form_fields(page), "password": PASSWORD, "action": "allow"})
            assert other.status_code == 302
        assert "198.51.100.1" in running.log_text


# -------------------------------------------------------------------- 7: floods are bounded

async def test_registration_is_rate_limited_per_address_and_bounded_in_size(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        async with httpx2.AsyncClient() as http:
            huge = await http.post(running.base + "/register", json={
                "client_name": "big", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                "contacts": [f"{i}@{'x' * 200}.example" for i in range(60)]})
            assert huge.status_code == 400 and huge.json()["error"] == "invalid_client_metadata"
            too_long = await http.post(running.base + "/register", content=b"{" + b" " * 70_000 + b"}",
                                       headers={"Content-Type": "application/json"})
            assert too_long.status_code == 413
            statuses = [(await http.post(running.base + "/register", json={
                "client_name": f"c{i}", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})).status_code
                for i in range(40)]
            assert 201 in statuses and set(statuses) <= {201, 429}
            limited = await http.post(running.base + "/register", json={"redirect_uris": [REDIRECT]})
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
            assert limited.json()["error"] == "rate_limited"
        with contextlib.closing(sqlite3.connect(running.db_path)) as conn:
            assert conn.execute("select count(*) from oauth_clients").fetchone()[0] <= 30
            assert conn.execute("select max(length(info_json)) from oauth_clients").fetchone()[0] <= 8 * 1024


async def test_a_full_client_table_makes_room_from_stale_unused_clients_and_never_fails_with_500(tmp_path, monkeypatch):
    monkeypatch.setattr(oauth, "MAX_CLIENTS", 3)
    now = [1_000_000.0]
    provider = oauth.OAuthProvider(tmp_path / "o.db", issuer_url="https://x.example",
                                   resource_url="https://x.example/mcp", clock=lambda: now[0])

    def client(i: int) -> Any:
        return oauth.OAuthClientInformationFull(client_id=f"c{i}", redirect_uris=[REDIRECT],
                                                token_endpoint_auth_method="none")

    for i in range(3):
        await provider.register_client(client(i))
    with pytest.raises(oauth.RegistrationError):  # a 400 from the SDK's handler, not a 500
        await provider.register_client(client(3))
    now[0] += oauth.CONSENT_TTL_S + 1
    await provider.register_client(client(4))  # the oldest never-used client made room
    assert await provider.get_client("c0") is None and await provider.get_client("c4") is not None


async def test_an_authorize_flood_cannot_evict_a_consent_its_browser_opened(tmp_path, monkeypatch):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD,
                    SELFMCP_TRUSTED_PROXIES="127.0.0.1") as running:
        async with httpx2.AsyncClient() as owner, httpx2.AsyncClient() as attacker:
            page, _ = await open_consent(owner, running.base, **{"X-Forwarded-For": "192.0.2.1"})
            request_id = form_fields(page)["request"]
            stolen = await attacker.get(running.base + f"/consent?request={request_id}")
            assert stolen.status_code == 403  # the request belongs to the browser that opened it
            victim = await register(attacker, running.base, client_name="flood")
            verifier, challenge = pkce()
            for i in range(oauth.MAX_PENDING_CONSENTS + 50):
                flood = await attacker.get(running.base + "/authorize", headers={
                    "X-Forwarded-For": f"10.{i // 250}.{i % 250}.1"}, params={
                    "response_type": "code", "client_id": victim["client_id"], "redirect_uri": REDIRECT,
                    "state": "s", "code_challenge": challenge, "code_challenge_method": "S256"})
                assert flood.status_code == 302
            one_address = [(await attacker.get(running.base + "/authorize", headers={"X-Forwarded-For": "10.9.9.9"},
                                               params={"client_id": victim["client_id"]})).status_code
                           for _ in range(61)]
            assert one_address[-1] == 429
            approved = await owner.post(running.base + "/consent", headers={"X-Forwarded-For": "192.0.2.1"},
                                        data={**form_fields(page), "password": PASSWORD, "action": "allow"})
            assert approved.status_code == 302 and "code=" in approved.headers["location"]


# -------------------------------------------------------------------- 9: what you read is what runs

HIDDEN_MD = """---
name: shown
description: Shows what runs.
---
# Shown

<!--
```python
print("hidden in a comment")
```
-->

An example of a SKILL.md, shown as Markdown, not run:

````markdown
```python
print("hidden in a four-backtick markdown block")
```
````

````python
print("four backticks")
````

~~~py
print("tilde fence")
~~~

    ```python
    print("an indented code block, not a fence")
    ```
"""


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_python_blocks_a_reader_sees_are_exactly_what_runs(tmp_path, mode):
    script = '"""Usage:\n```python\nprint("inside a docstring")\n```\n"""\nprint("the script itself")\n'
    async with Client(stdio_params(tmp_path, SELFMCP_SANDBOX="none"), mode=mode) as client:
        md = payload(await create(client, "shown", HIDDEN_MD))["id"]
        out = payload(await client.call_tool("skill_execute", {"skill_id": md}))
        assert out["stdout"] == "four backticks\ntilde fence\n", out
        detail = payload(await client.call_tool("skill_get_detail", {"skill_id": md}))
        assert detail["format"] == "skill_md"
        assert detail["code"] == 'print("four backticks")\n\n\nprint("tilde fence")\n'  # exactly what ran
        plain = payload(await create(client, "script", script))["id"]
        assert payload(await client.call_tool("skill_execute", {"skill_id": plain}))["stdout"] == "the script itself\n"
        assert payload(await client.call_tool("skill_get_detail", {"skill_id": plain}))["format"] == "python"


# -------------------------------------------------------------------- 10: redaction of encodings and names

async def test_encoded_secrets_and_database_passwords_are_redacted(tmp_path):
    env = {"ACME_API_KEY": API_KEY, "PGPASSWORD": "pg-password-123", "MYSQL_PWD": "mysql-pwd-4567",
           "SMTP_PASS": "smtp-pass-8901", "SENTRY_DSN": "https://key123456@sentry.example/1",
           "REDIS_URL": "redis://user:redis-pass-2468@cache.example:6379/0"}
    body = ("import base64, os, urllib.parse\n"
            "k = os.environ['ACME_API_KEY']\n"
            "print(base64.b64encode(k.encode()).decode())\n"
            "print(base64.urlsafe_b64encode(('x' + k).encode()).decode())\n"
            "print(base64.b64encode(('user:' + k).encode()).decode())\n"
            "print(k.encode().hex(), k.encode().hex().upper())\n"
            "print(urllib.parse.quote('key=' + k + '/+'), k[::-1])\n"
            "for name in ('PGPASSWORD', 'MYSQL_PWD', 'SMTP_PASS', 'SENTRY_DSN', 'REDIS_URL'):\n"
            "    print(os.environ[name])\n"
            "print('redis-pass-2468')\n")
    async with Client(stdio_params(tmp_path, SELFMCP_SANDBOX="none", **env)) as client:
        sid = payload(await create(client, "leaky", body))["id"]
        out = payload(await client.call_tool("skill_execute", {"skill_id": sid}))["stdout"]
    raw = API_KEY.encode()
    for form in (API_KEY, base64.b64encode(raw).decode()[:-4], raw.hex(), raw.hex().upper(), API_KEY[::-1],
                 urllib.parse.quote(API_KEY, safe=""), *env.values(), "redis-pass-2468"):
        assert form not in out, form
    assert base64.b64encode(b"user:" + raw).decode()[8:30] not in out
    assert out.count("[REDACTED:") >= 13, out


# -------------------------------------------------------------------- 11: one request, one log line

async def test_a_foreign_host_request_with_a_newline_in_its_path_writes_one_log_line(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="none", SELFMCP_LOG_LEVEL="INFO") as running:
        async with httpx2.AsyncClient() as http:
            refused = await http.get(running.base + "/x%0aFORGED%20admin%20logged%20in%0d%0a",
                                     headers={"Host": "evil.example"})
            assert refused.status_code == 421
    lines = running.log_text.splitlines()
    assert not any(line.startswith("FORGED") for line in lines)
    assert any("refused a request for /x\\nFORGED" in line for line in lines)


# -------------------------------------------------------------------- 13: one name, one skill

@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_names_with_control_characters_or_another_case_of_an_existing_name_are_refused(tmp_path, mode):
    async with Client(stdio_params(tmp_path), mode=mode) as client:
        first = payload(await create(client, "weather", "print(1)"))
        for name in ("weather\n", "weather\r", "wea\tther", "we\x00ather", "weather\u2028"):
            assert_error(await create(client, name, "print(1)"), "invalid_name")
        for name in ("Weather", "WEATHER"):
            assert_error(await create(client, name, "print(1)"), "skill_exists")
        other = payload(await create(client, "forecast", "print(2)"))
        assert_error(await client.call_tool("skill_update", {"skill_id": other["id"], "name": "WeAtHeR"}),
                     "skill_exists")
        renamed = payload(await client.call_tool("skill_update", {"skill_id": first["id"], "name": "Weather"}))
        assert renamed["name"] == "Weather"  # a skill may change the case of its own name
        await client.call_tool("skill_delete", {"skill_id": first["id"]})
        back = payload(await create(client, "weather", "print(3)"))
        assert (back["id"], back["status"], back["name"]) == (first["id"], "reactivated", "weather")


def test_the_migration_keeps_one_spelling_and_renames_the_other_case_variants(tmp_path):
    path = tmp_path / "old.db"
    with contextlib.closing(db.connect(path)) as conn:
        conn.execute("drop index skills_name_nocase")
        before = [m.name for m in db.MIGRATIONS].index("m006_case_insensitive_names")
        conn.execute(f"pragma user_version = {before}")
        if any(m.name == "m007_version_changes" for m in db.MIGRATIONS):  # undo what the later steps add
            conn.execute("alter table skill_versions drop column change")
            conn.execute("alter table skill_versions drop column restored_from")
        if any(m.name == "m008_agent_name_index" for m in db.MIGRATIONS):
            conn.execute("drop index skills_active_agent_name")
        for name in ("weather", "Weather", "WEATHER", "other"):
            conn.execute("insert into skills(name, description, body, created_at, updated_at) "
                         "values (?, 'd', 'print(1)', 'now', 'now')", (name,))
        db.migrate(conn)
        names = [r[0] for r in conn.execute("select name from skills order by id")]
        assert names == ["weather", "Weather~2", "WEATHER~3", "other"]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("insert into skills(name, description, body, created_at, updated_at) "
                         "values ('OTHER', 'd', 'b', 'now', 'now')")


# -------------------------------------------------------------------- 14: redirect URIs, consent host, revocation

async def test_redirect_uris_the_consent_host_and_revocation_by_a_public_client(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        async with httpx2.AsyncClient() as http:
            for uri in ("http://evil.example/cb", "http://127.evil.example/cb", "http://localhost.evil.example/cb",
                        "https://claude.ai@evil.example/cb", "http://127.0.0.1@evil.example/cb"):
                response = await http.post(running.base + "/register", json={
                    "redirect_uris": [uri], "token_endpoint_auth_method": "none"})
                assert response.status_code == 400, uri
                assert response.json()["error"] == "invalid_redirect_uri"
            for uri in ("http://127.0.0.1:5/cb", "http://[::1]/cb", "http://localhost:9/cb"):
                assert (await register(http, running.base, redirect_uris=[uri]))["client_id"]

            tokens = await sign_in(http, running.base, PASSWORD)
            assert (await mcp_post(running.base, tokens["access_token"])).status_code == 200
            revoked = await http.post(running.base + "/revoke", data={"token": tokens["access_token"],
                                                                      "client_id": tokens["client_id"]})
            assert revoked.status_code == 200
            assert (await mcp_post(running.base, tokens["access_token"])).status_code == 401


def test_the_consent_page_names_the_real_redirect_host():
    from mcp.server.auth.provider import AuthorizationParams
    from pydantic import AnyUrl

    def host(uri: str) -> str:
        params = AuthorizationParams(state=None, scopes=None, code_challenge="c" * 43, redirect_uri=AnyUrl(uri),
                                     redirect_uri_provided_explicitly=True)
        client = oauth.OAuthClientInformationFull(client_id="c", redirect_uris=[AnyUrl(uri)])
        return oauth.ConsentRequest(id="i", csrf="x", client=client, params=params, expires_at=0).redirect_host

    assert host("https://claude.ai@evil.example/cb") == "evil.example"
    assert host("https://user:pw@evil.example:8443/cb") == "evil.example:8443"
    assert host("http://[::1]:33418/cb") == "[::1]:33418"
