"""The built-in OAuth 2.1 authorization server that lets remote clients (Claude.ai) connect.

`OAuthProvider` implements the SDK's authorization-server provider interface; the SDK serves the
metadata, /register, /authorize (PKCE S256 required), /token and /revoke around it. `authorize()`
sends the browser to the consent page (consent.py), where the owner approves the client with the
owner password; `approve()` then issues a one-time code.

Storage is the skills SQLite file (tables from the m003_oauth_server migration in db.py): clients, codes and tokens survive
restarts. Codes and tokens are stored as SHA-256 hashes, the owner password as a salted scrypt hash.
Lifetimes: codes 5 minutes, access tokens 1 hour, refresh tokens 30 days. Refresh tokens rotate;
presenting a rotated one again revokes its whole grant (it was copied).

Abuse is bounded here as well as by the per-address rate limits of http_security: a registration
is at most MAX_CLIENT_METADATA_BYTES stored, at most MAX_CLIENTS clients exist (when full, the
oldest never-used client older than the consent lifetime makes room; if none can, registration
answers 400, never 500), and a pending consent that a browser has opened belongs to that browser
(its cookie) and is never evicted by newer /authorize requests; only unopened ones are.

`PublicRevocation` replaces the SDK's /revoke handler, which demands a client_secret field even
from a public client (token_endpoint_auth_method "none") and so could not revoke its tokens.

`RemoteAuth` picks the mode (oauth, token, none) and gives MCPServer its arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import db
from selfmcp.remote import cimd
from selfmcp.remote.http_security import is_loopback

log = logging.getLogger("selfmcp.oauth")

AUTH_MODES = ("oauth", "token", "none")
CODE_TTL_S = 5 * 60
ACCESS_TOKEN_TTL_S = 60 * 60
REFRESH_TOKEN_TTL_S = 30 * 24 * 60 * 60
CONSENT_TTL_S = 10 * 60
STATIC_TOKEN_CLIENT_ID = "selfmcp-auth-token"
MAX_CLIENTS = 1000
MAX_CLIENT_METADATA_BYTES = 8 * 1024
MAX_PENDING_CONSENTS = 1000  # unopened ones; the oldest makes room for a new one
MAX_OPENED_CONSENTS = 1000  # opened in a browser: never evicted, a new one waits for room
UNUSED_CLIENT_TTL_S = 24 * 60 * 60
# scrypt at N=2**14, r=8 (16 MiB, ~50 ms): slow enough against guessing a leaked hash offline.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
UNSAFE_REDIRECT_SCHEMES = ("javascript", "data", "file", "vbscript", "about", "blob")


# ------------------------------------------------------------------------------ secrets

def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash: `scrypt$N$r$p$salt$hash` (base64)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password()` result, compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except ValueError:
        log.error("the stored owner password hash is malformed; reset it with --reset-owner-password")
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_owner_password() -> str:
    return secrets.token_urlsafe(18)


def ensure_owner_password(database: db.Database | Path) -> str | None:
    """Create the owner password on first start; return it then (to print once), None afterwards."""
    database = db.Database.of(database)
    with database.read() as conn:
        if conn.execute("select 1 from oauth_owner where id = 1").fetchone():
            return None
    password = new_owner_password()
    with database.write() as conn:
        cursor = conn.execute("""
            insert or ignore into oauth_owner (id, password_hash, created_at)
            values (1, ?, ?)
        """, (hash_password(password), _now_text()))
        return password if cursor.rowcount else None


def reset_owner_password(database: db.Database | Path) -> str:
    """Replace the stored owner password with a new one and sign every OAuth client out; return it."""
    password = new_owner_password()
    with db.Database.of(database).write() as conn:
        conn.execute("""
            insert or replace into oauth_owner (id, password_hash, created_at)
            values (1, ?, ?)
        """, (hash_password(password), _now_text()))
        conn.execute("delete from oauth_tokens")
        conn.execute("delete from oauth_codes")
    return password


def list_clients(database: db.Database | Path) -> list[dict[str, Any]]:
    """Registered OAuth clients, newest first: id, name, redirect URIs, when registered and last used (epoch
    seconds or None), and how many unexpired tokens they hold."""
    with db.Database.of(database).read() as conn:
        rows = conn.execute("""
            select c.client_id, c.info_json, c.created_at, c.last_used_at,
                (select count(*) from oauth_tokens t where t.client_id = c.client_id and t.expires_at >= ?) as tokens
            from oauth_clients c
            order by c.created_at desc, c.client_id
        """, (int(time.time()),)).fetchall()
    out = []
    for row in rows:
        info = json.loads(row["info_json"])
        out.append({"client_id": row["client_id"], "client_name": info.get("client_name"),
                    "redirect_uris": [str(u) for u in info.get("redirect_uris") or []],
                    "created_at": row["created_at"], "last_used_at": row["last_used_at"], "tokens": row["tokens"]})
    return out


def revoke_client(database: db.Database | Path, client_id: str) -> bool:
    """Delete an OAuth client with its codes and tokens (it must register and be approved again); False if unknown."""
    with db.Database.of(database).write() as conn:
        conn.execute("delete from oauth_tokens where client_id = ?", (client_id,))
        conn.execute("delete from oauth_codes where client_id = ?", (client_id,))
        return conn.execute("delete from oauth_clients where client_id = ?", (client_id,)).rowcount > 0


def _canonical_url(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/")


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in UNSAFE_REDIRECT_SCHEMES or parts.fragment:
        raise RegistrationError("invalid_redirect_uri", f"Redirect URI {uri!r} is not allowed.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # user@host shows a misleading name first (claude.ai@evil.example goes to evil.example).
        raise RegistrationError("invalid_redirect_uri", f"Redirect URI {uri!r} must not contain user information.")
    if scheme == "http" and not is_loopback(parts.hostname or ""):
        raise RegistrationError("invalid_redirect_uri",
                                f"Redirect URI {uri!r} must use https (plain http only on localhost).")


# ------------------------------------------------------------------------------ provider

class StoredAccessToken(AccessToken):
    grant_id: str | None = None


class StoredRefreshToken(RefreshToken):
    grant_id: str


@dataclass
class ConsentRequest:
    """An /authorize request waiting for the owner on the consent page (kept in memory)."""

    id: str
    csrf: str
    client: OAuthClientInformationFull
    params: AuthorizationParams
    expires_at: float
    opened: bool = False  # shown in a browser, which holds the csrf value in a cookie

    @property
    def redirect_host(self) -> str:
        """Where the browser goes back to: the real host (and port), never the user information before an @."""
        parts = urlsplit(str(self.params.redirect_uri))
        if not parts.hostname:
            return f"{parts.scheme}:"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{parts.port}" if parts.port else host


class OAuthProvider:
    """The SDK's OAuthAuthorizationServerProvider, backed by the program's SQLite `Database`."""

    def __init__(self, database: db.Database | Path, *, issuer_url: str, resource_url: str, static_token: str | None = None,
                 owner_password: str | None = None, clock: Callable[[], float] = time.time,
                 cimd_resolver: cimd.ClientMetadataResolver | None = None) -> None:
        self.db = db.Database.of(database)
        self.issuer_url = issuer_url
        self.resource_url = resource_url
        self.static_token = static_token
        # A password from the environment is hashed in memory only; otherwise the stored hash is used.
        self._env_password_hash = hash_password(owner_password) if owner_password else None
        self.clock = clock
        self.cimd = cimd_resolver  # client ids that are https URLs of client metadata documents
        self._consents: dict[str, ConsentRequest] = {}
        # Each scrypt check takes 16 MiB: at most two at once, however many forms arrive.
        self._password_checks = anyio.CapacityLimiter(2)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(partial(fn, *args))

    # -- clients

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if self.cimd is not None and cimd.is_metadata_url(client_id):
            client = await self.cimd.client(client_id)
            if client is not None:  # codes and tokens refer to a client row
                await self._run(self._remember_client, client)
            return client
        return await self._run(self._get_client, client_id)

    def _remember_client(self, client: OAuthClientInformationFull) -> None:
        with self.db.write() as conn:
            conn.execute("""
                insert into oauth_clients (client_id, info_json, created_at)
                values (?, ?, ?)
                on conflict(client_id) do update set info_json = excluded.info_json
            """, (client.client_id, client.model_dump_json(exclude_none=True), int(self.clock())))

    def _get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        with self.db.read() as conn:
            row = conn.execute("select info_json from oauth_clients where client_id = ?", (client_id,)).fetchone()
        return OAuthClientInformationFull.model_validate_json(row["info_json"]) if row else None

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        if client_info.client_name and len(client_info.client_name) > 200:
            raise RegistrationError("invalid_client_metadata", "client_name is longer than 200 characters.")
        uris = [str(u) for u in client_info.redirect_uris or []]
        if not uris or len(uris) > 10 or any(len(u) > 2000 for u in uris):
            raise RegistrationError("invalid_redirect_uri", "Register 1 to 10 redirect URIs of up to 2000 characters.")
        for uri in uris:
            _check_redirect_uri(uri)
        size = len(client_info.model_dump_json(exclude_none=True).encode())
        if size > MAX_CLIENT_METADATA_BYTES:
            raise RegistrationError("invalid_client_metadata", f"The client metadata is {size} bytes; at most "
                                    f"{MAX_CLIENT_METADATA_BYTES} are kept.")
        if not await self._run(self._register_client, client_info):
            # Raised here, not inside the transaction: RegistrationError is a frozen dataclass, and a
            # context manager's exit cannot set its __traceback__ (that was a 500).
            raise RegistrationError("invalid_client_metadata",
                                    f"Too many clients registered in the last {CONSENT_TTL_S // 60} minutes; "
                                    "try again later.")
        log.info("registered OAuth client %s (%r)", client_info.client_id, client_info.client_name)

    def _register_client(self, client_info: OAuthClientInformationFull) -> bool:
        """Store the client; False when the table is full of clients too recent to forget."""
        now = int(self.clock())
        with self.db.write() as conn:
            self._purge(conn, now)
            count = conn.execute("select count(*) from oauth_clients").fetchone()[0]
            if count >= MAX_CLIENTS:
                # Make room by forgetting never-used clients whose sign-in has certainly lapsed.
                conn.execute("""
                    delete from oauth_clients
                    where client_id in (
                        select client_id
                        from oauth_clients
                        where last_used_at is null
                          and created_at < ?
                        order by created_at
                        limit ?
                    )
                """, (now - CONSENT_TTL_S, count - MAX_CLIENTS + 1))
                count = conn.execute("select count(*) from oauth_clients").fetchone()[0]
            if count >= MAX_CLIENTS:
                return False
            conn.execute("""
                insert into oauth_clients (client_id, info_json, created_at)
                values (?, ?, ?)
            """, (client_info.client_id, client_info.model_dump_json(exclude_none=True), now))
        return True

    def _purge(self, conn: sqlite3.Connection, now: int) -> None:
        """Drop expired codes and tokens, and clients registered a day ago that never got a token."""
        conn.execute("delete from oauth_codes where expires_at < ?", (now,))
        conn.execute("delete from oauth_tokens where expires_at < ?", (now,))
        conn.execute("""
            delete from oauth_clients
            where last_used_at is null
              and created_at < ?
        """, (now - UNUSED_CLIENT_TTL_S,))

    # -- authorization (the consent page completes it)

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.resource is not None and not self._is_our_resource(params.resource):
            raise AuthorizeError("invalid_target", f"This server is {self.resource_url}, not {params.resource}.")
        now = self.clock()
        for stale in [k for k, c in self._consents.items() if c.expires_at < now]:
            del self._consents[stale]
        unopened = [k for k, c in self._consents.items() if not c.opened]
        # Only requests no browser has opened are evicted: a flood cannot push out the owner's.
        for key in unopened[:max(0, len(unopened) - MAX_PENDING_CONSENTS + 1)]:
            del self._consents[key]
        request = ConsentRequest(id=secrets.token_urlsafe(24), csrf=secrets.token_urlsafe(32), client=client,
                                 params=params, expires_at=now + CONSENT_TTL_S)
        self._consents[request.id] = request
        return f"{self.issuer_url}/consent?request={request.id}"

    def _is_our_resource(self, resource: str) -> bool:
        wanted = _canonical_url(resource)
        return wanted in (_canonical_url(self.resource_url), _canonical_url(self.issuer_url))

    def consent_request(self, request_id: str) -> ConsentRequest | None:
        request = self._consents.get(request_id)
        if request is None or request.expires_at < self.clock():
            return None
        return request

    def open_consent(self, request: ConsentRequest) -> bool:
        """Mark `request` as opened by the browser that now gets its cookie; False when too many are open."""
        if request.opened:
            return True
        if sum(1 for c in self._consents.values() if c.opened) >= MAX_OPENED_CONSENTS:
            return False
        request.opened = True
        return True

    async def check_owner_password(self, password: str) -> bool:
        stored = self._env_password_hash or await self._run(self._stored_password_hash)
        if stored is None:
            log.error("no owner password is set up; restart the server or set SELFMCP_OWNER_PASSWORD")
            return False
        return await anyio.to_thread.run_sync(verify_password, password, stored, limiter=self._password_checks)

    def has_owner_password(self) -> bool:
        """Whether an owner password exists (SELFMCP_OWNER_PASSWORD, or the stored one); blocking."""
        return self._env_password_hash is not None or self._stored_password_hash() is not None

    def _stored_password_hash(self) -> str | None:
        with self.db.read() as conn:
            row = conn.execute("select password_hash from oauth_owner where id = 1").fetchone()
        return row["password_hash"] if row else None

    async def approve(self, request: ConsentRequest) -> str:
        """Issue the authorization code for an approved consent; return the client redirect URL."""
        self._consents.pop(request.id, None)
        code = secrets.token_urlsafe(32)
        await self._run(self._store_code, code, request)
        log.info("the owner approved OAuth client %s (%r, redirect %s)", request.client.client_id,
                 request.client.client_name, request.redirect_host)
        return construct_redirect_uri(str(request.params.redirect_uri), code=code, state=request.params.state)

    def deny(self, request: ConsentRequest) -> str:
        self._consents.pop(request.id, None)
        log.info("the owner denied OAuth client %s (%r)", request.client.client_id, request.client.client_name)
        return construct_redirect_uri(str(request.params.redirect_uri), error="access_denied",
                                      error_description="The owner denied access.", state=request.params.state)

    def _store_code(self, code: str, request: ConsentRequest) -> None:
        params = request.params
        data = {"scopes": params.scopes or [], "code_challenge": params.code_challenge,
                "redirect_uri": str(params.redirect_uri),
                "redirect_uri_provided_explicitly": params.redirect_uri_provided_explicitly,
                "resource": params.resource}
        with self.db.write() as conn:
            conn.execute("""
                insert into oauth_codes (code_hash, client_id, grant_id, data_json, expires_at)
                values (?, ?, ?, ?, ?)
            """, (_token_hash(code), request.client.client_id, secrets.token_hex(16), json.dumps(data),
                  self.clock() + CODE_TTL_S))

    async def load_authorization_code(self, client: OAuthClientInformationFull,
                                      authorization_code: str) -> AuthorizationCode | None:
        return await self._run(self._load_code, client.client_id, authorization_code)

    def _load_code(self, client_id: str, code: str) -> AuthorizationCode | None:
        with self.db.write() as conn:
            row = conn.execute("""
                select grant_id, data_json, expires_at, used_at
                from oauth_codes
                where code_hash = ?
                  and client_id = ?
            """, (_token_hash(code), client_id)).fetchone()
            if row is None:
                return None
            if row["used_at"] is not None:
                # A code presented twice was intercepted: revoke what the first use obtained.
                conn.execute("delete from oauth_tokens where grant_id = ?", (row["grant_id"],))
                log.warning("an authorization code of client %s was used twice; its tokens are revoked", client_id)
                return None
        return AuthorizationCode(code=code, client_id=client_id, expires_at=row["expires_at"],
                                 **json.loads(row["data_json"]))

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: AuthorizationCode) -> OAuthToken:
        token = await self._run(self._exchange_code, client.client_id, authorization_code)
        if token is None:  # raised outside the transaction: see register_client
            raise TokenError("invalid_grant", "The authorization code was already used.")
        return token

    def _exchange_code(self, client_id: str, code: AuthorizationCode) -> OAuthToken | None:
        now = int(self.clock())
        with self.db.write() as conn:
            row = conn.execute("""
                select grant_id
                from oauth_codes
                where code_hash = ?
                  and used_at is null
            """, (_token_hash(code.code),)).fetchone()
            if row is None:
                return None
            conn.execute("update oauth_codes set used_at = ? where code_hash = ?", (now, _token_hash(code.code)))
            conn.execute("update oauth_clients set last_used_at = ? where client_id = ?", (now, client_id))
            return self._issue(conn, client_id, row["grant_id"], code.scopes, code.resource, now)

    def _issue(self, conn: sqlite3.Connection, client_id: str, grant_id: str, scopes: list[str],
               resource: str | None, now: int) -> OAuthToken:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        for token, kind, ttl in ((access, "access", ACCESS_TOKEN_TTL_S), (refresh, "refresh", REFRESH_TOKEN_TTL_S)):
            conn.execute("""
                insert into oauth_tokens (token_hash, kind, client_id, grant_id, scopes, resource, expires_at,
                                          created_at)
                values (?, ?, ?, ?, ?, ?, ?, ?)
            """, (_token_hash(token), kind, client_id, grant_id, " ".join(scopes), resource, now + ttl, now))
        return OAuthToken(access_token=access, expires_in=ACCESS_TOKEN_TTL_S, refresh_token=refresh,
                          scope=" ".join(scopes) or None)

    # -- refresh, access, revocation

    async def load_refresh_token(self, client: OAuthClientInformationFull,
                                 refresh_token: str) -> StoredRefreshToken | None:
        return await self._run(self._load_refresh, client.client_id, refresh_token)

    def _load_refresh(self, client_id: str, token: str) -> StoredRefreshToken | None:
        with self.db.write() as conn:
            row = self._token_row(conn, token, "refresh")
            if row is None or row["client_id"] != client_id:
                return None
            if row["rotated_at"] is not None:
                conn.execute("delete from oauth_tokens where grant_id = ?", (row["grant_id"],))
                log.warning("a replaced refresh token of client %s was presented again; its grant is revoked",
                            client_id)
                return None
        return StoredRefreshToken(token=token, client_id=client_id, scopes=row["scopes"].split(),
                                  expires_at=row["expires_at"], resource=row["resource"], grant_id=row["grant_id"])

    def _token_row(self, conn: sqlite3.Connection, token: str, kind: str) -> sqlite3.Row | None:
        return conn.execute("""
            select client_id, grant_id, scopes, resource, expires_at, rotated_at
            from oauth_tokens
            where token_hash = ?
              and kind = ?
        """, (_token_hash(token), kind)).fetchone()

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: StoredRefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        token = await self._run(self._rotate, client.client_id, refresh_token, scopes)
        if token is None:  # raised outside the transaction: see register_client
            raise TokenError("invalid_grant", "The refresh token was already used.")
        return token

    def _rotate(self, client_id: str, old: StoredRefreshToken, scopes: list[str]) -> OAuthToken | None:
        now = int(self.clock())
        with self.db.write() as conn:
            # The rotated token stays (until it expires) so that a replay of it can be recognised.
            cursor = conn.execute("""
                update oauth_tokens
                set rotated_at = ?
                where token_hash = ?
                  and rotated_at is null
            """, (now, _token_hash(old.token)))
            if cursor.rowcount == 0:
                return None
            conn.execute("update oauth_clients set last_used_at = ? where client_id = ?", (now, client_id))
            return self._issue(conn, client_id, old.grant_id, scopes, old.resource, now)

    async def load_access_token(self, token: str) -> StoredAccessToken | None:
        if self.static_token is not None and hmac.compare_digest(token.encode(), self.static_token.encode()):
            return StoredAccessToken(token=token, client_id=STATIC_TOKEN_CLIENT_ID, scopes=[],
                                     resource=self.resource_url)
        return await self._run(self._load_access, token)

    def _load_access(self, token: str) -> StoredAccessToken | None:
        with self.db.read() as conn:
            row = self._token_row(conn, token, "access")
        if row is None or row["expires_at"] < self.clock():
            return None
        return StoredAccessToken(token=token, client_id=row["client_id"], scopes=row["scopes"].split(),
                                 expires_at=row["expires_at"], resource=row["resource"] or self.resource_url,
                                 grant_id=row["grant_id"])

    async def revoke_token(self, token: StoredAccessToken | StoredRefreshToken) -> None:
        """Revoke the whole grant: the access token and its refresh token go together."""
        if token.grant_id is not None:
            await self._run(self._revoke_grant, token.grant_id)
            log.info("revoked an OAuth grant of client %s", token.client_id)

    def _revoke_grant(self, grant_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("delete from oauth_tokens where grant_id = ?", (grant_id,))


class PublicRevocation:
    """RFC 7009 /revoke for every client the SDK authenticates, public clients (no secret) included.

    The client proves itself as at /token; a token of another client is ignored; the answer is 200
    whether or not the token was known (the RFC's rule, so it reveals nothing).
    """

    def __init__(self, provider: OAuthProvider) -> None:
        self.provider = provider
        self.authenticator = ClientAuthenticator(provider)

    async def handle(self, request: Request) -> Response:
        try:
            client = await self.authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            return JSONResponse({"error": "unauthorized_client", "error_description": exc.message}, status_code=401)
        form = await request.form()
        token = form.get("token")
        if not isinstance(token, str) or not token:
            return JSONResponse({"error": "invalid_request", "error_description": "token is required"},
                                status_code=400)
        found: StoredAccessToken | StoredRefreshToken | None = None
        loaders = [self.provider.load_access_token, partial(self.provider.load_refresh_token, client)]
        if form.get("token_type_hint") == "refresh_token":
            loaders.reverse()
        for load in loaders:
            found = await load(token)
            if found is not None:
                break
        if found is not None and found.client_id == client.client_id:
            await self.provider.revoke_token(found)
        return Response(status_code=200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


class StaticTokenVerifier:
    """Token mode: the one SELFMCP_AUTH_TOKEN, compared in constant time."""

    def __init__(self, token: str, resource_url: str) -> None:
        self.token = token
        self.resource_url = resource_url

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return AccessToken(token=token, client_id=STATIC_TOKEN_CLIENT_ID, scopes=[], resource=self.resource_url)
        return None


# ------------------------------------------------------------------------------ assembly

@dataclass
class RemoteAuth:
    """How HTTP clients authenticate: `mode` is oauth, token or none."""

    mode: str
    base_url: str
    resource_url: str
    provider: OAuthProvider | None = None
    verifier: StaticTokenVerifier | None = None
    server_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, mode: str, *, base_url: str, mcp_path: str, database: db.Database | Path, auth_token: str | None,
               owner_password: str | None, cimd_loopback: bool = False) -> RemoteAuth:
        resource_url = base_url + mcp_path
        auth = cls(mode=mode, base_url=base_url, resource_url=resource_url)
        if mode == "none":
            return auth
        # Strings, not AnyHttpUrl: AuthSettings keeps a path-less issuer without a trailing slash.
        settings: dict[str, Any] = {"issuer_url": base_url, "resource_server_url": resource_url,
                                    "validate_token_resource": False}  # the provider binds tokens to this resource
        if mode == "token":
            if not auth_token:
                raise ValueError("token mode needs an auth token")
            auth.verifier = StaticTokenVerifier(auth_token, resource_url)
            auth.server_kwargs = {"token_verifier": auth.verifier, "auth": AuthSettings(**settings)}
            return auth
        auth.provider = OAuthProvider(database, issuer_url=base_url, resource_url=resource_url,
                                      static_token=auth_token, owner_password=owner_password,
                                      cimd_resolver=cimd.ClientMetadataResolver(allow_loopback=cimd_loopback))
        auth.server_kwargs = {"auth_server_provider": auth.provider, "auth": AuthSettings(
            **settings, client_registration_options=ClientRegistrationOptions(enabled=True),
            revocation_options=RevocationOptions(enabled=True))}
        return auth
