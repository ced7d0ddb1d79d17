"""OAuth2 for skills: selfMCP as the OAuth client of a skill's provider (authorization code + PKCE).

For an `oauth2` auth_config (`auth_url`, `token_url`, `scopes`, `client_id_env`, optional
`client_secret_env`, and `token_env`: the variable a run gets the access token in):

1. the secrets page calls `start()` once the owner password is checked: it remembers a pending flow
   under a random `state`, bound to the browser by a second random value the page sets as a cookie,
   and returns the provider's authorization URL (S256 code challenge);
2. the provider sends the browser back to selfMCP's `/secrets/oauth/callback`; `finish()` checks
   state and cookie, exchanges the code at `token_url` and stores the tokens in the vault
   (`oauth2:token`, sealed like every entry);
3. before each run `ensure_fresh()` refreshes a token that expires within `REFRESH_MARGIN_S`, under
   a per-skill lock so concurrent runs refresh once. A refused refresh removes the token: the run
   then fails with missing_credentials and a fresh link.

The client id and secret come from the server's environment or the skill's vault entries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx2

from selfmcp.vault import OAUTH_TOKEN_ENTRY, Vault

log = logging.getLogger("selfmcp.skill_oauth")

FLOW_TTL_S = 10 * 60
REFRESH_MARGIN_S = 60
TOKEN_TIMEOUT_S = 15
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
CALLBACK_PATH = "/secrets/oauth/callback"


class OAuthFlowError(Exception):
    """The provider refused or answered something unusable; the message is safe to show the owner."""


@dataclass
class PendingFlow:
    state: str
    browser: str
    verifier: str
    skill_id: int
    link_id: str
    redirect_uri: str
    expires_at: float


def missing_flow_fields(auth: Mapping[str, Any]) -> list[str]:
    """auth_config fields selfMCP needs to run the flow itself."""
    return [k for k in ("token_url", "token_env") if not auth.get(k)]


class SkillOAuth:
    """Pending flows (in memory), the code exchange and refreshes, for every skill of one server."""

    def __init__(self, vault: Vault, environ: Mapping[str, str], *, clock: Callable[[], float] = time.time,
                 verify: Any = True) -> None:
        self.vault = vault
        self.environ = environ
        self.clock = clock
        self.verify = verify  # TLS verification for the provider's token endpoint (a test may pass its CA)
        self._flows: dict[str, PendingFlow] = {}
        self._locks: dict[int, anyio.Lock] = {}
        self.refreshes = 0  # refresh requests sent (for the start-up log and tests)

    def client_value(self, skill_id: int, name: str | None) -> str | None:
        if not name:
            return None
        return self.environ.get(name) or self.vault.get(skill_id, name)

    def start(self, skill_id: int, link_id: str, auth: Mapping[str, Any], redirect_uri: str) -> tuple[str, str]:
        """(the provider's authorization URL, the browser-binding value to set as a cookie)."""
        client_id = self.client_value(skill_id, auth["client_id_env"])
        if not client_id:
            raise OAuthFlowError(f"The client id ({auth['client_id_env']}) is not set.")
        now = self.clock()
        for stale in [k for k, f in self._flows.items() if f.expires_at < now]:
            del self._flows[stale]
        verifier = secrets.token_urlsafe(48)
        flow = PendingFlow(state=secrets.token_urlsafe(24), browser=secrets.token_urlsafe(24), verifier=verifier,
                           skill_id=skill_id, link_id=link_id, redirect_uri=redirect_uri, expires_at=now + FLOW_TTL_S)
        self._flows[flow.state] = flow
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                 "state": flow.state, "code_challenge": challenge, "code_challenge_method": "S256"}
        if auth.get("scopes"):
            query["scope"] = " ".join(auth["scopes"])
        if isinstance(auth.get("extra_params"), dict):
            query.update({str(k): str(v) for k, v in auth["extra_params"].items()})
        sep = "&" if urllib.parse.urlsplit(auth["auth_url"]).query else "?"
        return auth["auth_url"] + sep + urllib.parse.urlencode(query, quote_via=urllib.parse.quote), flow.browser

    def take_flow(self, state: str, browser: str) -> PendingFlow:
        """The pending flow of `state`, if this browser started it (spent either way)."""
        flow = self._flows.pop(state, None)
        if flow is None or flow.expires_at < self.clock():
            raise OAuthFlowError("This sign-in is unknown or older than 10 minutes; open a new link.")
        if not secrets.compare_digest(flow.browser.encode(), browser.encode()):
            raise OAuthFlowError("This sign-in was started in another browser; open the link again here.")
        return flow

    async def finish(self, flow: PendingFlow, code: str, auth: Mapping[str, Any]) -> None:
        """Exchange the code and store the tokens in the skill's vault."""
        tokens = await self._token_request(flow.skill_id, auth, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": flow.redirect_uri,
            "code_verifier": flow.verifier})
        await anyio.to_thread.run_sync(self._store, flow.skill_id, tokens, None)
        log.info("connected skill %d to its OAuth provider", flow.skill_id)

    def _store(self, skill_id: int, tokens: dict[str, Any], previous: dict[str, Any] | None) -> None:
        expires_in = tokens.get("expires_in")
        record = {"access_token": tokens["access_token"],
                  "refresh_token": tokens.get("refresh_token") or (previous or {}).get("refresh_token"),
                  "expires_at": self.clock() + float(expires_in) if isinstance(expires_in, int | float) else None,
                  "scope": tokens.get("scope")}
        self.vault.set(skill_id, OAUTH_TOKEN_ENTRY, json.dumps(record))

    async def ensure_fresh(self, skill_id: int, auth: Mapping[str, Any] | None) -> None:
        """Refresh the skill's access token if it expires soon; drop it if the provider refuses."""
        if not auth or auth.get("type") != "oauth2":
            return
        lock = self._locks.setdefault(skill_id, anyio.Lock())
        async with lock:
            stored = await anyio.to_thread.run_sync(self.vault.get, skill_id, OAUTH_TOKEN_ENTRY)
            if not stored:
                return
            record = json.loads(stored)
            expires_at = record.get("expires_at")
            if expires_at is None or expires_at - self.clock() > REFRESH_MARGIN_S:
                return
            try:
                if not record.get("refresh_token"):
                    raise OAuthFlowError("the access token expired and there is no refresh token")
                self.refreshes += 1
                tokens = await self._token_request(skill_id, auth, {
                    "grant_type": "refresh_token", "refresh_token": record["refresh_token"]})
            except OAuthFlowError as exc:
                log.warning("skill %d: refreshing its OAuth token failed (%s); it must be connected again",
                            skill_id, exc)
                await anyio.to_thread.run_sync(self.vault.delete, skill_id, OAUTH_TOKEN_ENTRY)
                return
            await anyio.to_thread.run_sync(self._store, skill_id, tokens, record)

    async def _token_request(self, skill_id: int, auth: Mapping[str, Any], form: dict[str, str]) -> dict[str, Any]:
        client_id = await anyio.to_thread.run_sync(self.client_value, skill_id, auth.get("client_id_env"))
        client_secret = await anyio.to_thread.run_sync(self.client_value, skill_id, auth.get("client_secret_env"))
        form = {**form, "client_id": client_id or ""}
        if client_secret:
            form["client_secret"] = client_secret
        try:
            async with httpx2.AsyncClient(timeout=TOKEN_TIMEOUT_S, verify=self.verify, follow_redirects=False) as http:
                response = await http.post(auth["token_url"], data=form, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise OAuthFlowError(f"the token endpoint could not be reached ({type(exc).__name__})") from None
        if len(response.content) > MAX_TOKEN_RESPONSE_BYTES:
            raise OAuthFlowError("the token endpoint's answer is too large")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise OAuthFlowError(f"the token endpoint answered {response.status_code}"
                                 + (f" ({str(error)[:100]})" if error else ""))
        return body
