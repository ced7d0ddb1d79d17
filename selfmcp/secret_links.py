"""Short-lived, single-use links to the page where the user enters a skill's secrets.

A link names one skill; the page (selfmcp/remote/secrets_page.py) reads the skill's auth_config
when it is opened and asks for what is missing. A link lasts `LINK_TTL_S` and is spent by the
first successful save (or OAuth2 connection). `wait()` lets a skill_execute that asked the client
for a URL-mode elicitation resume as soon as the user has saved.

Links live in memory: a restart forgets them, and the next missing_credentials gives a new one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

LINK_TTL_S = 10 * 60
MAX_PENDING_LINKS = 500
PAGE_PATH = "/secrets"


@dataclass
class SecretLink:
    """One pending link: the skill it is for, its CSRF token, whether it was spent."""

    id: str
    skill_id: int
    csrf: str
    expires_at: float
    used: bool = False
    _waiters: list[anyio.Event] = field(default_factory=list, repr=False)


class SecretLinks:
    """The pending links of one server. `base_url` may be set later (stdio serves the page on demand)."""

    def __init__(self, base_url: str | None = None, *, ttl_s: float = LINK_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.base_url = base_url
        self.ttl_s = ttl_s
        self.clock = clock
        self._links: dict[str, SecretLink] = {}
        self._lock = threading.Lock()

    def issue(self, skill_id: int) -> SecretLink:
        now = self.clock()
        link = SecretLink(id=secrets.token_urlsafe(24), skill_id=skill_id, csrf=secrets.token_urlsafe(32),
                          expires_at=now + self.ttl_s)
        with self._lock:
            for stale in [k for k, v in self._links.items() if v.expires_at < now or v.used]:
                del self._links[stale]
            while len(self._links) >= MAX_PENDING_LINKS:
                del self._links[next(iter(self._links))]
            self._links[link.id] = link
        return link

    def offer(self, skill_id: int) -> tuple[SecretLink | None, str | None]:
        """A new link for the skill and its URL; (None, None) while no page is served."""
        if not self.base_url:
            return None, None
        link = self.issue(skill_id)
        return link, self.url(link)

    def url(self, link: SecretLink) -> str | None:
        return f"{self.base_url}{PAGE_PATH}/{link.id}" if self.base_url else None

    def pending(self, link_id: str) -> SecretLink | None:
        """The link if it exists, is unspent and has not expired."""
        with self._lock:
            link = self._links.get(link_id)
        if link is None or link.used or link.expires_at < self.clock():
            return None
        return link

    def complete(self, link: SecretLink) -> None:
        """Spend the link and wake whoever waits for it (call on the event loop)."""
        link.used = True
        for event in link._waiters:
            event.set()

    async def wait(self, link: SecretLink) -> bool:
        """Wait until the link is spent (True) or expires (False)."""
        if link.used:
            return True
        event = anyio.Event()
        link._waiters.append(event)
        with anyio.move_on_after(max(0.0, link.expires_at - self.clock())):
            await event.wait()
        return link.used
