#!/usr/bin/env python3
"""Measure skill_execute's overhead over a bare Python spawn, as `mcp_bench.py exec` does.

The server is reached only through MCP over stdio, started the way the shared harness
starts it (a minimal environment, a fresh database, SELFMCP_TRANSPORT=stdio). A skill
printing one line is created and run `--runs` times after `--warmup` calls; the
baseline is `<python> -c 'print(1)'` spawned with subprocess.run, where <python> is this
script's interpreter (as in the harness). The ratio is median execute / median spawn.

`--order blocks` (the harness's order) runs every execute, then every spawn;
`--order interleaved` alternates them, so a change of load on a shared machine hits
both sides alike. `--sandbox` sets SELFMCP_SANDBOX (auto, bwrap, landlock or none).

Command (from the repository root)::

    .venv/bin/python bench/bench_exec.py --sandbox none --runs 30
    .venv/bin/python bench/bench_exec.py --sandbox bwrap --runs 30 --order interleaved

The shared harness's figure, for comparison::

    /tmp/benchvenv/bin/python ../shared/bench/mcp_bench.py --server-cmd "$(pwd)/.venv/bin/python server.py" \\
        --cwd "$(pwd)" --env SELFMCP_SANDBOX=none exec --runs 30

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
MARKER = "selfmcp-bench-exec-ok"
# What the shared harness passes to the server (besides --env and the two SELFMCP_ variables).
PASSED_ENV = ("HOME", "PATH", "USER", "SHELL", "TERM", "LANG", "TMPDIR")


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
            "min_ms": round(ordered[0] * 1000, 3)}


def _spawn(python: str) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", "print(1)"], capture_output=True, check=True)
    return time.perf_counter() - started


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="selfmcp-bench-") as tmp:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update({"SELFMCP_TRANSPORT": "stdio", "SELFMCP_DB_PATH": str(Path(tmp) / "skills.db"),
                    "SELFMCP_SANDBOX": args.sandbox, "SELFMCP_LOG_LEVEL": "WARNING"})
        params = StdioServerParameters(command=args.server_python, args=["server.py"], env=env, cwd=str(args.cwd))
        executes: list[float] = []
        spawns: list[float] = []
        failures = 0
        async with Client(params) as client:
            created = await client.call_tool("skill_create", {
                "name": "bench_exec_echo", "description": "Benchmark helper: prints one fixed line to stdout.",
                "body": f'print("{MARKER}")'})
            skill_id = created.structured_content["id"]
            sandbox = None
            for i in range(args.warmup + args.runs):
                started = time.perf_counter()
                result = await client.call_tool("skill_execute", {"skill_id": skill_id})
                elapsed = time.perf_counter() - started
                out = result.structured_content or {}
                sandbox = out.get("sandbox", sandbox)
                if i < args.warmup:
                    continue
                executes.append(elapsed)
                failures += int(result.is_error or MARKER not in out.get("stdout", ""))
                if args.order == "interleaved":
                    spawns.append(_spawn(args.baseline_python))
        if args.order == "blocks":
            for i in range(args.warmup + args.runs):
                elapsed = _spawn(args.baseline_python)
                if i >= args.warmup:
                    spawns.append(elapsed)
    execute, spawn = _ms(executes), _ms(spawns)
    return {"sandbox": sandbox, "order": args.order, "runs": args.runs, "failures": failures,
            "execute": execute, "bare_spawn": spawn,
            "ratio_p50": round(execute["p50_ms"] / spawn["p50_ms"], 3),
            "overhead_p50_ms": round(execute["p50_ms"] - spawn["p50_ms"], 3),
            "baseline_cmd": [args.baseline_python, "-c", "print(1)"]}


def main() -> int:
    ap = argparse.ArgumentParser(description="skill_execute round trip against a bare Python spawn")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sandbox", choices=("auto", "bwrap", "landlock", "none"), default="none")
    ap.add_argument("--order", choices=("blocks", "interleaved"), default="blocks")
    ap.add_argument("--server-python", default=sys.executable, help="interpreter that runs server.py")
    ap.add_argument("--cwd", type=Path, default=REPO, help="directory holding the server.py to measure")
    ap.add_argument("--baseline-python", default=sys.executable, help="interpreter of the bare spawn")
    args = ap.parse_args()
    report = anyio.run(measure, args)
    print(f"execute p50 {report['execute']['p50_ms']} ms, bare spawn p50 {report['bare_spawn']['p50_ms']} ms, "
          f"ratio {report['ratio_p50']} (sandbox {report['sandbox']}, {report['order']})", file=sys.stderr)
    print(json.dumps(report))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
