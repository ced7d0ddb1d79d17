"""How the registry behaves as it grows: create, search and list latency, memory, start-up.

Creates N synthetic skills (the shared harness's vocabulary, with a numeric suffix so any N
works) in a fresh registry, in process, and prints one JSON report:

- create p50/p95 over windows of 5% of N ending at 10%, 50% and 100% of N (the cost of a
  write must not grow with the registry);
- hybrid / keyword / vector search p50/p95 over 200 queries worded from random skills, with
  the share of queries whose source skill is in the top 10;
- skill_list_summary default page: latency and size in bytes (as JSON);
- peak RSS of this process (the registry, its vector index and SQLite's cache);
- with --startup: time from spawning `server.py` over stdio to a tools/list answer, with an
  empty database and with this N-skill database (median of 5 each).

    .venv/bin/python bench/bench_scale.py --n 10000 --startup
    .venv/bin/python bench/bench_scale.py --n 100000

The black-box equivalent over MCP (limited by its vocabulary to 72,000 skills):

    /tmp/benchvenv/bin/python ../shared/bench/mcp_bench.py --server-cmd "$(pwd)/.venv/bin/python server.py" \
        --cwd "$(pwd)" scale --n 10000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import skills  # noqa: E402
from embeddings import make_embedder  # noqa: E402

VERBS = ["archive", "summarize", "translate", "classify", "deduplicate", "export", "validate", "merge",
         "forecast", "monitor", "schedule", "compare", "enrich", "anonymize", "visualize", "audit",
         "tag", "rank", "convert", "sync"]
QUALIFIERS = ["shared", "hourly", "raw", "overdue", "encrypted", "regional", "archived", "weekly",
              "customer", "draft", "flagged", "public", "legacy", "pending", "monthly"]
OBJECTS = ["calendar event", "invoice", "shipping label", "resume", "support ticket", "sales lead",
           "blog post", "expense report", "sensor reading", "contract", "product review", "tweet",
           "pull request", "lab result", "recipe", "flight booking", "playlist", "podcast episode",
           "survey response", "bank statement", "weather alert", "job posting", "news article", "photo"]
SOURCES = ["from Google Drive", "from an S3 bucket", "from the CRM", "through a REST API", "from Gmail",
           "from a Postgres database", "from an RSS feed", "from Notion", "from Airtable", "from Salesforce"]
OUTPUTS = ["as JSON", "as a Markdown table", "as a PDF report", "to a Slack channel", "as a CSV file", "by email"]
AUDIENCES = ["analysts", "travelers", "students", "developers", "recruiters", "accountants", "teachers"]


def synth(n: int, seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v, q, o = rng.choice(VERBS), rng.choice(QUALIFIERS), rng.choice(OBJECTS)
        src, dst, aud = rng.choice(SOURCES), rng.choice(OUTPUTS), rng.choice(AUDIENCES)
        out.append({
            "name": f"{v}_{q}_{o.replace(' ', '_')}_{i}",
            "description": f"{v.capitalize()} {q} {o}s {src} and return them {dst}. Handy for {aud}.",
            "query": rng.choice([f"{v} the {q} {o}s", f"can you {v} my {q} {o} {src}",
                                 f"I need to {v} {q} {o}s {dst}", f"help me {v} {q} {o} data for {aud}"]),
        })
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 3)


def startup_ms(db_path: Path, runs: int = 5) -> float:
    probe = (
        "import sys, time, anyio\n"
        "from mcp import Client, StdioServerParameters\n"
        "async def main():\n"
        "    t = time.perf_counter()\n"
        "    p = StdioServerParameters(command=sys.executable, args=[sys.argv[1]], cwd=sys.argv[2],\n"
        "        env={'PATH': '/usr/bin:/bin', 'SELFMCP_TRANSPORT': 'stdio', 'SELFMCP_DB_PATH': sys.argv[3],\n"
        "             'SELFMCP_LOG_LEVEL': 'WARNING'})\n"
        "    async with Client(p, mode='legacy') as c:\n"
        "        await c.list_tools()\n"
        "        print((time.perf_counter() - t) * 1000)\n"
        "anyio.run(main)\n"
    )
    times = []
    for _ in range(runs + 1):
        out = subprocess.run([sys.executable, "-c", probe, str(ROOT / "server.py"), str(ROOT), str(db_path)],
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return round(statistics.median(times[1:]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--startup", action="store_true")
    args = parser.parse_args()
    data = synth(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="selfmcp-bench-"))
    try:
        reg = skills.Registry(tmp / "scale.db", make_embedder(None, use_remote=False), environ={})
        reg.seed_core_skills()
        window = max(1, args.n // 20)
        marks = {"10%": args.n // 10, "50%": args.n // 2, "100%": args.n}
        latencies: list[float] = []
        started = time.perf_counter()
        for i, item in enumerate(data, 1):
            t = time.perf_counter()
            reg.create(item["name"], item["description"], "print('ok')")
            latencies.append(time.perf_counter() - t)
            if i % max(1, args.n // 10) == 0:
                print(f"created {i}/{args.n}", file=sys.stderr)
        report: dict = {"n": args.n, "embedder": reg.embedder.model_id,
                        "create_total_s": round(time.perf_counter() - started, 1),
                        "create_p50_ms": {k: pct(latencies[max(0, m - window):m], 0.5) for k, m in marks.items()},
                        "create_p95_ms": {k: pct(latencies[max(0, m - window):m], 0.95) for k, m in marks.items()}}
        queries = random.Random(7).sample(data, min(args.queries, len(data)))
        for mode in ("hybrid", "keyword", "vector"):
            reg.search("warm up", mode, 10)
            times, hits = [], 0
            for item in queries:
                t = time.perf_counter()
                results = reg.search(item["query"], mode, 10)["results"]
                times.append(time.perf_counter() - t)
                hits += item["name"] in {r["name"] for r in results}
            report[f"search_{mode}"] = {"p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95),
                                        "target_in_top10": round(hits / len(queries), 3)}
        times = []
        for _ in range(5):
            t = time.perf_counter()
            page = reg.list_summary()
            times.append(time.perf_counter() - t)
        report["list_summary"] = {"p50_ms": pct(times, 0.5), "items": len(page["skills"]), "total": page["total"],
                                  "json_bytes": len(json.dumps(page, separators=(",", ":")).encode())}
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        report["db_mb"] = round(sum(f.stat().st_size for f in tmp.glob("scale.db*")) / 2**20, 1)
        if args.startup:
            empty = tmp / "empty.db"
            skills.Registry(empty, make_embedder(None, use_remote=False), environ={}).seed_core_skills()
            report["startup_ms"] = {"empty": startup_ms(empty), f"{args.n}_skills": startup_ms(tmp / "scale.db")}
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.sync()


if __name__ == "__main__":
    main()
