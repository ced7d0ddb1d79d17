"""Background upkeep on a timer: the database file's identity, the write-ahead log, missing vectors.

Every round (`UPKEEP_INTERVAL_S`): if the database file was removed or replaced, say so in the log
(writes are refused meanwhile, see db.Database.problem) and do nothing else; otherwise checkpoint
the write-ahead log (so it stays small even when no write triggers an automatic checkpoint) and start
re-embedding when any active skill lacks a vector of the active model, whatever the reason.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

import db
from selfmcp.search import Search

log = logging.getLogger("selfmcp.upkeep")

UPKEEP_INTERVAL_S = 30.0


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
    """Run `upkeep_round` every `interval_s` seconds in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                upkeep_round(database, search)
            except Exception:  # the loop must outlive one bad round; the traceback is logged
                log.exception("upkeep round failed")

    threading.Thread(target=loop, name="selfmcp-upkeep", daemon=True).start()
    return stop
