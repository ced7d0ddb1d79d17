"""How fast the `selfmcp` command line starts: `selfmcp list` on N skills, wall time from spawn to exit.

Builds (once, cached in the temp folder) a registry of N skills through skills.Registry with the
hashing embedder, then runs `python -m selfmcp --db DB list` (and `--json list`) as a fresh process
several times and prints one JSON report: the best and median wall times, and the import cost of the
CLI libraries compared when choosing one (those importable by --python, default this interpreter).

    .venv/bin/python bench/bench_cli.py --n 10000
    .venv/bin/python bench/bench_cli.py --n 10000 --python /tmp/clibench-venv/bin/python   # click/typer/rich too
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIBRARIES = ("argparse", "click", "typer", "tqdm", "rich.progress")


def build(path: Path, n: int) -> None:
    import skills
    from embeddings import HashEmbedder

    reg = skills.Registry(path, HashEmbedder())
    reg.seed_core_skills()
    for i in range(n):
        reg.create(f"skill_{i}", f"Synthetic skill number {i}: convert, fetch or summarise item {i}.", "print('ok')")
        if i % 1000 == 999:
            print(f"created {i + 1}/{n}", file=sys.stderr)


def wall(argv: list[str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        times.append((time.perf_counter() - started) * 1000)
        assert proc.returncode == 0, proc.stderr
    return {"best_ms": round(min(times)), "median_ms": round(statistics.median(times))}


def import_ms(python: str, module: str, runs: int = 5) -> float | None:
    """Cumulative import time of `module` (python -X importtime), best of `runs`; None if not installed."""
    best = None
    for _ in range(runs):
        proc = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        top = [line for line in proc.stderr.splitlines() if line.rstrip().endswith(f"| {module}")]
        micros = int(top[-1].split("|")[1])
        best = micros if best is None else min(best, micros)
    return round(best / 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--python", default=sys.executable, help="interpreter whose libraries are compared")
    args = parser.parse_args()
    path = Path(tempfile.gettempdir()) / f"selfmcp-bench-cli-{args.n}.db"
    if not path.exists():
        partial = path.with_suffix(".partial")
        for leftover in partial.parent.glob(partial.name + "*"):
            leftover.unlink()
        build(partial, args.n)
        partial.rename(path)
    base = [sys.executable, "-m", "selfmcp", "--db", str(path)]
    report = {
        "skills": args.n + 2,
        "list": wall(base + ["list"], args.runs),
        "list_json": wall(base + ["--json", "list"], args.runs),
        "python_startup": wall([sys.executable, "-c", "pass"], args.runs),
        "import_ms": {m: import_ms(args.python, m) for m in LIBRARIES},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
