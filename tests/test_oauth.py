"""The built-in OAuth 2.1 server: the SDK's own OAuth client against the real server.py, then each refusal.

The owner's browser is played by `OwnerBrowser` (GET /authorize, follow to the consent page, post the
form with the CSRF token and the owner password); the other tests drive the endpoints with httpx2.
Expiry is tested by moving the stored expiry (server) or the provider's clock (unit), never by sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.auth.provider import AuthorizationParams
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata

from conftest import MemoryStorage, OwnerBrowser, PASSWORD, REDIRECT, form_fields, mcp_post, pkce, register, run_server
from selfmcp.remote import oauth
from selfmcp.remote.http_security import LoginLimiter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("oauth"), SELFMCP_AUTH="oauth",
                         SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        yield running


# ------------------------------------------------------------------------------ helpers

async def consent_page(http: httpx2.AsyncClient, base: str, client: dict[str, Any], challenge: str,
                       resource: str | None = None) -> httpx2.Response:
    to_consent = await http.get(base + "/authorize", params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT, "state": "st-1",
        "code_challenge": challenge, "code_challenge_method": "S256", "resource": resource or base + "/mcp"})
    assert to_consent.status_code == 302, to_consent.text
    assert to_consent.headers["location"].startswith(base + "/consent?request=")
    return await http.get(to_consent.headers["location"])


async def post_consent(http: httpx2.AsyncClient, base: str, page: httpx2.Response, password: str,
                       action: str = "allow") -> httpx2.Response:
    return await http.post(base + "/consent", data={**form_fields(page), "password": password, "action": action})


def redirect_query(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorization_code(http: httpx2.AsyncClient, base: str, client: dict[str, Any], challenge: str) -> str:
    page = await consent_page(http, base, client, challenge)
    query = redirect_query(await post_consent(http, base, page, PASSWORD))
    assert query["state"] == "st-1"
    return query["code"]


async def exchange(http: httpx2.AsyncClient, base: str, client: dict[str, Any], code: str,
                   verifier: str) -> httpx2.Response:
    return await http.post(base + "/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": client["client_id"], "code_verifier": verifier, "resource": base + "/mcp"})


async def refresh(http: httpx2.AsyncClient, base: str, client: dict[str, Any], token: str) -> httpx2.Response:
    return await http.post(base + "/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                  "client_id": client["client_id"]})


async def sign_in(http: httpx2.AsyncClient, base: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Register a client and run the whole grant; return (client, token response)."""
    client = await register(http, base)
    verifier, challenge = pkce()
    response = await exchange(http, base, client, await authorization_code(http, base, client, challenge), verifier)
    assert response.status_code == 200, response.text
    return client, response.json()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ the SDK's client

async def test_the_sdk_oauth_client_discovers_registers_signs_in_calls_a_tool_and_refreshes(server):
    storage, browser = MemoryStorage(), OwnerBrowser(PASSWORD)
    provider = OAuthClientProvider(
        server.base + "/mcp",
        OAuthClientMetadata(client_name="selfMCP test client", redirect_uris=[REDIRECT],
                            grant_types=["authorization_code", "refresh_token"]),
        storage, redirect_handler=browser.open, callback_handler=browser.callback)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(server.base + "/mcp", http_client=http), mode="legacy") as client:
            listing = await client.call_tool("skill_list_summary", {})
            assert not listing.is_error and listing.structured_content["total"] >= 2
            first = storage.tokens
            assert browser.visits == 1 and storage.client_info is not None
            assert first is not None and first.refresh_token and first.expires_in == oauth.ACCESS_TOKEN_TTL_S

            provider.context.token_expiry_time = 1.0  # long past: the next request refreshes first
            again = await client.call_tool("skill_list_summary", {})
            assert not again.is_error
            second = storage.tokens
            assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
            assert browser.visits == 1  # the refresh needed no owner

    with contextlib.closing(sqlite3.connect(server.db_path)) as conn:
        stored = {row[0] for row in conn.execute("select token_hash from oauth_tokens")}
    assert sha256(second.access_token) in stored and second.access_token not in stored  # hashed at rest


# ------------------------------------------------------------------------------ refusals

async def test_a_wrong_password_yields_no_code(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        page = await consent_page(http, server.base, client, pkce()[1])
        wrong = await post_consent(http, server.base, page, "not the password")
        assert wrong.status_code == 401 and "location" not in wrong.headers
        assert "Wrong password" in wrong.text
        assert "code" in redirect_query(await post_consent(http, server.base, page, PASSWORD))
    assert "wrong owner password on the consent page from 127.0.0.1" in server.log_text
    assert "not the password" not in server.log_text


async def test_a_pkce_verifier_mismatch_is_invalid_grant(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        code = await authorization_code(http, server.base, client, pkce()[1])
        response = await exchange(http, server.base, client, code, pkce()[0])
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_an_authorization_code_works_once_and_a_replay_revokes_its_tokens(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        verifier, challenge = pkce()
        code = await authorization_code(http, server.base, client, challenge)
        first = await exchange(http, server.base, client, code, verifier)
        assert first.status_code == 200
        replay = await exchange(http, server.base, client, code, verifier)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert (await mcp_post(server.base, first.json()["access_token"])).status_code == 401


async def test_an_expired_access_token_gets_401_pointing_at_the_resource_metadata(server):
    async with httpx2.AsyncClient() as http:
        _, tokens = await sign_in(http, server.base)
    assert (await mcp_post(server.base, tokens["access_token"])).status_code == 200
    with contextlib.closing(sqlite3.connect(server.db_path)) as conn, conn:
        conn.execute("update oauth_tokens set expires_at = 0 where token_hash = ?", (sha256(tokens["access_token"]),))
    response = await mcp_post(server.base, tokens["access_token"])
    assert response.status_code == 401
    assert f'resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"' in \
        response.headers["www-authenticate"]
    assert "rejected a bearer token" in server.log_text and tokens["access_token"] not in server.log_text


async def test_a_revoked_token_gets_401_and_its_refresh_token_goes_with_it(server):
    async with httpx2.AsyncClient() as http:
        client, tokens = await sign_in(http, server.base)
        # The SDK's /revoke requires the client_secret field even for a public client (empty then).
        revoked = await http.post(server.base + "/revoke", data={"token": tokens["access_token"],
                                                                 "client_id": client["client_id"], "client_secret": ""})
        assert revoked.status_code == 200
        assert (await mcp_post(server.base, tokens["access_token"])).status_code == 401
        again = await refresh(http, server.base, client, tokens["refresh_token"])
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


async def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_grant(server):
    async with httpx2.AsyncClient() as http:
        client, first = await sign_in(http, server.base)
        rotated = await refresh(http, server.base, client, first["refresh_token"])
        assert rotated.status_code == 200
        second = rotated.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert (await mcp_post(server.base, second["access_token"])).status_code == 200
        replay = await refresh(http, server.base, client, first["refresh_token"])
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert (await mcp_post(server.base, second["access_token"])).status_code == 401


async def test_a_consent_form_without_its_cookie_is_refused(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        page = await consent_page(http, server.base, client, pkce()[1])
    async with httpx2.AsyncClient() as other_browser:
        response = await post_consent(other_browser, server.base, page, PASSWORD)
    assert response.status_code == 403 and "location" not in response.headers


async def test_the_consent_page_names_the_client_and_its_redirect_host_safely(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base, client_name="<script>alert(1)</script> Desk")
        page = await consent_page(http, server.base, client, pkce()[1])
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Desk" in page.text and "<script>" not in page.text
    assert "127.0.0.1:1" in page.text and 'type="password"' in page.text
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"


async def test_deny_sends_the_client_access_denied(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        page = await consent_page(http, server.base, client, pkce()[1])
        query = redirect_query(await post_consent(http, server.base, page, "", action="deny"))
    assert query["error"] == "access_denied" and "code" not in query and query["state"] == "st-1"


async def test_authorize_for_another_resource_is_refused(server):
    async with httpx2.AsyncClient() as http:
        client = await register(http, server.base)
        response = await http.get(server.base + "/authorize", params={
            "response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT,
            "code_challenge": pkce()[1], "code_challenge_method": "S256", "resource": "https://other.example/mcp"})
    assert response.status_code == 302 and "error=invalid_target" in response.headers["location"]


@pytest.mark.parametrize("uri", ["javascript:alert(1)", "http://evil.example/callback", "data:text/html,hi"])
async def test_registration_refuses_an_unsafe_redirect_uri(server, uri):
    async with httpx2.AsyncClient() as http:
        response = await http.post(server.base + "/register", json={"client_name": "x", "redirect_uris": [uri]})
    assert response.status_code == 400


async def test_the_static_auth_token_is_accepted_in_oauth_mode(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_AUTH_TOKEN="static-token-0123456789abcdef",
                         SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        assert (await mcp_post(running.base, "static-token-0123456789abcdef")).status_code == 200
        assert (await mcp_post(running.base, "static-token-0123456789abcdefX")).status_code == 401


async def test_five_wrong_passwords_lock_the_consent_page(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        async with httpx2.AsyncClient() as http:
            client = await register(http, running.base)
            page = await consent_page(http, running.base, client, pkce()[1])
            statuses = [(await post_consent(http, running.base, page, f"guess {i}")).status_code for i in range(5)]
            assert statuses == [401, 401, 401, 401, 429]
            right = await post_consent(http, running.base, page, PASSWORD)
            assert right.status_code == 429 and "location" not in right.headers
            assert (await http.get(running.base + "/consent", params={"request": "x"})).status_code == 429
        assert "(5 of 5)" in running.log_text and "guess 4" not in running.log_text


async def test_clients_and_tokens_survive_a_restart(tmp_path):
    with run_server(tmp_path, SELFMCP_AUTH="oauth", SELFMCP_OWNER_PASSWORD=PASSWORD) as running:
        async with httpx2.AsyncClient() as http:
            client, tokens = await sign_in(http, running.base)
            running.restart()
            assert (await mcp_post(running.base, tokens["access_token"])).status_code == 200
            assert (await refresh(http, running.base, client, tokens["refresh_token"])).status_code == 200


# ------------------------------------------------------------------------------ unit

def test_the_owner_password_hash_is_salted_scrypt():
    first, second = oauth.hash_password("s3cret"), oauth.hash_password("s3cret")
    assert first != second and first.startswith("scrypt$") and "s3cret" not in first
    assert oauth.verify_password("s3cret", first) and not oauth.verify_password("s3cret!", first)
    assert not oauth.verify_password("s3cret", "garbage")


def test_the_owner_password_is_generated_once(tmp_path):
    db_path = tmp_path / "owner.db"
    password = oauth.ensure_owner_password(db_path)
    assert password and oauth.ensure_owner_password(db_path) is None
    new = oauth.reset_owner_password(db_path)
    assert new != password


def test_five_failures_lock_an_address_for_fifteen_minutes():
    now = [1000.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    for _ in range(4):
        limiter.record_failure("10.0.0.1")
    assert limiter.locked_for("10.0.0.1") == 0
    assert limiter.record_failure("10.0.0.1") == 5 and limiter.locked_for("10.0.0.1") == 900
    assert limiter.locked_for("10.0.0.2") == 0  # per address
    now[0] += 899
    assert limiter.locked_for("10.0.0.1") == 1
    now[0] += 1
    assert limiter.locked_for("10.0.0.1") == 0


def test_failures_older_than_the_window_do_not_count():
    now = [0.0]
    limiter = LoginLimiter(clock=lambda: now[0])
    for _ in range(4):
        limiter.record_failure("a")
    now[0] += 901
    assert limiter.record_failure("a") == 1 and limiter.locked_for("a") == 0


async def test_codes_expire_in_minutes_access_tokens_in_an_hour_refresh_tokens_in_thirty_days(tmp_path: Path):
    now = [1_000_000.0]
    provider = oauth.OAuthProvider(tmp_path / "p.db", issuer_url="https://mcp.example",
                                   resource_url="https://mcp.example/mcp", clock=lambda: now[0])
    client = OAuthClientInformationFull(client_id="c1", redirect_uris=[REDIRECT], token_endpoint_auth_method="none")
    await provider.register_client(client)
    url = await provider.authorize(client, AuthorizationParams(
        state="s", scopes=None, code_challenge=pkce()[1], redirect_uri=REDIRECT, redirect_uri_provided_explicitly=True,
        resource="https://mcp.example/mcp"))
    request = provider.consent_request(parse_qs(urlsplit(url).query)["request"][0])
    code = parse_qs(urlsplit(await provider.approve(request)).query)["code"][0]
    loaded = await provider.load_authorization_code(client, code)
    assert loaded.expires_at - now[0] <= 10 * 60

    tokens = await provider.exchange_authorization_code(client, loaded)
    assert (await provider.load_access_token(tokens.access_token)).expires_at == now[0] + 3600
    stored_refresh = await provider.load_refresh_token(client, tokens.refresh_token)
    assert stored_refresh.expires_at == now[0] + 30 * 24 * 3600
    now[0] += 3601
    assert await provider.load_access_token(tokens.access_token) is None
    assert provider.consent_request(request.id) is None
