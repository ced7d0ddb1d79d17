#!/usr/bin/env python3
"""A long steady load: does the server's memory or file-descriptor count grow?

Four sessions of mixed writes and reads run for N minutes over streamable HTTP while the server's
RSS and open descriptors are sampled every 10 seconds; the registry grows all along. At the end the
database is checked as bench/concurrency.py does.

Command (from the repository root)::

    .venv/bin/python bench/soak.py --minutes 10

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


async def run(minutes: float, sessions: int, workdir: Path) -> dict:
    ledger = Ledger()
    samples: list[dict] = []
    with ServerProcess(workdir / "soak.db", workdir / "server.log") as server:
        hot = await create_hot_skills(server.url, ledger)
        deadline = time.monotonic() + minutes * 60
        done = False

        async def sampler() -> None:
            while not done:
                samples.append({"t": round(time.monotonic() - deadline + minutes * 60), **process_stats(server.proc.pid)})
                await anyio.sleep(10)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            async with anyio.create_task_group() as load:
                for i in range(sessions):
                    load.start_soon(lambda i=i: session(server.url, ledger, seed=i, hot_ids=hot,
                                                       stop=lambda: time.monotonic() > deadline,
                                                       mode="legacy" if i % 2 else "auto"))
            done = True
            samples.append({"t": round(minutes * 60), **process_stats(server.proc.pid)})
            tg.cancel_scope.cancel()
        state = verify(server.db_path, ledger)
    rss = [s["rss_kib"] / 1024 for s in samples]
    fds = [s["fds"] for s in samples]
    return {"minutes": minutes, "sessions": sessions, **ledger.summary(), **state,
            "rss_mib_start": round(rss[0], 1), "rss_mib_end": round(rss[-1], 1), "rss_mib_max": round(max(rss), 1),
            "fds_start": fds[0], "fds_end": fds[-1], "fds_max": max(fds), "samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfmcp-soak-") as tmp:
        result = anyio.run(run, args.minutes, args.sessions, Path(tmp))
    print(json.dumps(result))
    return 0 if result["lost_writes"] == 0 and result["generic_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
