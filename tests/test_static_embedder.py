"""Tests of static_embedder.py with the shipped models/minilm-l6-static table (offline, numpy only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmcp.embedders.static import basic_tokenize, load_static_embedder  # noqa: E402

MODEL_DIR = REPO / "models" / "minilm-l6-static"


@pytest.fixture(scope="module")
def emb():
    return load_static_embedder()


@pytest.fixture(scope="module")
def emb_plain():
    return load_static_embedder(stop_words=False)


# --------------------------------------------------------------------------
# shipped files
# --------------------------------------------------------------------------


def test_shipped_files():
    for name in ("embeddings.npy", "vocab.txt", "config.json", "LICENSE", "NOTICE.md"):
        assert (MODEL_DIR / name).is_file(), name
    cfg = json.loads((MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    assert cfg["model_id"] == "minilm-l6-static-256-int8-v1"
    assert cfg["dim"] == 256
    assert cfg["license"] == "Apache-2.0"
    assert cfg["source_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # no absolute build paths leak into the shipped metadata
    for name in ("config.json", "NOTICE.md"):
        text = (MODEL_DIR / name).read_text(encoding="utf-8")
        assert "/tmp/" not in text and "site-packages" not in text and "/home/" not in text
    assert (MODEL_DIR / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    total = sum(f.stat().st_size for f in MODEL_DIR.iterdir())
    assert total < 9_000_000


def test_table_matches_vocab():
    e = np.load(MODEL_DIR / "embeddings.npy", mmap_mode="r")
    assert e.dtype == np.int8 and e.shape == (29525, 256)
    vocab = (MODEL_DIR / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert vocab[-1] == ""
    assert len(vocab) - 1 == e.shape[0]
    assert vocab[0] == "[PAD]" and vocab[1] == "[UNK]"


# --------------------------------------------------------------------------
# tokenizer (expected splits checked against the Hugging Face tokenizer of the model)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("unaffable playing GitHub's APIs", ["una", "##ffa", "##ble", "playing", "gi", "##th", "##ub", "'", "s", "api", "##s"]),
        ("Summarize the cribbage rules", ["sum", "##mar", "##ize", "the", "cr", "##ib", "##bag", "##e", "rules"]),
        ("cryptocurrencies", ["crypt", "##oc", "##ur", "##ren", "##cies"]),
        ("Héllo Wörld, café naïve!", ["hello", "world", ",", "cafe", "naive", "!"]),
        ("snake_case camelCase kebab-case e-mail", ["snake", "_", "case", "camel", "##case", "ke", "##ba", "##b", "-", "case", "e", "-", "mail"]),
        ("東京タワーに行きたい", ["東", "京", "タ", "##ワ", "##ー", "##に", "行", "き", "##た", "##い"]),
        ("tab\tnew\nline\rcr", ["tab", "new", "line", "cr"]),
        ("zero\u200bwidth", ["zero", "##wi", "##dt", "##h"]),
        ("‘quotes’ “double” – …", ["‘", "quotes", "’", "“", "double", "”", "–", "…"]),
        ("x" * 150, ["[UNK]"]),
        ("emoji 😀", ["em", "##oj", "##i", "[UNK]"]),
        ("", []),
    ],
)
def test_wordpiece_splits(emb, text, tokens):
    assert emb.tokenizer.tokenize(text) == tokens


def test_basic_tokenize_ascii_and_unicode_paths_agree():
    text = "Get the 2-day AIR quality forecast (US zip code)!"
    # " é" forces the general (non-ASCII) path; it adds the word "e"
    assert basic_tokenize(text + " é") == basic_tokenize(text) + ["e"]
    assert basic_tokenize("Crème Brûlée") == ["creme", "brulee"]
    assert basic_tokenize("a,b") == ["a", ",", "b"]
    assert basic_tokenize("ΟΔΟΣ") == ["οδοσ"]  # per-character lower-casing, as the Rust normaliser


def test_word_cache(emb):
    tok = emb.tokenizer
    first = tok.encode("photosynthesis photosynthesis")
    assert "photosynthesis" in tok._cache
    assert first[: len(first) // 2] == first[len(first) // 2 :]


# --------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------


def test_shape_dtype_norm(emb):
    texts = ["send an email", "weather forecast for tomorrow", "convert dollars to euros"]
    v = emb.embed(texts)
    assert v.shape == (3, emb.dim) and emb.dim == 256
    assert v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert emb.model_id == "minilm-l6-static-256-int8-v1"


def test_deterministic(emb):
    texts = ["Find me a cheap flight to Tokyo", "stock price of Apple"]
    a = emb.embed(texts)
    b = emb.embed(texts)
    c = load_static_embedder().embed(texts)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    # batch and single embedding agree
    assert np.allclose(emb.embed([texts[1]])[0], a[1], atol=1e-6)


def test_empty_and_unknown_give_zero(emb):
    v = emb.embed(["", "   ", "😀😀", "hello"])
    assert not v[:3].any()
    assert np.isclose(np.linalg.norm(v[3]), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 256)


def test_only_stop_words_falls_back(emb, emb_plain):
    v = emb.embed(["what is this"])[0]
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)
    assert np.allclose(v, emb_plain.embed(["what is this"])[0], atol=1e-6)


def test_stop_words_are_ignored(emb, emb_plain):
    a = emb.embed(["weather forecast", "the weather forecast for me"])
    assert np.allclose(a[0], a[1], atol=1e-5)
    b = emb_plain.embed(["weather forecast", "the weather forecast for me"])
    assert not np.allclose(b[0], b[1], atol=1e-3)
    assert emb_plain.model_id.endswith("-nostop")


def test_custom_token_weights(emb):
    w = np.ones(emb.vocab_size, dtype=np.float32)
    v1 = emb.embed(["currency exchange"], token_weights=w)
    w[emb.tokenizer.vocab["exchange"]] = 0.0
    v2 = emb.embed(["currency exchange"], token_weights=w)
    v3 = emb.embed(["currency"], token_weights=w)
    assert not np.allclose(v1, v2)
    assert np.allclose(v2, v3, atol=1e-6)


def test_string_argument_rejected(emb):
    with pytest.raises(TypeError):
        emb.embed("a single string")


@pytest.mark.parametrize("e_name", ["emb", "emb_plain"])
def test_semantic_similarity(request, e_name):
    e = request.getfixturevalue(e_name)
    q, near, far = e.embed(
        ["send an email to my colleague", "compose and deliver electronic mail messages", "get the current weather forecast"]
    )
    assert q @ near > q @ far + 0.2
    q, near, far = e.embed(
        ["will it rain tomorrow in Paris", "get the current weather forecast", "compose and deliver electronic mail messages"]
    )
    assert q @ near > q @ far + 0.2
    q, near, far = e.embed(
        ["convert 100 dollars to euros", "currency exchange rates and conversion", "book a table at a restaurant"]
    )
    assert q @ near > q @ far + 0.3


def test_small_retrieval(emb):
    docs = [
        "compose and deliver electronic mail messages",
        "get the current weather forecast for a city",
        "currency exchange rates and conversion",
        "search and book airline tickets",
        "translate text between languages",
        "play music and create playlists",
    ]
    queries = [
        "email my boss about the report",
        "is it going to snow this weekend",
        "how many yen is 50 euros",
        "I need a flight from Berlin to Rome",
        "say 'good morning' in Spanish",
        "put on some jazz songs",
    ]
    D = emb.embed(docs)
    Q = emb.embed(queries)
    assert list(np.argmax(Q @ D.T, axis=1)) == list(range(len(docs)))


# Load time, query latency and documents a second are measured by bench/bench_static_embedder.py.


def test_import_needs_only_numpy():
    code = (
        "import sys; import selfmcp.embedders.static; "
        "bad = [m for m in ('torch', 'transformers', 'tokenizers', 'model2vec', 'sklearn', 'scipy') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
