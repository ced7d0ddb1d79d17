"""Remote mode: auth modes chosen by the bind address, token mode, the Host allow-list, the Replit start."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import tomllib
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

import server
from conftest import REDIRECT, ROOT, clean_env, form_fields, free_port, mcp_post, pkce, register, run_server
from selfmcp.remote import oauth
from selfmcp.remote.http_security import HostAllowList
from server import ConfigError, Settings

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
TOOL_COUNT = 8


@pytest.fixture
def anyio_backend():
    return "asyncio"


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize(("env", "mode"), [
    ({}, "oauth"),  # the specification's default bind, 0.0.0.0
    ({"SELFMCP_HOST": "127.0.0.1"}, "oauth"),  # loopback is no trust boundary
    ({"SELFMCP_HOST": "127.0.0.1", "SELFMCP_AUTH": "none"}, "none"),  # only when asked for
    ({"SELFMCP_HOST": "localhost", "SELFMCP_AUTH_TOKEN": TOKEN}, "token"),
    ({"SELFMCP_AUTH_TOKEN": TOKEN}, "oauth"),  # oauth accepts the token too
    ({"SELFMCP_AUTH": "none"}, "none"),  # must be asked for on a public bind
    ({"SELFMCP_AUTH": "TOKEN", "SELFMCP_AUTH_TOKEN": TOKEN}, "token"),
    ({"SELFMCP_TRANSPORT": "stdio"}, "none"),
])
def test_the_auth_mode_defaults_by_bind_address(env, mode):
    assert Settings.from_env(env).auth == mode


@pytest.mark.parametrize(("env", "message"), [
    ({"SELFMCP_AUTH": "basic"}, "SELFMCP_AUTH"),
    ({"SELFMCP_AUTH": "token"}, "SELFMCP_AUTH_TOKEN"),
    ({"SELFMCP_PUBLIC_URL": "mcp.example.com"}, "SELFMCP_PUBLIC_URL"),
    ({"SELFMCP_PUBLIC_URL": "https://mcp.example.com/prefix"}, "SELFMCP_PUBLIC_URL"),
    ({"SELFMCP_PUBLIC_URL": "http://mcp.example.com"}, "https"),  # OAuth over plain http to another machine
    ({"SELFMCP_HOST": "192.168.1.5"}, "https"),
])
def test_unusable_remote_settings_are_refused_clearly(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_public_url_comes_from_the_setting_or_replit():
    assert Settings.from_env({"SELFMCP_PUBLIC_URL": "https://mcp.example.com/"}).base_url == "https://mcp.example.com"
    replit = Settings.from_env({"REPLIT_DOMAINS": "app.replit.app,custom.example", "REPLIT_DEV_DOMAIN": "x.replit.dev"})
    assert replit.base_url == "https://app.replit.app"
    assert set(replit.allowed_hosts) == {"app.replit.app", "custom.example", "x.replit.dev"}
    assert Settings.from_env({"REPLIT_DEV_DOMAIN": "x.replit.dev"}).base_url == "https://x.replit.dev"
    assert Settings.from_env({"SELFMCP_PORT": "9000"}).base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:8000", True), ("localhost", True), ("[::1]:8000", True), ("LOCALHOST:1", True),
    ("mcp.example.com", True), ("mcp.example.com:443", True), ("lan.example:8443", True),
    ("lan.example:8000", False), ("evil.example.com", False), ("127.0.0.1.evil.com", False),
    ("mcp.example.com.evil.com", False), ("", False), ("127.0.0.1:abc", False),
])
def test_the_host_allow_list(host, allowed):
    hosts = HostAllowList.for_server("0.0.0.0", "https://mcp.example.com", ["lan.example:8443"])
    assert hosts.allows(host) is allowed


def test_no_auth_on_a_public_bind_warns_loudly(caplog):
    settings = Settings.from_env({"SELFMCP_AUTH": "none"})
    remote = oauth.RemoteAuth.create("none", base_url=settings.base_url, mcp_path="/mcp", database=settings.db_path,
                                     auth_token=None, owner_password=None)
    with caplog.at_level(logging.WARNING, logger="selfmcp"):
        server.announce_auth(settings, remote)
    assert "SECURITY: SELFMCP_AUTH=none" in caplog.text


# ------------------------------------------------------------------------------ token mode

async def test_token_mode_answers_401_with_resource_metadata_and_serves_the_token(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="token", SELFMCP_AUTH_TOKEN=TOKEN) as running:
        async with httpx2.AsyncClient() as http:
            health = await http.get(running.base + "/health")
            assert health.status_code == 200 and TOKEN not in health.text
            missing = await http.post(running.base + "/mcp", json={})
            assert missing.status_code == 401
            challenge = missing.headers["www-authenticate"]
            assert challenge.startswith("Bearer ")
            metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge).group(1)
            assert metadata_url == running.base + "/.well-known/oauth-protected-resource/mcp"
            for url in (metadata_url, running.base + "/.well-known/oauth-protected-resource"):
                assert (await http.get(url)).json()["resource"] == running.base + "/mcp"
            assert (await mcp_post(running.base, "wrong-token")).status_code == 401
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with Client(streamable_http_client(running.base + "/mcp", http_client=http), mode="legacy") as client:
                assert len((await client.list_tools()).tools) == TOOL_COUNT
        assert TOKEN not in running.log_text and "rejected a bearer token" in running.log_text


# ------------------------------------------------------------------------------ Host allow-list

async def test_a_foreign_host_gets_421_on_a_public_bind_even_without_a_token(tmp_path):
    with run_server(tmp_path, SELFMCP_HOST="0.0.0.0", SELFMCP_AUTH="oauth", SELFMCP_AUTH_TOKEN=TOKEN,
                         SELFMCP_ALLOWED_HOSTS="mcp.lan") as running:
        async with httpx2.AsyncClient() as http:
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                refused = await http.post(running.base + "/mcp", json={}, headers={"Host": "evil.example", **headers})
                assert refused.status_code == 421 and refused.json()["error"] == "host_not_allowed"
            assert (await http.get(running.base + "/token", headers={"Host": "evil.example"})).status_code == 421
            allowed = await http.post(running.base + "/mcp", json={}, headers={"Host": "mcp.lan:8000"})
            assert allowed.status_code == 401
            assert (await http.get(running.base + "/health", headers={"Host": "evil.example"})).status_code == 200
            assert (await mcp_post(running.base, TOKEN)).status_code == 200


async def test_an_oversized_body_is_refused(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="token", SELFMCP_AUTH_TOKEN=TOKEN) as running:
        async with httpx2.AsyncClient() as http:
            response = await http.post(running.base + "/mcp", content=b"x" * (5 * 1024 * 1024),
                                       headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == 413


# ------------------------------------------------------------------------------ Replit

def replit_command() -> tuple[list[str], dict[str, str]]:
    """The run command and [env] of .replit, with this interpreter for python3."""
    config = tomllib.loads((ROOT / ".replit").read_text())
    cmd = shlex.split(config["run"])
    if cmd[0] in ("python3", "python"):
        cmd[0] = sys.executable
    return cmd, {k: str(v) for k, v in config.get("env", {}).items()}


async def test_the_replit_start_requires_oauth_prints_the_owner_password_once_and_serves_health(tmp_path):
    cmd, env = replit_command()
    port = free_port()
    domain = "selfmcp-test.example.replit.dev"
    with run_server(tmp_path, cmd, PORT=str(port), REPLIT_DEV_DOMAIN=domain, **env) as running:
        printed = re.findall(r"owner password \(shown only this once\): (\S+)", running.log_text)
        assert len(printed) == 1
        public = f"https://{domain}"
        async with httpx2.AsyncClient() as http:
            assert (await http.get(running.base + "/health")).json()["status"] == "ok"
            missing = await http.post(running.base + "/mcp", json={}, headers={"Host": domain})
            assert missing.status_code == 401
            assert f'resource_metadata="{public}/.well-known/oauth-protected-resource/mcp"' in \
                missing.headers["www-authenticate"]

            # The printed password signs a client in (the browser reaches the server via 127.0.0.1 here).
            client = await register(http, running.base)
            verifier, challenge = pkce()
            to_consent = await http.get(running.base + "/authorize", params={
                "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT,
                "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
                "resource": public + "/mcp"})
            assert to_consent.headers["location"].startswith(public + "/consent?")
            consent_url = running.base + "/consent?" + urlsplit(to_consent.headers["location"]).query
            page = await http.get(consent_url)
            cookie = page.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie  # https public URL: the browser sends it back
            approved = await http.post(running.base + "/consent", headers={"Cookie": cookie.split(";")[0]},
                                       data={**form_fields(page), "password": printed[0], "action": "allow"})
            code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
            response = await http.post(running.base + "/token", data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "client_id": client["client_id"], "code_verifier": verifier, "resource": public + "/mcp"})
            assert response.status_code == 200, response.text

        running.restart()
        assert len(re.findall(r"shown only this once", running.log_text)) == 1
        assert printed[0] not in running.logs[-1].read_text()


def test_reset_owner_password_prints_a_new_one_and_signs_clients_out(tmp_path):
    db_path = tmp_path / "reset.db"
    first = oauth.ensure_owner_password(db_path)
    proc = subprocess.run([sys.executable, "server.py", "--reset-owner-password"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=clean_env(SELFMCP_DB_PATH=str(db_path)))
    assert proc.returncode == 0, proc.stderr
    new = re.search(r"New owner password for .*: (\S+)", proc.stdout).group(1)
    assert new != first
    provider = oauth.OAuthProvider(db_path, issuer_url="https://x.example", resource_url="https://x.example/mcp")
    assert provider._stored_password_hash() and oauth.verify_password(new, provider._stored_password_hash())

