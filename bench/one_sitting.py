#!/usr/bin/env python3
"""Before/after figures in one sitting: the shared harness over several checkouts, interleaved.

Each round runs every subcommand once on every checkout, in turn, so a change of load on a
shared machine falls on all of them alike; the table gives each figure's median over the
rounds (and every round's value). Checkouts are `label=path` (a git worktree of the commit to
measure); the interpreter is the same for all, so only the code differs.

    git worktree add --detach /tmp/before 05b218d
    .venv/bin/python bench/one_sitting.py --rounds 3 before=/tmp/before after=. \\
        --sub "exec --runs 30" --sub "exec --runs 30 @SELFMCP_SANDBOX=none" --sub "startup --runs 5" \\
        --sub "scale --n 10000"

A subcommand may end with `@NAME=VALUE ...`: environment for the server (the harness's --env).
A checkout whose path is a .py file is run as the server itself (`bare=bench/bare_server.py`:
a bare mcp server, for `startup`). Prints the table, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HARNESS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "mcp_bench.py"
# The figures worth a row, per subcommand: (name, path into the harness's JSON).
FIGURES = {
    "exec": [("ratio p50", ("ratio_p50",)), ("execute p50 ms", ("summary", "execute_p50_ms")),
             ("bare spawn p50 ms", ("summary", "bare_spawn_p50_ms"))],
    "startup": [("startup p50 ms", ("summary", "startup_p50_ms"))],
    "scale": [("hybrid p50 ms", ("summary", "search_hybrid_p50_ms")),
              ("create p50 at 10% ms", ("summary", "create_p50_ms", "10%")),
              ("create p50 at 100% ms", ("summary", "create_p50_ms", "100%")),
              ("list_summary p50 ms", ("summary", "list_summary_p50_ms"))],
}


def dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return report


def run_one(harness: str, harness_python: str, server_python: str, target: str, sub: str) -> dict[str, Any]:
    words = shlex.split(sub)
    env = [w[1:] for w in words if w.startswith("@")]
    args = [w for w in words if not w.startswith("@")]
    path = Path(target).resolve()
    cwd, script = (path.parent, path.name) if path.suffix == ".py" else (path, "server.py")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = fh.name
    cmd = [harness_python, harness, "--server-cmd", f"{server_python} {script}", "--cwd", str(cwd),
           *[x for e in env for x in ("--env", e)], *args, "--out", out]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=6 * 3600)
    try:
        return json.loads(Path(out).read_text())
    except (OSError, ValueError):
        return {"errors": ["no report"]}
    finally:
        os.unlink(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="label=path")
    parser.add_argument("--sub", action="append", required=True, help="a harness subcommand (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--harness", default=str(HARNESS), help="the shared mcp_bench.py")
    parser.add_argument("--harness-python", default="/tmp/benchvenv/bin/python", help="an interpreter with mcp 2.x")
    parser.add_argument("--server-python", default=sys.executable)
    a = parser.parse_args()
    targets = dict(c.split("=", 1) for c in a.checkouts)
    values: dict[tuple[str, str, str], list[Any]] = {}
    for round_no in range(a.rounds):
        for sub in a.sub:
            kind = shlex.split(sub)[0]
            for label, path in targets.items():
                report = run_one(a.harness, a.harness_python, a.server_python, path, sub)
                for name, where in FIGURES.get(kind, []):
                    value = dig(report, where)
                    if value is not None:
                        values.setdefault((sub, name, label), []).append(value)
                print(f"round {round_no + 1} {label:>10} {sub}: "
                      + ", ".join(f"{n} {dig(report, w)}" for n, w in FIGURES.get(kind, []) if dig(report, w) is not None)
                      + (f" errors {report['errors']}" if report.get("errors") else ""), file=sys.stderr, flush=True)
    table = {}
    for (sub, name, label), vals in sorted(values.items()):
        nums = [v for v in vals if isinstance(v, int | float)]
        table.setdefault(f"{sub} | {name}", {})[label] = {"median": statistics.median(nums) if nums else None,
                                                           "rounds": vals}
    for row, cells in table.items():
        print(f"{row:60} " + "  ".join(f"{label}: {cell['median']} {cell['rounds']}" for label, cell in cells.items()))
    print(json.dumps({"load": os.getloadavg(), "table": table}))


if __name__ == "__main__":
    main()
