"""Background upkeep on a timer (the database file's identity, the write-ahead log, missing vectors), and /health.

Every round (`UPKEEP_INTERVAL_S`): if the database file was removed or replaced, say so in the log
(writes are refused meanwhile, see db.Database.problem) and do nothing else; otherwise checkpoint
the write-ahead log (so it stays small even when no write triggers an automatic checkpoint) and start
re-embedding when any active skill lacks a vector of the active model, whatever the reason.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

from typing import Any

import db
from selfmcp.errors import storage_error
from selfmcp.search import Search
from selfmcp.store import SkillStore

log = logging.getLogger("selfmcp.upkeep")

UPKEEP_INTERVAL_S = 30.0


def health(store: SkillStore) -> tuple[int, dict[str, Any]]:
    """/health: (200, ok and the skill count), or (503, storage_unavailable/storage_full) when writes would fail."""
    try:
        store.db.check()
        with store.read() as tx:
            return 200, {"status": "ok", "skills": tx.count_active()}
    except sqlite3.Error as exc:
        return 503, {"status": "unavailable", **storage_error(exc).payload()}


def upkeep_round(database: db.Database, search: Search) -> threading.Thread | None:
    """One round of upkeep (see the module docstring); the re-embedding thread, if one was started."""
    if database.problem():
        return None
    try:
        database.checkpoint()
        if search.stale_embeddings(limit=1):
            return search.reembed_in_background()
    except sqlite3.Error as exc:
        log.warning("upkeep: %s", exc)
    return None


def start(database: db.Database, search: Search, interval_s: float = UPKEEP_INTERVAL_S) -> threading.Event:
    """Run `upkeep_round` now and then every `interval_s` seconds in a daemon thread; set the returned event
    to stop it. The first round re-embeds what a restart (or a model change) left without a vector."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                upkeep_round(database, search)
            except Exception:  # the loop must outlive one bad round; the traceback is logged
                log.exception("upkeep round failed")
            if stop.wait(interval_s):
                return

    threading.Thread(target=loop, name="selfmcp-upkeep", daemon=True).start()
    return stop
