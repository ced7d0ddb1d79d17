"""Whether a server is serving a database file: an advisory lock beside it, held while the server runs.

A server takes a shared `flock` on `<database>.serving` for its whole life (several servers may serve
one file); the kernel drops it when the process ends, however it ends, so a crash leaves no stale
state. `selfmcp restore` takes the lock exclusively without waiting: if that fails, a server holds the
database. While the restore holds it, a server that starts waits for it to finish.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class ServerRunning(RuntimeError):
    """A server holds the database."""


def lock_path(db_path: str | os.PathLike[str]) -> Path:
    return Path(str(db_path) + ".serving")


def hold_while_serving(db_path: str | os.PathLike[str]) -> IO[bytes] | None:
    """Take the shared lock (waiting for a restore to finish); keep the returned file open while serving."""
    if str(db_path) == ":memory:":
        return None
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "ab")  # noqa: SIM115 - held until the process ends
    fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


def server_running(db_path: str | os.PathLike[str]) -> bool:
    """True while any process holds the database's serving lock."""
    if not lock_path(db_path).exists():
        return False
    try:
        with exclusive(db_path):
            return False
    except ServerRunning:
        return True


@contextlib.contextmanager
def exclusive(db_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock exclusively (no server can start meanwhile); ServerRunning if a server holds it."""
    path = lock_path(db_path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServerRunning(f"A server is serving {db_path}.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
