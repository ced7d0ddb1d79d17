#!/usr/bin/env python3
"""Many client sessions of mixed writes and reads against one server, then a consistency check.

N sessions (half on the 2025-11-25 handshake, half on 2026-07-28) create, update (their own skills
and a few shared "hot" skills at once), delete, search, list and read for S seconds over streamable
HTTP. Then the database is checked against every acknowledged write: lost writes, torn skills
(versions not consecutive; FTS, summary or current embedding missing) and `integrity_check`.

Command (from the repository root)::

    .venv/bin/python bench/concurrency.py --sessions 32 --seconds 120

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.workload import Ledger, ServerProcess, create_hot_skills, process_stats, session, verify  # noqa: E402


async def run(sessions: int, seconds: float, workdir: Path) -> dict:
    ledger = Ledger()
    with ServerProcess(workdir / "concurrency.db", workdir / "server.log") as server:
        hot = await create_hot_skills(server.url, ledger)
        start_stats = process_stats(server.proc.pid)
        deadline = time.monotonic() + seconds
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(sessions):
                tg.start_soon(lambda i=i: session(server.url, ledger, seed=i, hot_ids=hot,
                                                  stop=lambda: time.monotonic() > deadline,
                                                  mode="legacy" if i % 2 else "auto"))
        elapsed = time.monotonic() - started
        end_stats = process_stats(server.proc.pid)
        for _ in range(50):  # a re-embed kicked by the last writes may still be running
            state = verify(server.db_path, ledger)
            if state["torn_skills"] == 0:
                break
            time.sleep(0.2)
        health = server.health()[0]
    return {"sessions": sessions, "seconds": round(elapsed, 1), **ledger.summary(),
            "calls_per_s": round(ledger.calls / elapsed, 1), **state, "health": health,
            "rss_mib": [round(start_stats["rss_kib"] / 1024, 1), round(end_stats["rss_kib"] / 1024, 1)],
            "fds": [start_stats["fds"], end_stats["fds"]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfmcp-concurrency-") as tmp:
        result = anyio.run(run, args.sessions, args.seconds, Path(tmp))
    print(json.dumps(result))
    ok = result["lost_writes"] == 0 and result["torn_skills"] == 0 and result["integrity"] == "ok" \
        and result["generic_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
