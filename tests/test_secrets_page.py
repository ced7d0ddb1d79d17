"""Entering a skill's key outside the chat: the secrets page, its link, and URL-mode elicitation, end to end."""

from __future__ import annotations

import re

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult

from conftest import PASSWORD, assert_error, payload, run_server, stdio_params

pytestmark = pytest.mark.anyio

TOKEN = "vault-test-bearer-token-0123456789"
SECRET = "sk-acme-elicited-0123456789abcdef"
BODY = "import os\nprint('key:', os.environ['ACME_API_KEY'])\nprint('len', len(os.environ['ACME_API_KEY']))"
API_KEY = {"type": "api_key", "env_var": "ACME_API_KEY", "instructions": "Get one at acme.example."}
SERVER_ENV = {"SELFMCP_AUTH": "token", "SELFMCP_AUTH_TOKEN": TOKEN, "SELFMCP_OWNER_PASSWORD": PASSWORD,
              "SELFMCP_LOG_LEVEL": "DEBUG"}


def csrf_of(page: httpx2.Response) -> str:
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


async def enter_key(url: str, *, password: str = PASSWORD, value: str = SECRET) -> httpx2.Response:
    """What the user does in the browser: open the link, type the owner password and the key, save."""
    async with httpx2.AsyncClient() as browser:
        csrf = csrf_of(await browser.get(url))
        return await browser.post(url, data={"csrf": csrf, "password": password, "value:ACME_API_KEY": value})


def assert_nowhere_in_clear(running, tmp_path) -> None:
    assert SECRET not in running.log_text
    for path in tmp_path.glob("remote.db*"):
        assert SECRET.encode() not in path.read_bytes(), path


def connect(running, **kwargs):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    return http, streamable_http_client(running.base + "/mcp", http_client=http)


async def test_over_http_the_same_call_asks_for_the_key_through_url_elicitation_and_runs(tmp_path):
    asked = []

    async def on_elicit(context, params):
        asked.append(params)
        saved = await enter_key(params.url)
        assert saved.status_code == 200, saved.text
        return ElicitResult(action="accept")

    with run_server(tmp_path, **SERVER_ENV) as running:
        http, transport = connect(running)
        async with http, Client(transport, mode="legacy", elicitation_callback=on_elicit) as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "acme", "description": "Use ACME.", "body": BODY, "auth_config": API_KEY}))["id"]
            result = await client.call_tool("skill_execute", {"skill_id": sid})
            out = payload(result)
            assert out["stdout"] == f"key: [REDACTED:ACME_API_KEY]\nlen {len(SECRET)}\n"
            assert SECRET not in result.content[0].text
            assert len(asked) == 1 and asked[0].mode == "url"
            assert asked[0].url.startswith(running.base + "/secrets/")
            # The link was single-use.
            async with httpx2.AsyncClient() as browser:
                assert (await browser.get(asked[0].url)).status_code == 400
            again = payload(await client.call_tool("skill_execute", {"skill_id": sid}))
            assert again["exit_code"] == 0 and len(asked) == 1
    assert_nowhere_in_clear(running, tmp_path)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_without_elicitation_gets_the_link_and_the_second_run_succeeds(tmp_path, mode):
    with run_server(tmp_path, **SERVER_ENV) as running:
        http, transport = connect(running)
        async with http, Client(transport, mode=mode) as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "acme", "description": "Use ACME.", "body": BODY, "auth_config": API_KEY}))["id"]
            missing = assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
            assert missing["missing"] == ["ACME_API_KEY"] and missing["url"].startswith(running.base + "/secrets/")
            assert missing["url"] in missing["hint"]
            saved = await enter_key(missing["url"])
            assert saved.status_code == 200 and SECRET not in saved.text
            out = payload(await client.call_tool("skill_execute", {"skill_id": sid}))
            assert out["stdout"] == f"key: [REDACTED:ACME_API_KEY]\nlen {len(SECRET)}\n"
            auth = payload(await client.call_tool("skill_auth_url", {"skill_id": sid}))
            assert auth["ready"] is True and auth["url"].startswith(running.base + "/secrets/")
            detail = payload(await client.call_tool("skill_get_detail", {"skill_id": sid}))
            assert SECRET not in str(detail)
    assert_nowhere_in_clear(running, tmp_path)


async def test_the_page_refuses_a_wrong_password_a_forged_form_and_locks_after_five_tries(tmp_path):
    with run_server(tmp_path, **SERVER_ENV) as running:
        http, transport = connect(running)
        async with http, Client(transport, mode="legacy") as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "acme", "description": "Use ACME.", "body": BODY, "auth_config": API_KEY}))["id"]
            url = assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")["url"]
            async with httpx2.AsyncClient() as attacker:  # no page visit: no CSRF cookie
                forged = await attacker.post(url, data={"csrf": "x", "password": PASSWORD, "value:ACME_API_KEY": "x"})
                assert forged.status_code == 403
            assert (await enter_key(url, password="wrong")).status_code == 401
            assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
            statuses = [(await enter_key(url, password="wrong")).status_code for _ in range(4)]
            assert statuses[-1] == 429
            async with httpx2.AsyncClient() as browser:
                assert (await browser.get(url)).status_code == 429


async def test_over_stdio_the_page_is_served_on_loopback_for_the_elicitation(tmp_path):
    async def on_elicit(context, params):
        assert params.url.startswith("http://127.0.0.1:")
        saved = await enter_key(params.url)
        assert saved.status_code == 200, saved.text
        return ElicitResult(action="accept")

    async with Client(stdio_params(tmp_path, SELFMCP_OWNER_PASSWORD=PASSWORD), mode="legacy",
                      elicitation_callback=on_elicit) as client:
        sid = payload(await client.call_tool("skill_create", {
            "name": "acme", "description": "Use ACME.", "body": BODY, "auth_config": API_KEY}))["id"]
        out = payload(await client.call_tool("skill_execute", {"skill_id": sid}))
        assert out["stdout"] == f"key: [REDACTED:ACME_API_KEY]\nlen {len(SECRET)}\n"


async def test_a_declined_elicitation_returns_missing_credentials(tmp_path):
    async def decline(context, params):
        return ElicitResult(action="decline")

    with run_server(tmp_path, **SERVER_ENV) as running:
        http, transport = connect(running)
        async with http, Client(transport, mode="legacy", elicitation_callback=decline) as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "acme", "description": "Use ACME.", "body": BODY, "auth_config": API_KEY}))["id"]
            assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
