#!/usr/bin/env python3
"""Benchmark the shipped static embedder ALONE (no keyword search, no server).

Prints the load time, the per-query embed time (median), the batch embed time
of all tool texts, and retrieval quality on the MetaTool dev set
(``../shared/bench/metatool``, 199 tools, 1,000 queries, one gold tool each):
each tool is embedded as ``name + " " + description``, each query on its own,
tools ranked by cosine; recall@1/5/10 and MRR@10 as in mcp_bench.py.

Command (from the repository root; needs only numpy)::

    .venv/bin/python bench/bench_static_embedder.py [--metatool DIR] [--json]

Figures measured on the 2-core machine (model minilm-l6-static-256-int8-v1;
the machine was shared with other jobs, so timings vary by about 2x):

    import static_embedder   5-15 ms (after numpy, which takes 100-250 ms)
    load                     12-25 ms (warm page cache)
    query embed (median)     0.06-0.09 ms (~20-word query)
    batch embed              199 tool texts 13-15 ms; 1,000 queries 40-130 ms

    dev set (1,000 queries)         R@1    R@5    R@10   MRR@10
    no token weighting              0.361  0.582  0.686  0.457
    default: stop words weight 0    0.413  0.657  0.743  0.519

The no-weighting row equals model2vec's own inference of the same table
(.363/.580/.687/.458 in the earlier notes): the numpy reader reproduces it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _metrics(scores, gold) -> dict[str, float]:
    import numpy as np

    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    hit = top == np.asarray(gold)[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)
    out = {f"recall@{k}": float(((rank > 0) & (rank <= k)).mean()) for k in (1, 3, 5, 10)}
    out["mrr@10"] = float(np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0).mean())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="static embedder alone on MetaTool dev")
    ap.add_argument("--metatool", type=Path, default=REPO.parent / "shared" / "bench" / "metatool")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
    args = ap.parse_args()

    t0 = time.perf_counter()

    t_numpy = time.perf_counter() - t0
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO))
    from selfmcp.embedders import static as static_embedder  # noqa: E402

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = static_embedder.load_static_embedder()
    t_load = time.perf_counter() - t0

    tools = [json.loads(x) for x in open(args.metatool / "tools.jsonl", encoding="utf-8") if x.strip()]
    queries = [json.loads(x) for x in open(args.metatool / "queries.jsonl", encoding="utf-8") if x.strip()]
    index = {t["name"]: i for i, t in enumerate(tools)}
    gold = [index[q["tool"]] for q in queries]
    docs = [f'{t["name"]} {t["description"]}' for t in tools]
    qtexts = [q["query"] for q in queries]

    t0 = time.perf_counter()
    emb.embed(docs)
    t_batch_cold = time.perf_counter() - t0

    # per-query latency: cold (first time a query's words are seen) and warm
    cold_emb = static_embedder.load_static_embedder()
    cold = []
    for q in qtexts[:200]:
        t0 = time.perf_counter()
        cold_emb.embed([q])
        cold.append(time.perf_counter() - t0)
    warm = []
    for q in qtexts:
        t0 = time.perf_counter()
        emb.embed([q])
        warm.append(time.perf_counter() - t0)

    results = {
        "model_id": emb.model_id,
        "load_ms": t_load * 1e3,
        "import_ms": t_import * 1e3,
        "numpy_import_ms": t_numpy * 1e3,
    }
    results["query_ms_median_warm"] = statistics.median(warm) * 1e3
    results["query_ms_median_cold"] = statistics.median(cold) * 1e3
    results["batch_199_tools_ms_cold"] = t_batch_cold * 1e3
    t0 = time.perf_counter()
    emb.embed(qtexts)
    results["batch_1000_queries_ms"] = (time.perf_counter() - t0) * 1e3

    table = {}
    for label, stop in (("no weighting", False), ("stop words 0 (default)", True)):
        e = emb if stop else static_embedder.load_static_embedder(stop_words=False)
        D = e.embed(docs)
        Q = e.embed(qtexts)
        table[label] = _metrics(Q @ D.T, gold)

    print(f"model            {emb.model_id} (dim {emb.dim}, vocab {emb.vocab_size})")
    print(f"import           {results['import_ms']:.1f} ms (numpy itself before it: {results['numpy_import_ms']:.0f} ms)")
    print(f"load             {results['load_ms']:.1f} ms")
    print(f"query embed      median {results['query_ms_median_warm']:.3f} ms warm, "
          f"{results['query_ms_median_cold']:.3f} ms cold (first sight of its words)")
    print(f"batch embed      199 tools {results['batch_199_tools_ms_cold']:.1f} ms cold; "
          f"1,000 queries {results['batch_1000_queries_ms']:.1f} ms")
    print(f"MetaTool dev: {len(tools)} tools, {len(queries)} queries, cosine over name + description")
    print(f"  {'variant':26s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'MRR@10':>7s}")
    for label, m in table.items():
        print(f"  {label:26s} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['recall@10']:6.3f} {m['mrr@10']:7.3f}")
    if args.json:
        results["retrieval"] = table
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
