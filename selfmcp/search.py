"""Search: what a skill is found by, how a query is scored, and the indexes that make it fast.

- Text analysis: `split_words`, `fts_terms`, `index_texts` (the FTS fields and the embedded text).
- Index writes: `Search.prepare()` computes the FTS fields and embedded text before a write's
  transaction (an update's embedding too: `prepare_unless_current`; no model call ever holds the write
  lock); `write()` puts the FTS row, summary and that embedding in the caller's transaction (and drops a
  vector of an older text); `after_commit()` updates the in-memory indexes and queues a skill written
  without a vector (every create): the worker embeds the queue in batches (selfmcp/embedwork.py).
- Scoring: keyword (FTS5 bm25, normalised by the best match), vector (cosine over the in-memory
  index of the active model), hybrid (VECTOR_WEIGHT * min-max cosine + the rest * keyword), then
  ranking with core skills damped.
- Upkeep: re-embedding of vectors that are missing or of another model, in the same worker.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from selfmcp.embedders.lazynp import np

from embeddings import Embedder, content_hash, decode, embed_with_model, encode
from selfmcp import embedwork, skillmd
from selfmcp.bm25 import KeywordIndex
from selfmcp.embedders.static import STOP_WORDS as ENGLISH_STOP_WORDS
from selfmcp.store import SkillStore, Statements

log = logging.getLogger("selfmcp.search")

SearchMode = Literal["keyword", "vector", "hybrid"]
SEARCH_MODES: tuple[str, ...] = ("keyword", "vector", "hybrid")
# Hybrid score = VECTOR_WEIGHT * minmax(cosine) + (1 - VECTOR_WEIGHT) * bm25 / best bm25.
VECTOR_WEIGHT = 0.7
# Core skills are about the server itself; keep them from crowding ordinary results.
CORE_SCORE_FACTOR = 0.6
KEYWORD_CANDIDATES = 200
# The in-memory keyword index is built in a background thread this many seconds after the
# registry opens (so the build and its numpy import stay off the path to the server's first
# answers); FTS5 answers keyword queries until it is ready.
KEYWORD_BUILD_DELAY_S = 0.3
VECTOR_CANDIDATES = 100
SHORT_DESCRIPTION_CHARS = 120
# bm25 weights of the FTS columns (name, description, tags); store.keyword_matches uses the same.
FTS_WEIGHTS = (1.0, 1.0, 0.5)
# An update whose text a concurrent update changed (TextMoved) embeds again and retries, this many tries in all.
UPDATE_ATTEMPTS = 3

# Query words that say nothing about which skill is wanted. SHORT_STOP_WORDS: English function
# words plus the words people use to ask for a tool at all. STOP_WORDS (used) adds scikit-learn's
# English list and more request words; measured on the dev set (README, "Search").
REQUEST_WORDS = frozenset("""
    want wants wanted need needs needed like get use using used tool tools help find please could would
    know tell give show looking look let lets able way something anything thing things recommend suggest
    provide available
    """.split())
SHORT_STOP_WORDS = ENGLISH_STOP_WORDS | frozenset("want need like get use using tool tools help find".split())
SKLEARN_STOP_WORDS = frozenset("""
    a about above across after afterwards again against all almost alone along already also although always
    am among amongst amoungst amount an and another any anyhow anyone anything anyway anywhere are around as
    at back be became because become becomes becoming been before beforehand behind being below beside
    besides between beyond bill both bottom but by call can cannot cant co con could couldnt cry de describe
    detail do done down due during each eg eight either eleven else elsewhere empty enough etc even ever every
    everyone everything everywhere except few fifteen fifty fill find fire first five for former formerly
    forty found four from front full further get give go had has hasnt have he hence her here hereafter
    hereby herein hereupon hers herself him himself his how however hundred i ie if in inc indeed interest
    into is it its itself keep last latter latterly least less ltd made many may me meanwhile might mill mine
    more moreover most mostly move much must my myself name namely neither never nevertheless next nine no
    nobody none noone nor not nothing now nowhere of off often on once one only onto or other others
    otherwise our ours ourselves out over own part per perhaps please put rather re same see seem seemed
    seeming seems serious several she should show side since sincere six sixty so some somehow someone
    something sometime sometimes somewhere still such system take ten than that the their them themselves
    then thence there thereafter thereby therefore therein thereupon these they thick thin third this those
    though three through throughout thru thus to together too top toward towards twelve twenty two un under
    until up upon us very via was we well were what whatever when whence whenever where whereafter whereas
    whereby wherein whereupon wherever whether which while whither who whoever whole whom whose why will
    with within without would yet you your yours yourself yourselves
    """.split())
STOP_WORDS = SHORT_STOP_WORDS | SKLEARN_STOP_WORDS | REQUEST_WORDS
# Query words of at least this many characters also match as prefixes ("conver"* finds
# "conversion"); 0 turns prefix terms off.
PREFIX_MIN_CHARS = 4

_WORD_RE = re.compile(r"[^\W_]+", re.UNICODE)
_CAMEL_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_A-Za-z]+", re.UNICODE)


# ------------------------------------------------------------------------ text analysis

def split_words(text: str) -> list[str]:
    """Words of `text`, with snake_case, kebab-case and CamelCase split apart, lowercased."""
    words: list[str] = []
    for token in _WORD_RE.findall(text):
        parts = _CAMEL_RE.findall(token) or [token]
        words.extend(p.lower() for p in parts)
    return words


def fts_terms(query: str) -> list[str]:
    """The query's words as FTS5 terms: stop words dropped, each quoted, longer ones as prefixes.

    Quoting makes FTS syntax in the query (NOT, OR, -, *, :, quotes) words to search
    for, never operators. A query of stop words only keeps them all. Words of
    PREFIX_MIN_CHARS or more also match longer words (`"word"*`).
    """
    return [f'"{w}"*' if prefix else f'"{w}"' for w, prefix in query_words(query)]


def query_words(query: str) -> list[tuple[str, bool]]:
    """The query's keyword terms as (word, matches as a prefix): see `fts_terms`."""
    words = split_words(query)
    terms = list(dict.fromkeys(w for w in words if w not in STOP_WORDS)) or list(dict.fromkeys(words))
    return [(w, bool(PREFIX_MIN_CHARS) and len(w) >= PREFIX_MIN_CHARS) for w in terms[:32]]


def short_description(description: str) -> str:
    text = " ".join(description.split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(first) > SHORT_DESCRIPTION_CHARS:
        first = first[: SHORT_DESCRIPTION_CHARS - 1].rstrip() + "…"
    return first


def index_texts(name: str, description: str, frontmatter: dict[str, object]) -> tuple[tuple[str, str, str], str]:
    """What a skill is found by: the (name, description, tags) fields of its FTS row and the embedded text.

    The FTS name field holds the name and its words split apart (`send_email send email`);
    the embedded text is `"{name}: {description} {tags}"`, the raw name, which the transformer's
    own tokenizer splits (on the dev set 1.2 points more hybrid recall@5 than the split name).
    """
    words = " ".join(split_words(name))
    tags = skillmd.frontmatter_search_text(frontmatter)
    text = " ".join(part for part in (f"{name}: {description}", tags) if part)
    return (f"{name} {words}", description, tags), text


# --------------------------------------------------------------------- in-memory indexes

class QueryCache:
    """A small LRU of query text -> (vector, model id), so repeated searches skip embedding."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[np.ndarray, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[np.ndarray, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, value: tuple[np.ndarray, str]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class VectorIndex:
    """One model's vectors in a contiguous matrix, kept in step with writes.

    Rows are L2-normalised, so cosine similarity is one matrix-vector product.
    Removal swaps the last row into the hole, keeping the matrix dense.
    """

    def __init__(self, model_id: str, dim: int, capacity: int = 64) -> None:
        self.model_id = model_id
        self.dim = dim
        self._matrix = np.zeros((max(64, capacity), dim), dtype=np.float32)
        self._ids = np.zeros(max(64, capacity), dtype=np.int64)
        self._row_of: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, skill_id: object) -> bool:
        return skill_id in self._row_of

    def upsert(self, skill_id: int, vector: np.ndarray) -> None:
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"vector of dimension {vector.shape[0]} in an index of dimension {self.dim}")
        with self._lock:
            row = self._row_of.get(skill_id)
            if row is None:
                row = len(self._row_of)
                if row >= self._matrix.shape[0]:
                    grow = max(64, self._matrix.shape[0] // 4)  # not doubling: 100,000 rows are 150 MB
                    self._matrix = np.vstack([self._matrix, np.zeros((grow, self.dim), np.float32)])
                    self._ids = np.concatenate([self._ids, np.zeros(grow, np.int64)])
                self._row_of[skill_id] = row
                self._ids[row] = skill_id
            self._matrix[row] = vector

    def remove(self, skill_id: int) -> None:
        with self._lock:
            row = self._row_of.pop(skill_id, None)
            if row is None:
                return
            last = len(self._row_of)
            if row != last:
                moved = int(self._ids[last])
                self._matrix[row] = self._matrix[last]
                self._ids[row] = moved
                self._row_of[moved] = row

    def similarities(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of `query` with every row: (skill ids, similarities), unordered."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise ValueError(f"query of dimension {query.shape[0]} against an index of dimension {self.dim}")
        with self._lock:
            n = len(self._row_of)
            return self._ids[:n].copy(), self._matrix[:n] @ query


# -------------------------------------------------------------------------------- search

@dataclass(frozen=True)
class IndexEntry:
    """A skill's search data, computed before its write transaction."""

    fields: tuple[str, str, str]
    text: str
    text_hash: str
    # Set for an update only (prepare_unless_current); a create's vector is made after the commit.
    vector: np.ndarray | None
    model: str | None
    # True when the skill wants a vector of this text: the write drops any old vector and
    # after_commit queues the skill for the worker.
    deferred: bool = False


class TextMoved(Exception):
    """A concurrent update changed a skill's text inside a write: roll back and prepare it again."""


class Search:
    """Keyword, vector and hybrid search over one store, and the upkeep of its derived data."""

    def __init__(self, store: SkillStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        self._query_cache = QueryCache()
        self._indexes: dict[str, VectorIndex] = {}
        self._index_lock = threading.Lock()
        self.embedding = embedwork.EmbeddingWorker(store, embedder, _embedded_text, self._publish)
        with store.read() as tx:
            self.core_ids = tx.core_ids()
        self.keywords = KeywordIndex(FTS_WEIGHTS)
        self._written: dict[tuple[int, int], tuple[str, str, str]] = {}
        threading.Thread(target=self._build_keywords, args=(KEYWORD_BUILD_DELAY_S,), name="selfmcp-keywords",
                         daemon=True).start()
        if hasattr(embedder, "on_recovered"):
            embedder.on_recovered = self.reembed_in_background

    # -- index writes

    def prepare(self, name: str, description: str, frontmatter: dict[str, object], *,
                embed: bool = True) -> IndexEntry:
        """The FTS fields and text of a skill about to be written; `embed`: it wants a vector of this text
        (made after the commit by the worker)."""
        fields, text = index_texts(name, description, frontmatter)
        return IndexEntry(fields, text, content_hash(text), None, None, deferred=embed)

    def prepare_unless_current(self, skill_id: int, name: str, description: str,
                               frontmatter: dict[str, object]) -> IndexEntry:
        """An update's entry: embedded now, unless the stored vector is already of this text.

        An update (rare, and one text) waits for its embedding, so its skill never lacks a vector
        after it returns; a create does not (see `prepare`).
        """
        entry = self.prepare(name, description, frontmatter, embed=False)
        with self.store.read() as tx:
            if self.has_current_vector(tx, skill_id, entry.text_hash):
                return entry
        vector, model = self._embed_one(entry.text)
        return dataclasses.replace(entry, vector=vector, model=model, deferred=vector is None)

    def settle(self, tx: Statements, skill_id: int, entry: IndexEntry, texts: tuple[str, str, dict[str, object]], *,
               retry: bool) -> tuple[IndexEntry, bool, bool]:
        """The entry to write in `tx` for the skill's text as it now is (`texts`): (entry, stale, moved).

        When a concurrent update changed the text after `entry` was prepared, the entry is of the wrong
        text: raise TextMoved (the caller rolls back, prepares again and retries) while `retry` allows,
        else write no vector (`moved`). A vector left out is deleted (`stale`, and queued), never left wrong.
        """
        actual = self.prepare(*texts, embed=False)
        moved = False
        if actual.text_hash != entry.text_hash:
            if retry and not self.has_current_vector(tx, skill_id, actual.text_hash):
                raise TextMoved()
            entry, moved = actual, True
        stale = entry.vector is None and not self.has_current_vector(tx, skill_id, entry.text_hash)
        if stale:  # a missing vector is what the re-embed pass looks for
            tx.delete_embedding(skill_id)
        return entry, stale, moved

    def has_current_vector(self, tx: Statements, skill_id: int, text_hash: str) -> bool:
        stored = tx.embedding_state(skill_id)
        return stored is not None and stored["content_hash"] == text_hash and stored["model"] == self.embedder.model_id

    def write(self, tx: Statements, skill_id: int, name: str, description: str, entry: IndexEntry, *,
              now: str) -> None:
        """Refresh a skill's FTS row, summary row and (when the entry has one) embedding, in `tx`."""
        summary = {"id": skill_id, "name": name, "short_description": short_description(description)}
        self._written[(threading.get_ident(), skill_id)] = entry.fields
        tx.write_search_row(skill_id, entry.fields, json.dumps(summary, ensure_ascii=False, separators=(",", ":")),
                            now=now)
        if entry.vector is not None and entry.model is not None:
            tx.upsert_embedding(skill_id, encode(entry.vector), int(entry.vector.shape[0]), entry.model,
                                entry.text_hash, now=now)
        elif entry.deferred:  # a reactivated skill's old vector is of its old text
            tx.delete_embedding(skill_id)

    def after_commit(self, skill_id: int, vector: np.ndarray | None, model: str | None, *, active: bool) -> None:
        """Bring the in-memory indexes in step with a committed write.

        An active skill written without a vector is queued: the worker embeds it in the background.
        """
        fields = self._written.pop((threading.get_ident(), skill_id), None)
        if not active:
            self.keywords.remove(skill_id)
        elif fields is not None:
            self.keywords.upsert(skill_id, fields)
        self._update_vector_index(skill_id, vector, model, active=active)
        if not active:
            self.embedding.queue.discard(skill_id)
        elif vector is None:
            self.embedding.queue.put(skill_id)
            self.embedding.start()

    def _publish(self, written: list[tuple[int, np.ndarray]], model: str) -> None:
        for skill_id, vector in written:
            self._update_vector_index(skill_id, vector, model, active=True)

    def _update_vector_index(self, skill_id: int, vector: np.ndarray | None, model: str | None, *,
                             active: bool) -> None:
        with self._index_lock:
            for index in self._indexes.values():
                index.remove(skill_id)
            if active and vector is not None and model in self._indexes:
                self._indexes[model].upsert(skill_id, vector)

    def _embed_one(self, text: str) -> tuple[np.ndarray | None, str | None]:
        """Embed one text now, unless the model is still loading (or fails): then (None, None), and the
        write queues the skill for the worker."""
        if not getattr(self.embedder, "ready", True):
            return None, None
        try:
            vectors, model = embed_with_model(self.embedder, [text])
        except Exception as exc:  # an embedder that cannot embed must not lose the write
            log.warning("could not embed skill text (%s); it will be embedded later", type(exc).__name__)
            return None, None
        return vectors[0], model

    def _search_rows(self, page: int = 1000) -> Iterator[list[tuple[int, tuple[str, str, str]]]]:
        """Every active skill's FTS fields, a page at a time (what `write` put in the FTS row)."""
        after = 0
        while True:
            with self.store.read() as tx:
                ids = [skill_id for skill_id, _ in tx.summary_page(after, page)]
                rows = tx.texts(ids) if ids else []
            if not ids:
                return
            yield [(r["id"], index_texts(r["name"], r["description"], skillmd.parse_body(r["body"]).frontmatter)[0])
                   for r in rows]
            after = ids[-1]

    def _build_keywords(self, delay_s: float = 0.0) -> None:
        time.sleep(delay_s)
        try:
            self.keywords.build(self._search_rows())
        except sqlite3.Error as exc:  # the database went away (the upkeep says so): no traceback
            log.warning("in-memory keyword index not built (%s); keyword search stays on FTS5", exc)
        except Exception:
            log.exception("in-memory keyword index not built; keyword search stays on FTS5")

    # -- queries

    def search(self, query: str, mode: SearchMode, top_k: int) -> dict[str, Any]:
        """Rank skills for `query` (arguments already validated); see the module docstring."""
        keyword = self._keyword_scores(query) if mode != "vector" else {}
        vector: dict[int, float] | None = None
        index: VectorIndex | None = None
        if mode != "keyword":
            # a small backlog of writes (a client that just created skills) is waited for; a bulk one is not
            self.embedding.queue.wait_for(embedwork.SEARCH_WAIT_BACKLOG, embedwork.SEARCH_WAIT_S)
            with self.embedding.searching():  # the worker waits meanwhile: a search comes first
                vector, index = self._vector_scores(query, mode, top_k)
        if mode == "keyword" or (mode == "hybrid" and vector is None):
            scores = keyword
        elif mode == "vector":
            scores = {i: max(0.0, s) for i, s in (vector or {}).items()}
        else:  # a skill still waiting for its vector (a bulk import's backlog) is ranked by its keywords alone
            scores = _fuse(keyword, vector or {}, {i for i in keyword if index is not None and i not in index})
        out: dict[str, Any] = {"query": query, "mode": mode, "results": self._rank(scores, top_k)}
        if mode != "keyword" and vector is None:
            out["note"] = "The query could not be embedded; results are keyword matches only."
        return out

    def _keyword_scores(self, query: str) -> dict[int, float]:
        """bm25 of the best KEYWORD_CANDIDATES, divided by the best: in memory once built, else FTS5."""
        words = query_words(query)
        if not words:
            return {}
        if self.keywords.ready:
            rows = [(skill_id, -score) for skill_id, score in self.keywords.scores(words, KEYWORD_CANDIDATES)]
        else:
            with self.store.read() as tx:
                rows = tx.keyword_matches(" OR ".join(fts_terms(query)), KEYWORD_CANDIDATES)
        if not rows:
            return {}
        best = -rows[0][1]
        if best <= 0:
            return {r[0]: 1.0 for r in rows}
        return {r[0]: max(0.0, -r[1]) / best for r in rows}

    def _query_vector(self, query: str) -> tuple[np.ndarray, str] | None:
        cached = self._query_cache.get(query)
        if cached is not None:
            return cached
        try:
            vectors, model = embed_with_model(self.embedder, [query])
        except Exception as exc:
            log.warning("could not embed the query (%s)", type(exc).__name__)
            return None
        item = (vectors[0], model)
        if model == self.embedder.model_id:  # don't cache fallback vectors past an outage
            self._query_cache.put(query, item)
        return item

    def _index(self, model: str, dim: int) -> VectorIndex:
        """The in-memory index of `model`'s vectors, loaded from the database on first use."""
        with self._index_lock:
            index = self._indexes.get(model)
            if index is not None and index.dim == dim:
                return index
            with self.store.read() as tx:
                index = VectorIndex(model, dim, capacity=tx.count_active() + 64)  # room for every skill
                for skill_id, blob in tx.active_vectors(model, dim):
                    index.upsert(skill_id, decode(blob))
            self._indexes[model] = index
            return index

    def _vector_scores(self, query: str, mode: SearchMode,
                       top_k: int) -> tuple[dict[int, float] | None, VectorIndex | None]:
        """Cosine similarity of the best candidates (None when the query can't be embedded), and the index.

        Hybrid takes VECTOR_CANDIDATES, min-max normalised over every skill of the model, so
        they fuse with keyword scores on one scale; vector mode takes top_k raw cosines.
        """
        found = self._query_vector(query)
        if found is None:
            return None, None
        qvec, model = found
        if not np.any(qvec):
            return {}, None
        index = self._index(model, int(qvec.shape[0]))
        ids, sims = index.similarities(qvec)
        if len(ids) == 0:
            return {}, index
        candidates = VECTOR_CANDIDATES if mode == "hybrid" else top_k
        take = min(candidates, len(ids))
        top = np.argpartition(-sims, take - 1)[:take]
        if mode == "hybrid":
            lo, hi = float(sims.min()), float(sims.max())
            span = hi - lo if hi > lo else 1.0
            return {int(ids[i]): (float(sims[i]) - lo) / span for i in top}, index
        return {int(ids[i]): float(sims[i]) for i in top}, index

    def _rank(self, scores: dict[int, float], top_k: int) -> list[dict[str, Any]]:
        """The `top_k` best of `scores` (ties by id) as summary records with their score."""
        if not scores:
            return []
        adjusted = dict(scores)
        for i in self.core_ids & adjusted.keys():
            adjusted[i] *= CORE_SCORE_FACTOR
        # Deleted skills are already out of the FTS table and the vector index; fetching a
        # few spare rows covers one deleted between the index lookup and this query.
        best = heapq.nsmallest(top_k + 5, adjusted.items(), key=lambda item: (-item[1], item[0]))
        ordered = [i for i, _ in best]
        with self.store.read() as tx:
            found = tx.active_summaries(ordered)
        results = []
        for i in ordered:
            if i in found and len(results) < top_k:
                item = json.loads(found[i])
                item["score"] = round(min(1.0, max(0.0, adjusted[i])), 4)
                results.append(item)
        return results

    # -- embeddings upkeep (selfmcp/embedwork.py)

    def stale_embeddings(self, limit: int | None = None) -> list[int]:
        """Active skills with no vector of the active model (missing, or another model's).

        Writes keep vectors in step with the text, deleting a vector they could not
        refresh, so this needs no text comparison and stays one indexed query.
        """
        return self.embedding.stale(limit)

    def reembed_stale(self, batch_size: int = 64, progress: Callable[[int, int], None] | None = None, *,
                      ids: list[int] | None = None) -> int:
        """Re-embed every stale vector (or the skills `ids`) now, in batches; how many were written."""
        return self.embedding.reembed_stale(batch_size, progress, ids=ids)

    def reembed_in_background(self) -> threading.Thread | None:
        """Re-embed stale vectors in the worker thread; None when it runs already (it makes the pass)."""
        return self.embedding.reembed_in_background()

    @property
    def reembed_paused(self) -> bool:
        return self.embedding.paused

    @property
    def _reembed_lock(self) -> threading.Lock:
        return self.embedding.lock

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the background work is done: the keyword index built, every queued skill embedded, no
        pass running (before closing the database, or to read the tables); whether it is."""
        deadline = time.monotonic() + timeout
        if not self.keywords.wait_ready(timeout):
            return False
        while len(self.embedding.queue) or self.embedding.lock.locked():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def _embedded_text(row: Any) -> str:
    return index_texts(row["name"], row["description"], skillmd.parse_body(row["body"]).frontmatter)[1]


def _fuse(keyword: dict[int, float], vector: dict[int, float], unembedded: set[int]) -> dict[int, float]:
    """VECTOR_WEIGHT * vector + the rest * keyword; a skill with no vector yet scores its keyword score."""
    ids = set(keyword) | set(vector)
    return {i: keyword[i] if i in unembedded else
            VECTOR_WEIGHT * vector.get(i, 0.0) + (1 - VECTOR_WEIGHT) * keyword.get(i, 0.0) for i in ids}
