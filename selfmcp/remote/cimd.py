"""Client ID Metadata Documents (CIMD): an https URL as an OAuth client_id, its document fetched from there.

The MCP specification (2025-11-25) prefers them to dynamic registration, and Claude uses them when the
authorization-server metadata says `client_id_metadata_document_supported: true` and lists `none` among
`token_endpoint_auth_methods_supported` (mcp 2.3 advertises neither: `advertise()` adds them).

`ClientMetadataResolver.resolve(url)` fetches the document with these bounds, and raises `CIMDError` with
a sentence for the client otherwise:
- https only, with a path; the host must resolve to public addresses only (loopback too when the
  test setting SELFMCP_CIMD_LOOPBACK=1 is on); no redirects;
- at most `MAX_DOCUMENT_BYTES`, within `FETCH_TIMEOUT_S`;
- its `client_id` equals the URL, it lists redirect_uris (the SDK then checks the request's against
  them), and it asks for no client secret (`token_endpoint_auth_method` absent or `none`);
- cached as its Cache-Control says (max-age, capped at a day; no-store/no-cache: not kept), else
  for `DEFAULT_CACHE_S`.

`CIMDGuard` answers an /authorize request with a refused document itself (400, `invalid_client` and
the reason) instead of the SDK's bare "client not found".
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.routes import build_metadata, cors_middleware
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import OAuthClientInformationFull

log = logging.getLogger("selfmcp.cimd")

MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_TIMEOUT_S = 5.0
DEFAULT_CACHE_S = 5 * 60
MAX_CACHE_S = 24 * 60 * 60
METADATA_PATH = "/.well-known/oauth-authorization-server"


class CIMDError(Exception):
    """A client metadata document that cannot be used; the message says why, for the OAuth client."""


def is_metadata_url(client_id: str) -> bool:
    """Whether `client_id` is meant as a metadata document URL (an http(s) URL with a path)."""
    parts = urlsplit(client_id)
    return parts.scheme in ("https", "http") and bool(parts.hostname) and parts.path not in ("", "/")


def _cache_seconds(cache_control: str | None) -> float:
    if not cache_control:
        return DEFAULT_CACHE_S
    value = cache_control.lower()
    if "no-store" in value or "no-cache" in value:
        return 0
    found = re.search(r"max-age\s*=\s*(\d+)", value)
    return min(int(found.group(1)), MAX_CACHE_S) if found else DEFAULT_CACHE_S


class ClientMetadataResolver:
    """Fetches, checks and caches client metadata documents."""

    def __init__(self, *, allow_loopback: bool = False, verify: Any = True, timeout_s: float = FETCH_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allow_loopback = allow_loopback
        self.verify = verify
        self.timeout_s = timeout_s
        self.clock = clock
        self._cache: dict[str, tuple[float, OAuthClientInformationFull]] = {}

    async def client(self, url: str) -> OAuthClientInformationFull | None:
        """The client the document at `url` describes, or None (the reason is logged)."""
        try:
            return await self.resolve(url)
        except CIMDError as exc:
            log.warning("refused the client metadata document %s: %s", url[:200], exc)
            return None

    async def resolve(self, url: str) -> OAuthClientInformationFull:
        cached = self._cache.get(url)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        await self._check_address(url)
        body, cache_control = await self._fetch(url)
        client = self._parse(url, body)
        seconds = _cache_seconds(cache_control)
        if seconds:
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[url] = (self.clock() + seconds, client)
        return client

    async def _check_address(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https":
            raise CIMDError("the client_id URL must use https")
        if parts.fragment or parts.username or parts.password:
            raise CIMDError("the client_id URL must not have a fragment or credentials")
        host = parts.hostname or ""
        try:
            infos = await anyio.getaddrinfo(host, parts.port or 443, proto=6)
        except OSError:
            raise CIMDError(f"the host {host!r} of the client_id URL does not resolve") from None
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address.is_global or (self.allow_loopback and address.is_loopback):
                continue
            raise CIMDError(f"the host {host!r} of the client_id URL is not a public address ({address})")

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        body = bytearray()
        try:
            with anyio.fail_after(self.timeout_s):
                async with httpx2.AsyncClient(verify=self.verify, timeout=self.timeout_s, follow_redirects=False,
                                              trust_env=True) as http:
                    async with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                        if response.status_code != 200:
                            raise CIMDError(f"fetching the client metadata document answered {response.status_code}")
                        async for chunk in response.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_DOCUMENT_BYTES:
                                raise CIMDError(f"the client metadata document is larger than {MAX_DOCUMENT_BYTES} "
                                                "bytes")
                        return bytes(body), response.headers.get("cache-control")
        except TimeoutError:
            raise CIMDError(f"the client metadata document did not arrive within {self.timeout_s:g} s") from None
        except httpx2.HTTPError as exc:
            raise CIMDError(f"the client metadata document could not be fetched ({type(exc).__name__})") from None

    @staticmethod
    def _parse(url: str, body: bytes) -> OAuthClientInformationFull:
        try:
            document = json.loads(body)
        except ValueError:
            raise CIMDError("the client metadata document is not JSON") from None
        if not isinstance(document, dict):
            raise CIMDError("the client metadata document is not a JSON object")
        if document.get("client_id") != url:
            raise CIMDError("the document's client_id differs from the URL it was fetched from")
        if not document.get("redirect_uris"):
            raise CIMDError("the client metadata document lists no redirect_uris")
        method = document.get("token_endpoint_auth_method", "none")
        if method != "none" or "client_secret" in document:
            raise CIMDError(f"token_endpoint_auth_method {method!r} is not supported here; use 'none' (PKCE)")
        fields = {k: v for k, v in document.items() if k in OAuthClientInformationFull.model_fields}
        fields.setdefault("grant_types", ["authorization_code", "refresh_token"])
        try:
            return OAuthClientInformationFull.model_validate({**fields, "token_endpoint_auth_method": "none"})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise CIMDError(f"the client metadata document's {'.'.join(map(str, first['loc']))} is invalid: "
                            f"{first['msg']}") from None


class CIMDGuard:
    """ASGI middleware: GET /authorize with a metadata-document client_id that is refused gets the reason."""

    def __init__(self, app: Any, resolver: ClientMetadataResolver) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/authorize" and scope.get("method") == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            client_id = (query.get("client_id") or [""])[0]
            if is_metadata_url(client_id):
                try:
                    await self.resolver.resolve(client_id)
                except CIMDError as exc:
                    log.warning("refused the client metadata document %s: %s", client_id[:200], exc)
                    response = JSONResponse({"error": "invalid_client", "error_description": str(exc)}, 400,
                                            headers={"Cache-Control": "no-store"})
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def advertise(app: Any, auth: AuthSettings) -> None:
    """Serve authorization-server metadata that says what this server accepts: CIMD, and `none` (PKCE only).

    mcp 2.3 builds the metadata without either (python-sdk#1801); its token endpoint already accepts
    public clients (`token_endpoint_auth_method: none`), so this replaces only the metadata route.
    """
    metadata = build_metadata(auth.issuer_url, auth.service_documentation_url,
                              auth.client_registration_options or ClientRegistrationOptions(),
                              auth.revocation_options or RevocationOptions())
    metadata.client_id_metadata_document_supported = True
    metadata.token_endpoint_auth_methods_supported = [*(metadata.token_endpoint_auth_methods_supported or []), "none"]
    routes = app.router.routes
    for index, route in enumerate(routes):
        if getattr(route, "path", None) == METADATA_PATH:
            endpoint = cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"])
            routes[index] = Route(METADATA_PATH, endpoint=endpoint, methods=["GET", "OPTIONS"])
