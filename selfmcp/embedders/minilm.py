"""The all-MiniLM-L6-v2 sentence transformer, run as a plain numpy forward pass.

The weights in ``models/minilm-l6/`` are derived from sentence-transformers/all-MiniLM-L6-v2 by
``scripts/build_minilm_model.py`` (int8, one scale per output channel; see the folder's
NOTICE.md). At run time only numpy is needed:

1. the project's BERT uncased WordPiece tokenizer (``selfmcp.embedders.static``), ``[CLS] ...
   [SEP]``, at most 256 tokens as sentence-transformers does;
2. word + position + token-type embeddings, LayerNorm;
3. six post-LayerNorm BERT layers (12 heads of 32, GELU feed-forward of 1,536);
4. mean pooling over the real tokens, L2 normalisation.

Loading expands the int8 matrices to float32 (~42 MB) and keeps the word table int8 (~12 MB);
it takes ~0.1-0.2 s, so `MiniLMEmbedder` knows its model id without loading and loads on first
use (or in the background through `warm_up()`). The vectors match torch's within a cosine of
about 0.9996 (tests/test_minilm_embedder.py checks a stored reference). Loading also limits
numpy's OpenBLAS to one thread (`limit_blas_threads`; see there why).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from selfmcp.embedders.lazynp import np

from selfmcp.embedders.static import BertWordPieceTokenizer

__all__ = ["DEFAULT_MODEL_DIR", "MiniLMEmbedder", "load_minilm_embedder"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "minilm-l6"
# Texts are padded to the longest of their batch; sorting by length first keeps padding small.
BATCH_SIZE = 32


_BLAS_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                     "openblas_set_num_threads")


def limit_blas_threads(threads: int = 1) -> bool:
    """Make the OpenBLAS loaded by numpy use `threads` threads; True if it was found.

    Measured on the shared 2-core machine: with OpenBLAS's default (one thread per core) a
    query's matrix products took 20-100x longer whenever the other core was busy (its threads
    spin waiting for each other), and a server's request threads and the re-embedding thread
    already use both cores. An explicit OPENBLAS_NUM_THREADS is left alone.
    """
    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            libraries = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    done = False
    for path in libraries:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in _BLAS_SET_THREADS:
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done = True
                break
    return done


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    x = x - mean
    var = np.mean(x * x, axis=-1, keepdims=True)
    x *= 1.0 / np.sqrt(var + eps)
    x *= weight
    x += bias
    return x


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as BERT uses, in place; erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = np.abs(x)
    z *= np.float32(1 / np.sqrt(2))
    t = z * np.float32(0.3275911)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    z *= z
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x| / sqrt 2)
    # x * (1 + erf(x / sqrt 2)) / 2: for x >= 0 that is x * (1 - poly / 2), for x < 0 x * poly / 2
    poly *= 0.5
    np.subtract(1.0, poly, out=poly, where=x >= 0)
    x *= poly
    return x


class _Layer:
    __slots__ = ("qkv", "qkv_b", "out", "out_b", "ln1_w", "ln1_b", "ffn_in", "ffn_in_b", "ffn_out", "ffn_out_b",
                 "ln2_w", "ln2_b")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on numpy: ``embed(texts) -> (n, 384) float32``, rows L2-normalised.

    Construction reads only config.json; the weights load on first `embed()` or `warm_up()`,
    once, under a lock. `ready` says whether they are loaded. Safe to call from several threads.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else DEFAULT_MODEL_DIR
        with open(self.path / "config.json", encoding="utf-8") as f:
            self.config = json.load(f)
        self.model_id: str = self.config["model_id"]
        self.dim: int = int(self.config["dim"])
        self.max_tokens: int = int(self.config["max_tokens"])
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def ready(self) -> bool:
        return self._loaded

    def warm_up(self) -> None:
        """Load the weights now (blocking); a no-op once loaded."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()

    def _load(self) -> None:
        cfg = self.config
        vocab_tokens = (self.path / cfg["vocab_file"]).read_text(encoding="utf-8").split("\n")
        if vocab_tokens and vocab_tokens[-1] == "":
            vocab_tokens.pop()
        vocab = dict(zip(vocab_tokens, range(len(vocab_tokens))))
        self.tokenizer = BertWordPieceTokenizer(vocab)
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.eps = float(cfg["layer_norm_eps"])
        self.heads = int(cfg["heads"])
        limit_blas_threads(1)
        with np.load(self.path / cfg["weights_file"], allow_pickle=False) as npz:
            w = {name: npz[name] for name in npz.files}

        def f32(name: str) -> np.ndarray:
            return w[name].astype(np.float32)

        def matrix(name: str) -> np.ndarray:
            out = np.ascontiguousarray(w[name], dtype=np.float32)
            out *= w[name + ".scale"]
            return out

        self.word = w["word"]
        self.word_scale = w["word.scale"][:, None]
        # token type 0 is the same for every token: fold it into the position table
        self.position = f32("position") + f32("token_type")
        self.emb_ln = (f32("emb_ln.weight"), f32("emb_ln.bias"))
        self.layers: list[_Layer] = []
        for i in range(int(cfg["layers"])):
            layer = _Layer()
            layer.qkv, layer.qkv_b = matrix(f"{i}.qkv"), f32(f"{i}.qkv.bias")
            layer.out, layer.out_b = matrix(f"{i}.attn_out"), f32(f"{i}.attn_out.bias")
            layer.ln1_w, layer.ln1_b = f32(f"{i}.attn_ln.weight"), f32(f"{i}.attn_ln.bias")
            layer.ffn_in, layer.ffn_in_b = matrix(f"{i}.ffn_in"), f32(f"{i}.ffn_in.bias")
            layer.ffn_out, layer.ffn_out_b = matrix(f"{i}.ffn_out"), f32(f"{i}.ffn_out.bias")
            layer.ln2_w, layer.ln2_b = f32(f"{i}.ffn_ln.weight"), f32(f"{i}.ffn_ln.bias")
            self.layers.append(layer)
        self._loaded = True

    # -- inference

    def token_ids(self, text: str) -> list[int]:
        """``[CLS] tokens [SEP]``, the tokens cut so that the whole fits in max_tokens."""
        self.warm_up()
        ids = self.tokenizer.encode(text)[: self.max_tokens - 2]
        return [self.cls_id, *ids, self.sep_id]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in length-sorted batches; return (len(texts), dim) float32, L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a single string")
        self.warm_up()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encoded = [self.token_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start:start + BATCH_SIZE]
            out[batch] = self._forward([encoded[i] for i in batch])
        return out

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        n, length = len(batch), max(len(ids) for ids in batch)
        ids = np.zeros((n, length), dtype=np.intp)
        mask = np.zeros((n, length), dtype=np.float32)
        for row, tokens in enumerate(batch):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1.0
        x = self.word[ids].astype(np.float32)
        x *= self.word_scale[ids]
        x += self.position[:length]
        x = _layer_norm(x, *self.emb_ln, self.eps)
        # padding gets a large negative score, so softmax gives it (almost exactly) no weight
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        heads, dim = self.heads, self.dim
        head_dim = dim // heads
        scale = np.float32(1 / np.sqrt(head_dim))
        tokens = n * length
        x = x.reshape(tokens, dim)
        for layer in self.layers:
            # one (tokens, 384) x (384, 1152) product for query, key and value together
            qkv = x @ layer.qkv
            qkv += layer.qkv_b
            qkv = np.ascontiguousarray(qkv.reshape(n, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= scale
            scores += bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(tokens, dim)
            attn = context @ layer.out
            attn += layer.out_b
            attn += x
            x = _layer_norm(attn, layer.ln1_w, layer.ln1_b, self.eps)
            hidden = x @ layer.ffn_in
            hidden += layer.ffn_in_b
            ffn = _gelu(hidden) @ layer.ffn_out
            ffn += layer.ffn_out_b
            ffn += x
            x = _layer_norm(ffn, layer.ln2_w, layer.ln2_b, self.eps)
        x = x.reshape(n, length, dim)
        pooled = (x * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return pooled / norms


def load_minilm_embedder(path: str | os.PathLike[str] | None = None) -> MiniLMEmbedder:
    """The shipped model (default ``models/minilm-l6``), weights loaded."""
    embedder = MiniLMEmbedder(path)
    embedder.warm_up()
    return embedder
