"""The page where the user gives a skill its secrets, outside the chat.

    GET  /secrets/{link}            the form: the owner password and the value(s) the skill's auth_config asks for
    POST /secrets/{link}            check CSRF and password, seal the values in the vault (api_key), or
                                    start the provider's sign-in (oauth2)
    GET  /secrets/oauth/callback    the provider sends the browser back: exchange the code, store the tokens

A link (selfmcp/secret_links.py) is short-lived and single-use. The page is protected like the consent
page: the owner password (when one is configured: SELFMCP_OWNER_PASSWORD or the stored one), a CSRF
token in the form and in a cookie, and the lockout after five wrong passwords from one address.

`run_asking_for_secrets()` is skill_execute's side: when a run lacks credentials and the client
supports URL-mode elicitation, it asks the client to open the link, waits until the user saved,
and runs the skill in the same call. Over stdio the page is served for that time on a loopback port.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import json
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from mcp.shared.exceptions import MCPError

from selfmcp.errors import MissingCredentials
from selfmcp.remote.consent import PAGE_HEADERS, _message_page, _page, _read_form
from selfmcp.remote.http_security import LoginLimiter
from selfmcp.remote.oauth import OAuthProvider, RemoteAuth
from selfmcp.secret_links import PAGE_PATH, SecretLink, SecretLinks
from selfmcp.skill_oauth import CALLBACK_PATH, OAuthFlowError, SkillOAuth, missing_flow_fields
from selfmcp.store import SkillStore
from selfmcp.vault import Vault

log = logging.getLogger("selfmcp.secrets_page")

BROWSER_COOKIE = "selfmcp_oauth_flow"


class SecretsPage:
    """The secrets page of one server: links, vault, owner password, lockout, OAuth2 flows."""

    def __init__(self, *, links: SecretLinks, vault: Vault, store: SkillStore, environ: Mapping[str, str],
                 owner: OAuthProvider, limiter: LoginLimiter | None = None, skill_oauth: SkillOAuth | None = None,
                 secure_cookies: bool = False) -> None:
        self.links = links
        self.vault = vault
        self.store = store
        self.environ = environ
        self.owner = owner
        self.limiter = limiter or LoginLimiter()
        self.oauth = skill_oauth or SkillOAuth(vault, environ)
        self.secure_cookies = secure_cookies

    def routes(self) -> list[Route]:
        return [Route(CALLBACK_PATH, self.callback, methods=["GET"]),
                Route(PAGE_PATH + "/{link}", self.handle, methods=["GET", "POST"])]

    def add_routes(self, mcp: Any) -> None:
        mcp.custom_route(CALLBACK_PATH, methods=["GET"])(self.callback)
        mcp.custom_route(PAGE_PATH + "/{link}", methods=["GET", "POST"])(self.handle)

    # -- what the skill asks for

    def skill_auth(self, skill_id: int) -> tuple[str, dict[str, Any]] | None:
        with self.store.read() as tx:
            row = tx.skill(skill_id)
        if row is None or not row["is_active"] or not row["auth_config_json"]:
            return None
        return row["name"], json.loads(row["auth_config_json"])

    def _fields(self, skill_id: int, auth: Mapping[str, Any]) -> list[str]:
        """The variables the form asks for: the api key, or an OAuth2 client id/secret nobody has set."""
        if auth["type"] == "api_key":
            return [auth["env_var"]]
        return [auth[k] for k in ("client_id_env", "client_secret_env")
                if auth.get(k) and not self.oauth.client_value(skill_id, auth[k])]

    def _form(self, link: SecretLink, name: str, auth: Mapping[str, Any], fields: list[str], *,
              password: bool, error: str | None = None) -> str:
        notice = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
        inputs = "".join(f'<label for="f{i}">{html.escape(f)}</label>'
                         f'<input id="f{i}" name="value:{html.escape(f)}" type="password" autocomplete="off" required>'
                         for i, f in enumerate(fields))
        if password:
            inputs = ('<label for="password">Owner password</label><input id="password" name="password" '
                      'type="password" autocomplete="current-password" autofocus required>') + inputs
        if auth["type"] == "oauth2":
            host = urlsplit(auth["auth_url"]).netloc
            intro = (f"<p>Connect skill <strong>{html.escape(name)}</strong> to your account at "
                     f"<strong>{html.escape(host)}</strong>. selfMCP keeps the tokens encrypted for this skill only "
                     "and refreshes them; the model never sees them.</p>")
            button = "Connect"
        else:
            extra = html.escape(auth.get("instructions") or "")
            intro = (f"<p>Skill <strong>{html.escape(name)}</strong> needs <strong>{html.escape(auth['env_var'])}"
                     f"</strong>. {extra}</p><p>The value is stored encrypted for this skill only; the model never "
                     "sees it.</p>")
            button = "Save"
        return (f"<h1>selfMCP: a key for {html.escape(name)}</h1>{intro}{notice}"
                f'<form method="post" action="{PAGE_PATH}/{html.escape(link.id)}">'
                f'<input type="hidden" name="csrf" value="{html.escape(link.csrf)}">{inputs}'
                f'<div class="buttons"><button class="allow" type="submit">{button}</button></div></form>')

    # -- the page

    async def handle(self, request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        if self.limiter.locked_for(address):
            return _message_page("Too many wrong passwords", "This page is locked for your address for 15 minutes.",
                                 429)
        link = self.links.pending(request.path_params["link"])
        found = await anyio.to_thread.run_sync(self.skill_auth, link.skill_id) if link else None
        if link is None or found is None:
            return _message_page("Link expired", "This link is unknown, used or older than 10 minutes. Ask for "
                                 "a new one (run the skill again, or call skill_auth_url).", 400)
        name, auth = found
        fields = await anyio.to_thread.run_sync(self._fields, link.skill_id, auth)
        password = await anyio.to_thread.run_sync(self.owner.has_owner_password)
        cookie = f"selfmcp_secrets_{link.id[:16]}"
        if request.method == "GET":
            response = _page("selfMCP: enter a key", self._form(link, name, auth, fields, password=password))
            response.set_cookie(cookie, link.csrf, max_age=600, path=PAGE_PATH, httponly=True, samesite="strict",
                                secure=self.secure_cookies)
            return response
        form = await _read_form(request)
        if form is None:
            return _message_page("Bad request", "The form could not be read.", 413)
        if not (hmac.compare_digest(form.get("csrf", "").encode(), link.csrf.encode())
                and hmac.compare_digest(request.cookies.get(cookie, "").encode(), link.csrf.encode())):
            log.warning("refused a secrets form from %s without a valid CSRF token", address)
            return _message_page("Form expired", "Reload the page and try again.", 403)
        if password and not await self.owner.check_owner_password(form.get("password", "")):
            failures = self.limiter.record_failure(address)
            log.warning("wrong owner password on the secrets page from %s (%d of %d)", address, failures,
                        self.limiter.max_failures)
            if self.limiter.locked_for(address):
                return _message_page("Too many wrong passwords", "This page is locked for your address for 15 "
                                     "minutes.", 429)
            return _page("selfMCP: enter a key", self._form(link, name, auth, fields, password=True,
                                                             error="Wrong password."), 401)
        self.limiter.record_success(address)
        values = {f: form.get(f"value:{f}", "").strip() for f in fields}
        if not all(values.values()):
            return _page("selfMCP: enter a key", self._form(link, name, auth, fields, password=password,
                                                             error="Fill in every field."), 400)
        for key, value in values.items():
            await anyio.to_thread.run_sync(self.vault.set, link.skill_id, key, value)
        log.info("stored %s for skill %d from the secrets page", ", ".join(values) or "nothing", link.skill_id)
        if auth["type"] == "api_key":
            self.links.complete(link)
            return _message_page("Saved", f"{auth['env_var']} is stored for {name}. You can close this page and "
                                 "go back to your client.", 200)
        return await self._start_oauth(request, link, auth)

    async def _start_oauth(self, request: Request, link: SecretLink, auth: Mapping[str, Any]) -> Response:
        lacking = missing_flow_fields(auth)
        if lacking:
            return _message_page("Cannot connect", f"The skill's auth_config needs {', '.join(lacking)} for selfMCP "
                                 "to connect it; update the skill and ask for a new link.", 400)
        base = str(request.base_url).rstrip("/") if not self.links.base_url else self.links.base_url
        try:
            url, browser = await anyio.to_thread.run_sync(self.oauth.start, link.skill_id, link.id, auth,
                                                          base + CALLBACK_PATH)
        except OAuthFlowError as exc:
            return _message_page("Cannot connect", str(exc), 400)
        response = RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)
        response.set_cookie(BROWSER_COOKIE, browser, max_age=600, path=CALLBACK_PATH, httponly=True, samesite="lax",
                            secure=self.secure_cookies)
        return response

    async def callback(self, request: Request) -> Response:
        query = request.query_params
        try:
            flow = self.oauth.take_flow(query.get("state", ""), request.cookies.get(BROWSER_COOKIE, ""))
        except OAuthFlowError as exc:
            return _message_page("Sign-in failed", str(exc), 400)
        link = self.links.pending(flow.link_id)
        found = await anyio.to_thread.run_sync(self.skill_auth, flow.skill_id)
        if link is None or found is None:
            return _message_page("Link expired", "Ask for a new link and connect again.", 400)
        if query.get("error") or not query.get("code"):
            reason = (query.get("error") or "no code")[:100]
            return _message_page("Sign-in failed", f"The provider did not grant access ({reason}).", 400)
        try:
            await self.oauth.finish(flow, query["code"], found[1])
        except OAuthFlowError as exc:
            return _message_page("Sign-in failed", f"Exchanging the code failed: {exc}.", 502)
        self.links.complete(link)
        response = _message_page("Connected", f"Skill {found[0]} is connected. You can close this page and go back "
                                 "to your client.", 200)
        response.delete_cookie(BROWSER_COOKIE, path=CALLBACK_PATH)
        return response


# ------------------------------------------------------------------------------ skill_execute's side

def supports_url_elicitation(ctx: Any) -> bool:
    caps = getattr(ctx, "client_capabilities", None) if ctx is not None else None
    return bool(caps is not None and caps.elicitation is not None and caps.elicitation.url is not None)


@contextlib.asynccontextmanager
async def serve_on_loopback(page: SecretsPage) -> AsyncIterator[str]:
    """Serve only the secrets page on 127.0.0.1:<free port> (stdio); yield its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=page.routes()), log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        try:
            yield base
        finally:
            server.should_exit = True
    sock.close()


def attach(mcp: Any, registry: Any, remote: RemoteAuth, owner_password: str | None, *, served: bool) -> SecretsPage:
    """The secrets page of a server over `registry`; on HTTP (`served`) its routes are added and links point to it.

    Also makes the vault key at start (the key file, unless SELFMCP_SECRET_KEY is set).
    """
    owner = remote.provider or OAuthProvider(registry.store.db, issuer_url=remote.base_url,
                                             resource_url=remote.resource_url, owner_password=owner_password)
    page = SecretsPage(links=registry.links, vault=registry.vault, store=registry.store, environ=registry.environ,
                       owner=owner, secure_cookies=remote.base_url.startswith("https://"))
    registry.vault.key()
    if served:
        registry.links.base_url = remote.base_url
        page.add_routes(mcp)
    return page


async def run_asking_for_secrets(registry: Any, page: SecretsPage, ctx: Any, skill_id: Any, params: Any,
                                 timeout: Any) -> dict[str, Any]:
    """Run the skill (refreshing its OAuth2 token first); if it lacks credentials and the client can open a
    URL, ask the user to enter them on the page, wait until they did, and run it again."""
    progress = ctx.report_progress if ctx is not None else None

    async def run() -> dict[str, Any]:
        if isinstance(skill_id, int):
            found = await anyio.to_thread.run_sync(page.skill_auth, skill_id)
            await page.oauth.ensure_fresh(skill_id, found[1] if found else None)
        return await registry.execute(skill_id, params, timeout, progress=progress)

    try:
        return await run()
    except MissingCredentials as exc:
        if not supports_url_elicitation(ctx):
            raise
        missing = exc
    async with contextlib.AsyncExitStack() as stack:
        link = missing.link
        if link is None:  # no page served (stdio): serve it for the time of this elicitation
            base = await stack.enter_async_context(serve_on_loopback(page))
            link = page.links.issue(missing.skill_id)
            url = f"{base}{PAGE_PATH}/{link.id}"
        else:
            url = page.links.url(link)
        try:
            answer = await ctx.elicit_url(f"{missing} Open this page to enter it; it is kept encrypted on the "
                                          "server and never shown to the model.", url, link.id)
        except MCPError:  # no back-channel (the 2026-07-28 protocol): the error with the link says the same
            raise missing from None
        if answer.action != "accept" or not await page.links.wait(link):
            raise missing
        with contextlib.suppress(MCPError):
            await ctx.session.send_elicit_complete(link.id, related_request_id=ctx.request_id)
    return await run()
