"""The offline embedder's figures, so a later model can be compared on the same footing.

In process (no MCP framing), on the MetaTool dev set (199 tools, 1,000 requests):

- retrieval: recall@1/5/10 and MRR@10 of keyword, vector alone and hybrid (fused) search over a
  fresh registry holding the tools plus the core skills, as a real install has them;
- load: seconds from constructing the embedder to weights in memory (median of --repeat);
- query latency: one request embedded at a time, median and p95 (ms);
- documents a second: the 199 tool texts embedded in one call (median of --repeat).

    .venv/bin/python bench/bench_embedder.py                     # the default (MiniLM) embedder
    .venv/bin/python bench/bench_embedder.py --model static      # any SELFMCP_EMBED_MODEL value
    .venv/bin/python bench/bench_embedder.py --text split --keyword base   # the variants compared

`--text` and `--keyword` swap in the alternatives that were measured when the shipped choice
was made (README, "Search"): the embedded text (`raw`: "{name}: {description} {tags}", shipped;
`split`: the name split into words, then description and tags) and the keyword query (`base`:
the short stop list, no prefix terms; `prefix`: + "term"* for words of 4+ characters; `stop`: +
the larger stop list; `prefix+stop`: both). Use the dev set only: do not tune to single queries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embeddings import make_embedder  # noqa: E402
from selfmcp import search, skillmd  # noqa: E402
from bench_retrieval import evaluate, load, registry_of  # noqa: E402  (one loader, one scorer for both benches)

DATA = Path(__file__).resolve().parents[2] / "shared/bench/metatool"


def _split_text(name: str, description: str, frontmatter: dict[str, object]) -> str:
    tags = skillmd.frontmatter_search_text(frontmatter)
    return " ".join(part for part in (" ".join(search.split_words(name)), description, tags) if part)


def use_variants(text: str, keyword: str) -> None:
    """Swap the measured alternatives into the search module (this process only)."""
    if text == "split":
        shipped = search.index_texts
        search.index_texts = lambda n, d, f: (shipped(n, d, f)[0], _split_text(n, d, f))
    if keyword in ("base", "stop"):
        search.PREFIX_MIN_CHARS = 0
    if keyword in ("base", "prefix"):
        search.STOP_WORDS = search.SHORT_STOP_WORDS


def model_costs(model: str | None, texts: list[str], queries: list[str], repeat: int) -> dict[str, float]:
    loads = []
    for _ in range(repeat):
        started = time.perf_counter()
        embedder = make_embedder(model, use_remote=False)
        warm_up = getattr(embedder, "warm_up", None)
        if warm_up is not None:
            warm_up()
        embedder.embed(["warm"])
        loads.append(time.perf_counter() - started)
    latencies = []
    for q in queries:
        started = time.perf_counter()
        embedder.embed([q])
        latencies.append(time.perf_counter() - started)
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        embedder.embed(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    latencies.sort()
    return {"load_s": round(statistics.median(loads), 3),
            "query_p50_ms": round(statistics.median(latencies) * 1000, 2),
            "query_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 2),
            "docs_per_s": round(statistics.median(rates), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default=None, help="a SELFMCP_EMBED_MODEL value (default: the offline default)")
    parser.add_argument("--text", choices=("raw", "split"), default="raw")
    parser.add_argument("--keyword", choices=("prefix+stop", "prefix", "stop", "base"), default="prefix+stop")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-costs", action="store_true", help="retrieval figures only")
    args = parser.parse_args()
    use_variants(args.text, args.keyword)
    tools, queries = load(args.data)
    embedder = make_embedder(args.model, use_remote=False)
    report: dict[str, object] = {"embedder": embedder.model_id, "text_variant": args.text,
                                 "keyword_variant": args.keyword,
                                 "skills": len(tools), "queries": len(queries)}
    if not args.no_costs:
        texts = [f"{t['name']}: {t['description']}" for t in tools]
        report["costs"] = model_costs(args.model, texts, [q["query"] for q in queries[:300]], args.repeat)
    warm_up = getattr(embedder, "warm_up", None)
    if warm_up is not None:
        warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        reg, by_id = registry_of(tools, Path(tmp) / "bench.db", embedder)
        reg.search_index._query_cache.size = 2 * len(queries)  # each request embedded once for all modes
        for mode in ("keyword", "vector", "hybrid"):
            report[mode] = evaluate(reg, queries, by_id, mode)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
