"""OAuth2 for skills against a fake provider on loopback: authorize with PKCE, callback, sealed tokens, refresh."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
import uvicorn
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from conftest import PASSWORD, assert_error, payload, run_server

pytestmark = pytest.mark.anyio

TOKEN = "vault-test-bearer-token-0123456789"
CLIENT_ID, CLIENT_SECRET = "fake-client-id", "fake-client-secret-0123456789"
BODY = ("import hashlib, os\n"
        "print(hashlib.sha256(os.environ['P_ACCESS_TOKEN'].encode()).hexdigest())")


class FakeProvider:
    """An OAuth2 provider: /authorize approves at once, /token checks PKCE and the client, counts refreshes."""

    def __init__(self) -> None:
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.access_tokens: list[str] = []
        self.refreshes = 0
        self.expires_in = 30  # under selfMCP's refresh margin: the next run refreshes
        self.refuse_refresh = False
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = Starlette(routes=[Route("/authorize", self.authorize), Route("/token", self.token, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))

    async def authorize(self, request: Request):
        q = request.query_params
        assert q["client_id"] == CLIENT_ID and q["response_type"] == "code" and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"]}
        return RedirectResponse(q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]}), 302)

    def _issue(self) -> JSONResponse:
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        self.access_tokens.append(access)
        self.refresh_tokens.add(refresh)
        return JSONResponse({"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                             "expires_in": self.expires_in})

    async def token(self, request: Request):
        form = await request.form()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client"}, 401)
        if form["grant_type"] == "authorization_code":
            grant = self.codes.pop(form["code"], None)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).decode()
            if grant is None or grant["challenge"] != challenge.rstrip("=") or grant["redirect_uri"] != form[
                    "redirect_uri"]:
                return JSONResponse({"error": "invalid_grant"}, 400)
            return self._issue()
        self.refreshes += 1
        if self.refuse_refresh or form["refresh_token"] not in self.refresh_tokens:
            return JSONResponse({"error": "invalid_grant"}, 400)
        self.refresh_tokens.discard(form["refresh_token"])
        return self._issue()


@contextlib.contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    thread = threading.Thread(target=provider.server.run, kwargs={"sockets": [provider.sock]}, daemon=True)
    thread.start()
    try:
        while not provider.server.started:
            threading.Event().wait(0.02)
        yield provider
    finally:
        provider.server.should_exit = True
        thread.join(10)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def connect_account(url: str, provider: FakeProvider, *, with_client: bool = True) -> httpx2.Response:
    """The browser: open the link, give the password (and the client id and secret), sign in at the provider."""
    async with httpx2.AsyncClient(follow_redirects=False) as browser:
        page = await browser.get(url)
        assert page.status_code == 200, page.text
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        form = {"csrf": csrf, "password": PASSWORD}
        if with_client:
            form |= {"value:P_CLIENT_ID": CLIENT_ID, "value:P_CLIENT_SECRET": CLIENT_SECRET}
        to_provider = await browser.post(url, data=form)
        assert to_provider.status_code == 303, to_provider.text
        location = to_provider.headers["location"]
        assert location.startswith(provider.base + "/authorize?")
        query = parse_qs(urlsplit(location).query)
        assert query["scope"] == ["read write"] and len(query["state"][0]) >= 16
        back = await browser.get(location)
        assert back.status_code == 302
        return await browser.get(back.headers["location"])


def provider_auth(provider: Any) -> dict[str, Any]:
    """The auth_config of a skill that connects to the fake provider."""
    return {"type": "oauth2", "auth_url": provider.base + "/authorize", "token_url": provider.base + "/token",
            "scopes": ["read", "write"], "client_id_env": "P_CLIENT_ID", "client_secret_env": "P_CLIENT_SECRET",
            "token_env": "P_ACCESS_TOKEN"}


async def test_a_skill_connects_with_oauth2_and_refreshes_once_under_concurrent_runs(tmp_path):
    with fake_provider() as provider, run_server(tmp_path, SELFMCP_AUTH="token", SELFMCP_AUTH_TOKEN=TOKEN,
                                                 SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        auth = provider_auth(provider)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http, \
                Client(streamable_http_client(running.base + "/mcp", http_client=http), mode="legacy") as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "calendar", "description": "Read my calendar.", "body": BODY, "auth_config": auth}))["id"]
            missing = assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
            assert set(missing["missing"]) == {"P_CLIENT_ID", "P_CLIENT_SECRET", "P_ACCESS_TOKEN"}
            connected = await connect_account(missing["url"], provider)
            assert connected.status_code == 200, connected.text
            assert provider.refreshes == 0 and len(provider.access_tokens) == 1

            # The token expires within the refresh margin: five runs at once refresh it exactly once.
            outs = []

            async def run_one() -> None:
                outs.append(payload(await client.call_tool("skill_execute", {"skill_id": sid})))

            provider.expires_in = 3600
            async with anyio.create_task_group() as tasks:
                for _ in range(5):
                    tasks.start_soon(run_one)
            assert provider.refreshes == 1
            assert {o["stdout"].strip() for o in outs} == {sha(provider.access_tokens[-1])}

            # A refused refresh: missing_credentials with a new link, which connects again.
            provider.expires_in = 30
            await connect_account((await client.call_tool("skill_auth_url", {"skill_id": sid}))
                                  .structured_content["url"], provider, with_client=False)
            provider.refuse_refresh = True
            again = assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
            assert again["missing"] == ["P_ACCESS_TOKEN"] and again["url"] != missing["url"]
            provider.refuse_refresh, provider.expires_in = False, 3600
            assert (await connect_account(again["url"], provider, with_client=False)).status_code == 200
            out = payload(await client.call_tool("skill_execute", {"skill_id": sid}))
            assert out["stdout"].strip() == sha(provider.access_tokens[-1])
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("remote.db*"))
        for token in [*provider.access_tokens, *provider.refresh_tokens, CLIENT_SECRET]:
            assert token.encode() not in stored
            assert token not in running.log_text


async def test_the_callback_refuses_a_state_from_another_browser(tmp_path):
    with fake_provider() as provider, run_server(tmp_path, SELFMCP_AUTH="token", SELFMCP_AUTH_TOKEN=TOKEN,
                                                 SELFMCP_OWNER_PASSWORD=PASSWORD,
                                                 P_CLIENT_ID=CLIENT_ID, P_CLIENT_SECRET=CLIENT_SECRET) as running:
        auth = provider_auth(provider)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http, \
                Client(streamable_http_client(running.base + "/mcp", http_client=http), mode="legacy") as client:
            sid = payload(await client.call_tool("skill_create", {
                "name": "calendar", "description": "Read my calendar.", "body": BODY, "auth_config": auth}))["id"]
            missing = assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
            assert missing["missing"] == ["P_ACCESS_TOKEN"]  # client id and secret come from the environment
            async with httpx2.AsyncClient(follow_redirects=False) as browser:
                page = await browser.get(missing["url"])
                csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
                to_provider = await browser.post(missing["url"], data={"csrf": csrf, "password": PASSWORD})
                back = await browser.get(to_provider.headers["location"])
            async with httpx2.AsyncClient() as other_browser:
                refused = await other_browser.get(back.headers["location"])
            assert refused.status_code == 400 and provider.access_tokens == []
            assert_error(await client.call_tool("skill_execute", {"skill_id": sid}), "missing_credentials")
