"""Transport safety for the HTTP server: public URL, Host allow-list, body bounds, rate limits, login lockout.

Nothing here knows about skills or OAuth. `RequestGuard` is the outermost ASGI middleware of the app
(uvicorn's proxy-header handling sits outside it, and believes X-Forwarded-For only from the
addresses in SELFMCP_TRUSTED_PROXIES, so `scope["client"]` is the real client address):

    RequestGuard          421 for a Host outside the allow-list (DNS rebinding), 413 for a body
      |                   declared too large (64 KiB on the OAuth endpoints), 429 with Retry-After
      |                   when one address calls /register or /authorize too often; logs 401s and
      |                   failed OAuth requests without secrets
      +-- the SDK's app   bearer check, /mcp (its own Origin check and 4 MiB body cap), OAuth routes

It runs first so a request with a foreign Host gets 421 even without a token (in the SDK's app
the bearer check would answer 401 before its own Host check).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from mcp.server.transport_security import TransportSecuritySettings

from selfmcp.errors import error_json

log = logging.getLogger("selfmcp.http")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 4 * 1024 * 1024  # the SDK's own cap on /mcp; nothing we serve needs more
# Paths a wrong Host may still reach: they reveal nothing (a platform's health check may use any Host).
OPEN_PATHS = ("/health", "/")
OAUTH_PATHS = ("/token", "/register", "/revoke", "/authorize")
MCP_PATHS = ("/mcp", "/sse", "/messages")
MAX_OAUTH_BODY_BYTES = 64 * 1024  # a registration is a few hundred bytes
# Per client address: (requests, seconds). Enough for any real client signing in again and again;
# a flood gets 429 long before it can fill the client table or the pending consents.
RATE_LIMITS: dict[str, tuple[int, float]] = {"/register": (30, 600.0), "/authorize": (60, 600.0)}


def parse_trusted_proxies(text: str) -> tuple[str, ...]:
    """SELFMCP_TRUSTED_PROXIES: comma-separated addresses or networks (CIDR); ValueError names a bad entry."""
    entries: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network such as 10.0.0.0/8") from None
        entries.append(item)
    return tuple(entries)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_secure_origin(url: str) -> bool:
    """https, or http to this machine only: what an OAuth issuer may be (RFC 8414, as the SDK checks)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.scheme == "http" and is_loopback(parts.hostname or "")


def normalize_public_url(text: str) -> str:
    """`https://host[:port][/prefix]` without a trailing slash; ValueError with the reason otherwise."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL such as https://mcp.example.com")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    if parts.path:
        raise ValueError(f"{text!r} must not have a path: the server serves /mcp and OAuth at the root")
    return url


def replit_public_url(domains: str | None, dev_domain: str | None) -> str | None:
    """`https://<first REPLIT_DOMAINS entry>` (deployments and workspace), else REPLIT_DEV_DOMAIN."""
    for candidate in [*(domains or "").split(","), dev_domain or ""]:
        if candidate.strip():
            return f"https://{candidate.strip()}"
    return None


def default_public_url(bind_host: str, port: int) -> str:
    """The URL a client on this machine uses when no public URL is configured."""
    host = bind_host.strip("[]")
    if host in ("", "0.0.0.0", "::") or not is_loopback(host) and not _is_ip(host):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_host(value: str) -> tuple[str, int | None]:
    """`example.com:8000` -> ("example.com", 8000); `[::1]:80` -> ("::1", 80); bad port -> ("", None)."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""
    if not port_text:
        return host, None
    if not port_text.isdigit():
        return "", None
    return host, int(port_text)


class HostAllowList:
    """Host header values this server answers to: loopback, the public URL's host, configured extras.

    An entry without a port allows any port; `host:port` allows that port only.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries: list[tuple[str, int | None]] = []
        for entry in entries:
            host, port = _split_host(entry)
            if host and (host, port) not in self.entries and (host, None) not in self.entries:
                self.entries.append((host, port))

    @classmethod
    def for_server(cls, bind_host: str, public_url: str, extra: Iterable[str] = ()) -> HostAllowList:
        entries = [*LOOPBACK_HOSTS, urlsplit(public_url).netloc, *extra]
        bind = bind_host.strip("[]")
        if bind not in ("", "0.0.0.0", "::"):
            entries.append(f"[{bind}]" if ":" in bind else bind)  # an explicit bind address is no rebinding vector
        return cls(entries)

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host, port = _split_host(host_header)
        return any(host == h and (p is None or p == port) for h, p in self.entries) if host else False

    def describe(self) -> str:
        return ", ".join(f"[{h}]" if ":" in h else h if p is None else f"{h}:{p}" for h, p in self.entries)

    def transport_security(self) -> TransportSecuritySettings:
        """The SDK's settings for the same list (its Host check agrees; it adds the Origin check)."""
        hosts: list[str] = []
        origins: list[str] = []
        for host, port in self.entries:
            name = f"[{host}]" if ":" in host else host
            hosts += [name, f"{name}:*"] if port is None else [f"{name}:{port}"]
            for scheme in ("http", "https"):
                origins += [f"{scheme}://{name}", f"{scheme}://{name}:*"] if port is None \
                    else [f"{scheme}://{name}:{port}"]
        return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                         allowed_origins=origins)


async def _send_json(send: Callable[..., Any], status: int, body: bytes,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra_headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _buffered(receive: Callable[..., Any], limit: int) -> Callable[..., Any] | None:
    """A receive callable replaying the whole request body, or None when it is longer than `limit`."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            break
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await receive()

    return replay


class RateLimiter:
    """At most `limit` events per `window_s` seconds per key; memory bounded by `max_tracked` keys."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_tracked = max_tracked
        self._events: dict[str, deque[float]] = {}

    def hit(self, key: str) -> float:
        """Count one event for `key`: 0 when allowed, else the seconds until it would be."""
        now = self.clock()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_tracked:
                self._prune(now)
            events = self._events[key] = deque()
        while events and now - events[0] >= self.window_s:
            events.popleft()
        if len(events) >= self.limit:
            return max(1.0, events[0] + self.window_s - now)
        events.append(now)
        return 0.0

    def _prune(self, now: float) -> None:
        self._events = {k: v for k, v in self._events.items() if v and now - v[-1] < self.window_s}
        while len(self._events) >= self.max_tracked:  # all recent: forget the oldest keys
            del self._events[next(iter(self._events))]


class RequestGuard:
    """Outermost ASGI middleware: Host allow-list (421), body size (413), rate limits (429), auth-failure logging."""

    def __init__(self, app: Any, hosts: HostAllowList, max_body_bytes: int = MAX_BODY_BYTES, *,
                 rate_limits: dict[str, tuple[int, float]] | None = None, proxies_trusted: bool = False) -> None:
        self.app = app
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes
        self.limiters = {path: RateLimiter(n, window) for path, (n, window) in
                         (RATE_LIMITS if rate_limits is None else rate_limits).items()}
        self.proxies_trusted = proxies_trusted
        self._proxy_hint_given = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        client = (scope.get("client") or ("unknown",))[0]
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.hosts.allows(host) and not (path in OPEN_PATHS and scope.get("method") == "GET"):
            log.warning("refused a request for %s from %s: Host %r is not allowed", path, client, host[:100])
            await _send_json(send, 421, error_json(
                "host_not_allowed", "This server does not answer to that Host header.",
                "Connect through SELFMCP_PUBLIC_URL, or add the host to SELFMCP_ALLOWED_HOSTS."))
            return
        if b"x-forwarded-for" in headers and not self.proxies_trusted and not self._proxy_hint_given:
            self._proxy_hint_given = True
            log.info("requests from %s carry X-Forwarded-For, which is ignored: if %s is your reverse proxy, set "
                     "SELFMCP_TRUSTED_PROXIES=%s so that sign-in lockouts and rate limits see real addresses",
                     client, client, client)
        length = headers.get(b"content-length", b"")
        limit = MAX_OAUTH_BODY_BYTES if path in OAUTH_PATHS else self.max_body_bytes
        if length.isdigit() and int(length) > limit:
            await _send_json(send, 413, error_json(
                "body_too_large", f"The request body is larger than {limit} bytes.",
                "Send a smaller request: skill bodies are at most 256 KiB and params at most 1 MiB."))
            return
        limiter = self.limiters.get(path)
        if limiter is not None and scope.get("method") != "OPTIONS":
            wait = limiter.hit(client)
            if wait:
                log.warning("rate limit: %s called %s more than %d times in %d s", client, path, limiter.limit,
                            limiter.window_s)
                await _send_json(send, 429, error_json(
                    "rate_limited", f"Too many requests to {path} from this address.",
                    f"Wait {int(wait) + 1} seconds before trying again."),
                    extra_headers=[(b"retry-after", str(int(wait) + 1).encode())])
                return
        if path in OAUTH_PATHS:
            receive = await _buffered(receive, MAX_OAUTH_BODY_BYTES)
            if receive is None:
                await _send_json(send, 413, error_json(
                    "body_too_large", f"The request body is larger than {MAX_OAUTH_BODY_BYTES} bytes.",
                    "OAuth requests are small: send only the fields the endpoint needs."))
                return
        if not (path.startswith(MCP_PATHS) or path in OAUTH_PATHS):
            await self.app(scope, receive, send)
            return

        has_token = headers.get(b"authorization", b"").lower().startswith(b"bearer ")

        async def watching_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                _log_failure(path, scope.get("method", ""), client, message["status"], has_token)
            await send(message)

        await self.app(scope, receive, watching_send)


def _log_failure(path: str, method: str, client: str, status: int, has_token: bool) -> None:
    # Never the token itself: only whether one was sent.
    if path in OAUTH_PATHS:
        if status >= 400:
            log.warning("OAuth %s %s from %s failed with %d", method, path, client, status)
    elif status == 401 and has_token:
        log.warning("rejected a bearer token (unknown, expired or revoked) for %s %s from %s", method, path, client)
    elif status == 401:
        log.info("asked %s for a bearer token (%s %s)", client, method, path)


class LoginLimiter:
    """Failed-password counting per client address: `max_failures` within `lockout_s` lock it for `lockout_s`."""

    def __init__(self, max_failures: int = 5, lockout_s: float = 15 * 60, *,
                 clock: Callable[[], float] = time.monotonic, max_tracked: int = 10_000) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self.max_tracked = max_tracked
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked_for(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it is not locked."""
        remaining = self._locked_until.get(key, 0.0) - self.clock()
        if remaining <= 0:
            self._locked_until.pop(key, None)
            return 0.0
        return remaining

    def record_failure(self, key: str) -> int:
        """Count a wrong password; return the failures within the window (locks at max_failures)."""
        now = self.clock()
        recent = [t for t in self._failures.get(key, []) if now - t < self.lockout_s] + [now]
        self._failures[key] = recent
        if len(recent) >= self.max_failures:
            self._locked_until[key] = now + self.lockout_s
            self._failures.pop(key)
        self._prune(now)
        return len(recent)

    def record_success(self, key: str) -> None:
        self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        if len(self._failures) + len(self._locked_until) <= self.max_tracked:
            return
        self._failures = {k: v for k, v in self._failures.items() if now - v[-1] < self.lockout_s}
        self._locked_until = {k: v for k, v in self._locked_until.items() if v > now}
