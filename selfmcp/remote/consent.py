"""The routes remote clients and their owner reach without a token.

    GET  /consent?request=ID   the consent page: the client's name and redirect host, the owner password
    POST /consent              allow (password checked, code issued, back to the client) or deny
    GET  /.well-known/oauth-protected-resource   RFC 9728 metadata at the root URL as well
    GET  /                     where to connect (no secret)

The form is CSRF-protected twice: a token tied to the pending request, echoed in a cookie set with
the page. The first browser to open a pending request owns it: the page is shown again only to a
browser holding its cookie, and an opened request is never evicted by newer /authorize calls.
Five wrong passwords from one address (the real client address: proxy headers count only from
SELFMCP_TRUSTED_PROXIES) lock the page for that address for 15 minutes.
"""

from __future__ import annotations

import hmac
import html
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mcp.server.auth.json_response import PydanticJSONResponse
from mcp.shared.auth import ProtectedResourceMetadata

from selfmcp.remote.http_security import LoginLimiter
from selfmcp.remote.oauth import ConsentRequest, OAuthProvider, RemoteAuth

log = logging.getLogger("selfmcp.consent")

MAX_FORM_BYTES = 16 * 1024
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # No form-action: after the POST the browser must follow the redirect to the client's own URL.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
}

_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; background: #f6f6f4; color: #222; margin: 0; }
main { max-width: 30rem; margin: 8vh auto; background: #fff; padding: 2rem; border-radius: 12px;
       box-shadow: 0 1px 4px rgba(0,0,0,.12); }
h1 { font-size: 1.3rem; margin-top: 0; } .meta { color: #666; font-size: .85rem; word-break: break-all; }
.error { background: #fde8e8; color: #8a1c1c; padding: .6rem .8rem; border-radius: 6px; }
label { display: block; font-weight: 600; margin: 1rem 0 .3rem; }
input[type=password] { width: 100%; box-sizing: border-box; padding: .6rem; font-size: 1rem; }
.buttons { display: flex; gap: .8rem; margin-top: 1.2rem; }
button { padding: .6rem 1.4rem; font-size: 1rem; border-radius: 6px; border: 1px solid #888; cursor: pointer; }
button.allow { background: #1a5fb4; color: #fff; border-color: #1a5fb4; }
"""


def _page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
                f"<body><main>{body}</main></body></html>")
    return HTMLResponse(document, status_code=status, headers={**PAGE_HEADERS, **(headers or {})})


def _message_page(title: str, message: str, status: int) -> HTMLResponse:
    return _page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>", status)


def _consent_form(request: ConsentRequest, error: str | None = None) -> str:
    client = request.client
    name = html.escape(client.client_name or "An unnamed client")
    notice = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""
<h1>Allow <strong>{name}</strong> to use this selfMCP server?</h1>
<p>If you allow it, you go back to <strong>{html.escape(request.redirect_host)}</strong>, and the client can
search, create and run skills: Python code that runs on this server with its environment and API keys.</p>
<p class="meta">Client id {html.escape(client.client_id)}</p>{_publisher(client.client_id)}
{notice}
<form method="post" action="/consent">
<input type="hidden" name="request" value="{html.escape(request.id)}">
<input type="hidden" name="csrf" value="{html.escape(request.csrf)}">
<label for="password">Owner password</label>
<input id="password" name="password" type="password" autocomplete="current-password" autofocus required>
<div class="buttons">
<button class="allow" type="submit" name="action" value="allow">Allow</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</div>
</form>"""


def _publisher(client_id: str) -> str:
    """For a client metadata document (CIMD): the host that published the client's name and redirect URIs."""
    parts = urlsplit(client_id)
    if parts.scheme != "https" or not parts.hostname:
        return ""
    return (f'<p class="meta">Client described by <strong>{html.escape(parts.netloc)}</strong> '
            f"(its client metadata document)</p>")


def _cookie_name(request: ConsentRequest) -> str:
    return f"selfmcp_consent_{request.id[:16]}"


async def _read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form, or None when it is larger than MAX_FORM_BYTES or malformed."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


class ConsentPage:
    """GET shows the form for a pending /authorize request; POST allows or denies it."""

    def __init__(self, provider: OAuthProvider, limiter: LoginLimiter, *, secure_cookies: bool) -> None:
        self.provider = provider
        self.limiter = limiter
        self.secure_cookies = secure_cookies

    async def handle(self, request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        locked = self.limiter.locked_for(address)
        if locked:
            log.warning("consent page locked for %s (%d more seconds)", address, locked)
            return _message_page("Too many wrong passwords",
                                 f"The consent page is locked for {int(locked // 60) + 1} more minutes. "
                                 "Try again later, then start the connection again from your client.", 429)
        if request.method == "GET":
            return self._show(request)
        return await self._submit(request, address)

    def _show(self, request: Request) -> Response:
        pending = self.provider.consent_request(request.query_params.get("request", ""))
        if pending is None:
            return _expired()
        cookie = request.cookies.get(_cookie_name(pending), "")
        if pending.opened and not hmac.compare_digest(cookie.encode(), pending.csrf.encode()):
            log.warning("a consent page already opened in another browser was requested again")
            return _message_page("Opened in another browser",
                                 "This sign-in request was opened in another browser. Start the connection again "
                                 "from your client.", 403)
        if not self.provider.open_consent(pending):
            return _message_page("Too many sign-ins in progress",
                                 "Too many sign-in requests are waiting. Try again in a few minutes.", 429)
        response = _page("selfMCP: allow access?", _consent_form(pending))
        response.set_cookie(_cookie_name(pending), pending.csrf, max_age=600, path="/consent", httponly=True,
                            samesite="lax", secure=self.secure_cookies)
        return response

    async def _submit(self, request: Request, address: str) -> Response:
        form = await _read_form(request)
        if form is None:
            return _message_page("Bad request", "The form could not be read.", 413)
        pending = self.provider.consent_request(form.get("request", ""))
        if pending is None:
            return _expired()
        cookie = request.cookies.get(_cookie_name(pending), "")
        given = form.get("csrf", "")
        if not (hmac.compare_digest(given.encode(), pending.csrf.encode())
                and hmac.compare_digest(cookie.encode(), pending.csrf.encode())):
            log.warning("refused a consent form from %s without a valid CSRF token", address)
            return _message_page("Form expired", "Reload the page from your client and try again.", 403)
        if form.get("action") == "deny":
            return RedirectResponse(self.provider.deny(pending), status_code=302, headers=PAGE_HEADERS)
        if not await self.provider.check_owner_password(form.get("password", "")):
            failures = self.limiter.record_failure(address)
            log.warning("wrong owner password on the consent page from %s (%d of %d)", address, failures,
                        self.limiter.max_failures)
            if self.limiter.locked_for(address):
                return _message_page("Too many wrong passwords",
                                     "The consent page is locked for 15 minutes for your address.", 429)
            return _page("selfMCP: allow access?", _consent_form(pending, "Wrong password."), 401)
        self.limiter.record_success(address)
        response = RedirectResponse(await self.provider.approve(pending), status_code=302, headers=PAGE_HEADERS)
        response.delete_cookie(_cookie_name(pending), path="/consent")
        return response


def _expired() -> HTMLResponse:
    return _message_page("Sign-in link expired",
                         "This request is unknown or older than 10 minutes. Start the connection again from "
                         "your client.", 400)


def add_routes(mcp: Any, auth: RemoteAuth, limiter: LoginLimiter | None = None) -> None:
    """Register the consent page (OAuth mode), root resource metadata and the landing route on `mcp`."""
    if auth.provider is not None:
        page = ConsentPage(auth.provider, limiter or LoginLimiter(),
                           secure_cookies=auth.base_url.startswith("https://"))
        mcp.custom_route("/consent", methods=["GET", "POST"])(page.handle)

    if auth.mode != "none":
        metadata = ProtectedResourceMetadata(resource=auth.resource_url, authorization_servers=[auth.base_url])

        @mcp.custom_route("/.well-known/oauth-protected-resource", methods=["GET", "OPTIONS"])
        async def resource_metadata(request: Request) -> Response:
            # The SDK serves it only at the path-suffixed URL; some clients look at the root first.
            return PydanticJSONResponse(metadata, headers={"Access-Control-Allow-Origin": "*",
                                                           "Cache-Control": "public, max-age=3600"})

    @mcp.custom_route("/", methods=["GET"])
    async def landing(request: Request) -> Response:
        return JSONResponse({"name": "selfMCP", "mcp_url": auth.resource_url, "auth": auth.mode,
                             "health": auth.base_url + "/health"})
