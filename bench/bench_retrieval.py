"""Retrieval quality of skill_search on the MetaTool dev set, in process (no MCP framing).

Registers the 199 MetaTool tools as skills in a fresh registry (with the two core skills,
as a real install has them), runs the 1,000 dev queries in each mode and prints
recall@1/5/10 and MRR@10 per mode, plus median search latency. `--sweep` also prints
hybrid figures for several vector weights (how VECTOR_WEIGHT was chosen; dev set only).

    .venv/bin/python bench/bench_retrieval.py [--data ../shared/bench/metatool] [--sweep]

The black-box figures come from the shared harness over MCP:

    /tmp/benchvenv/bin/python ../shared/bench/mcp_bench.py --server-cmd "$(pwd)/.venv/bin/python server.py" \
        --cwd "$(pwd)" retrieval --tools ../shared/bench/metatool/tools.jsonl \
        --queries ../shared/bench/metatool/queries.jsonl --mode all
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import skills  # noqa: E402
from embeddings import make_embedder  # noqa: E402
from selfmcp import search  # noqa: E402


def load(data: Path) -> tuple[list[dict], list[dict]]:
    tools = [json.loads(line) for line in (data / "tools.jsonl").read_text().splitlines() if line.strip()]
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines() if line.strip()]
    return tools, queries


def evaluate(reg: skills.Registry, queries: list[dict], by_id: dict[int, str], mode: str) -> dict[str, float]:
    r1 = r5 = r10 = mrr = 0.0
    latencies = []
    for q in queries:
        started = time.perf_counter()
        results = reg.search(q["query"], mode, 10)["results"]
        latencies.append(time.perf_counter() - started)
        names = [by_id.get(r["id"]) for r in results]
        if q["tool"] in names:
            rank = names.index(q["tool"]) + 1
            r1 += rank == 1
            r5 += rank <= 5
            r10 += 1
            mrr += 1 / rank
    n = len(queries)
    return {"recall@1": round(r1 / n, 3), "recall@5": round(r5 / n, 3), "recall@10": round(r10 / n, 3),
            "MRR@10": round(mrr / n, 3), "search_p50_ms": round(statistics.median(latencies) * 1000, 2)}


def registry_of(tools: list[dict], db_path: Path, embedder: object) -> tuple[skills.Registry, dict[int, str]]:
    """A registry holding the core skills and one skill per tool (every vector made); skill id -> tool name."""
    reg = skills.Registry(db_path, embedder, environ={})  # type: ignore[arg-type]
    reg.seed_core_skills()
    by_id = {}
    for tool in tools:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", tool["name"])  # as the shared harness retries
        by_id[reg.create(name, tool["description"], "print('ok')")["id"]] = tool["name"]
    reg.search_index.wait_idle()  # every vector made (creates are embedded in the background)
    return reg, by_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/bench/metatool")
    parser.add_argument("--model", default=None, help="SELFMCP_EMBED_MODEL-style model name (default: offline)")
    parser.add_argument("--sweep", action="store_true", help="also sweep the hybrid vector weight")
    args = parser.parse_args()
    tools, queries = load(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        reg, by_id = registry_of(tools, Path(tmp) / "bench.db", make_embedder(args.model, use_remote=False))
        report = {"embedder": reg.embedder.model_id, "skills": len(tools), "queries": len(queries)}
        for mode in ("keyword", "vector", "hybrid"):
            report[mode] = evaluate(reg, queries, by_id, mode)
        if args.sweep:
            default = search.VECTOR_WEIGHT
            sweep = {}
            for weight in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
                search.VECTOR_WEIGHT = weight
                sweep[str(weight)] = evaluate(reg, queries, by_id, "hybrid")
            search.VECTOR_WEIGHT = default
            report["hybrid_weight_sweep"] = sweep
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
