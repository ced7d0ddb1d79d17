#!/usr/bin/env python3
"""kill -9 the server during write bursts, round after round; no acknowledged write may be lost.

Each round starts server.py on the same database, runs four writing sessions until a random number of
further writes (10-80) is acknowledged, then kills the whole process group with SIGKILL. After each
kill the database is checked against every write acknowledged so far (lost writes, integrity_check);
after the last, the server starts once more and every skill must be whole again (versions
consecutive, FTS, summary and current embedding present).

Command (from the repository root)::

    .venv/bin/python bench/crash.py --rounds 30

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.workload import Ledger, ServerProcess, verify, write_until_killed  # noqa: E402


async def run(rounds: int, workdir: Path, seed: int) -> dict:
    rng = random.Random(seed)
    ledger = Ledger()
    server = ServerProcess(workdir / "crash.db", workdir / "server.log")
    lost = torn_rounds = 0
    integrity = []
    try:
        for round_ in range(rounds):
            server.start()
            await write_until_killed(server, ledger, rng.randint(10, 80), seed=round_ * 100)
            state = verify(server.db_path, ledger)
            lost = max(lost, state["lost_writes"])
            integrity.append(state["integrity"])
            if state["lost_writes"]:
                print(f"round {round_}: lost {state['lost_examples']}", file=sys.stderr)
        server.start()
        for _ in range(100):
            final = verify(server.db_path, ledger)
            if final["torn_skills"] == 0:
                break
            time.sleep(0.1)
        torn_rounds = final["torn_skills"]
    finally:
        server.stop()
    return {"rounds": rounds, **ledger.summary(), "lost_writes": lost, "torn_skills_after_restart": torn_rounds,
            "torn_examples": final["torn_examples"], "integrity_ok_rounds": integrity.count("ok"),
            "skills": final["skills"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfmcp-crash-") as tmp:
        result = anyio.run(run, args.rounds, Path(tmp), args.seed)
    print(json.dumps(result))
    ok = result["lost_writes"] == 0 and result["torn_skills_after_restart"] == 0 \
        and result["integrity_ok_rounds"] == args.rounds
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
