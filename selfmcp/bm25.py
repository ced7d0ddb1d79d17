"""Keyword scoring in memory: SQLite FTS5's bm25, computed over numpy postings.

FTS5 scores every row that matches any query term; at 100,000 skills with a small vocabulary
that is ~45 ms a query (quiet machine), ~40 ms of it just stepping through the matches. This
index holds the same postings in memory and scores them with numpy (a few ms):

- Tokens are FTS5's own: words split as unicode61 does are stemmed by a `porter unicode61`
  FTS5 table in a private in-memory SQLite database (`fts5vocab` reads the stems back; each
  distinct word once), so the index and the FTS table agree on what a word is.
- Score: FTS5's bm25 (k1 = 1.2, b = 0.75, column weights, document length over all columns,
  idf = log((N - n + 0.5) / (n + 0.5)), at least 1e-6); a prefix term (`"word"*`) is one
  phrase whose hits are those of every indexed term starting with the word's stem.
- Writes: `upsert(skill_id, fields)` and `remove(skill_id)` keep it in step (rows are
  appended; a removed row is masked out and the postings are compacted when a third is dead).
- `build(rows)` fills it from the FTS table's rows; until then `ready` is false, writes wait in a
  list and search uses FTS5, so start-up never waits for it (nor imports numpy: see lazynp).
"""

from __future__ import annotations

import array
import bisect
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence

from selfmcp.embedders.lazynp import np

K1, B = 1.2, 0.75
_BATCH = 500


_CHUNK_RE = re.compile(r"[^\W_]+")
_STEM_CACHE_SIZE = 200_000


class Fts5Tokens:
    """FTS5 `porter unicode61` tokens of texts.

    Words are runs of letters and digits (as unicode61 splits them), lower-cased; each distinct
    word is stemmed once by FTS5 itself, in a private in-memory database per thread, and cached.
    """

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self._local = threading.local()
        self._stems: dict[str, tuple[str, ...]] = {}

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.execute("create virtual table t using fts5(x, tokenize = 'porter unicode61')")
            conn.execute("create virtual table v using fts5vocab(t, instance)")
            self._local.conn = conn
        return conn

    def _stem_new(self, words: list[str]) -> None:
        conn = self._conn()
        found: list[list[str]] = [[] for _ in words]
        conn.execute("begin")
        try:
            conn.executemany("insert into t(rowid, x) values (?, ?)", list(enumerate(words)))
            for term, doc in conn.execute("select term, doc from v order by doc, offset"):
                found[doc].append(term)
            conn.execute("delete from t")
        finally:
            conn.execute("commit")
        if len(self._stems) + len(words) > _STEM_CACHE_SIZE:
            self._stems = {}
        # one shared string per stem: the index holds many references to few strings
        shared = {}
        for word, terms in zip(words, found, strict=True):
            self._stems[word] = tuple(shared.setdefault(t, t) for t in terms)

    def _chunks(self, text: str) -> list[str]:
        return _CHUNK_RE.findall(text.lower())

    def of_rows(self, rows: Sequence[Sequence[str]]) -> list[list[tuple[str, int]]]:
        """For each row of column texts: its (term, column) tokens, in order."""
        chunked = [[self._chunks(text) for text in row] for row in rows]
        stems = self._stems
        new = {c for row in chunked for col in row for c in col if c not in stems}
        if new:
            self._stem_new(sorted(new))
            stems = self._stems
        out: list[list[tuple[str, int]]] = []
        for row in chunked:
            tokens = []
            for col, chunks in enumerate(row):
                for chunk in chunks:
                    tokens.extend((term, col) for term in stems[chunk])
            out.append(tokens)
        return out

    def of_words(self, words: Sequence[str]) -> list[str | None]:
        """The stem of each word (None for a word that gives no token)."""
        stems: list[str | None] = [None] * len(words)
        for i, tokens in enumerate(self.of_rows([(w,) for w in words])):
            if tokens:
                stems[i] = tokens[0][0]
        return stems


class _Postings:
    """One term's postings: rows and column-weighted frequencies, in growable arrays."""

    __slots__ = ("rows", "freqs", "size", "live")

    def __init__(self) -> None:
        self.rows = np.empty(8, dtype=np.int32)
        self.freqs = np.empty(8, dtype=np.float32)
        self.size = 0
        self.live = 0

    def add(self, row: int, freq: float) -> None:
        if self.size == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty(self.size, np.int32)])
            self.freqs = np.concatenate([self.freqs, np.empty(self.size, np.float32)])
        self.rows[self.size] = row
        self.freqs[self.size] = freq
        self.size += 1
        self.live += 1


class KeywordIndex:
    """bm25 over (name, description, tags) fields of skills, in memory; see the module docstring."""

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 0.5)) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.tokens = Fts5Tokens(len(self.weights))
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._pending: list[tuple[int, Sequence[str] | None]] | None = []
        self._row_of: dict[int, int] = {}  # the rest (numpy arrays) comes with build(): nothing is applied before

    def _reset(self) -> None:
        self._postings: dict[str, _Postings] = {}
        self._sorted_terms: list[str] | None = []
        self._row_of: dict[int, int] = {}
        self._doc_terms: list[tuple[str, ...]] = []
        self._skill = np.zeros(1024, dtype=np.int64)
        self._length = np.zeros(1024, dtype=np.float32)
        self._alive = np.zeros(1024, dtype=np.float32)
        self._rows = 0
        self._total_length = 0.0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until `build()` is done (at most `timeout` seconds); whether it is."""
        return self._ready.wait(timeout)

    def __len__(self) -> int:
        return len(self._row_of)

    # -- writes

    def build(self, batches: Iterable[Sequence[tuple[int, Sequence[str]]]]) -> None:
        """Index every (skill id, fields) row of an empty index, then apply the writes that came
        meanwhile (they wait in a list); then `ready`."""
        with self._lock:
            self._reset()
        # typed arrays, not lists: millions of postings as Python ints and floats would leave RSS ~100 MB
        # higher at 100,000 skills (freed objects stay in the allocator's arenas)
        rows_of: dict[str, array.array[int]] = {}
        freqs_of: dict[str, array.array[float]] = {}
        for batch in batches:
            for start in range(0, len(batch), _BATCH):
                part = batch[start:start + _BATCH]
                tokens = self.tokens.of_rows([fields for _, fields in part])
                with self._lock:
                    for (skill_id, _), toks in zip(part, tokens, strict=True):
                        freq = self._frequencies(toks)
                        row = self._new_row(skill_id, len(toks), freq)
                        for term, f in freq.items():
                            if term not in rows_of:
                                rows_of[term], freqs_of[term] = array.array("i"), array.array("f")
                            rows_of[term].append(row)
                            freqs_of[term].append(f)
        with self._lock:
            for term, rows in rows_of.items():
                postings = self._postings[term] = _Postings()
                postings.rows = np.frombuffer(rows, dtype=np.int32).copy()
                postings.freqs = np.frombuffer(freqs_of[term], dtype=np.float32).copy()
                postings.size = postings.live = len(rows)
            self._sorted_terms = None
            pending, self._pending = self._pending or [], None
            for skill_id, fields in pending:
                self._apply(skill_id, fields)
            self._ready.set()

    def upsert(self, skill_id: int, fields: Sequence[str]) -> None:
        self._write(skill_id, tuple(fields))

    def remove(self, skill_id: int) -> None:
        self._write(skill_id, None)

    def _write(self, skill_id: int, fields: Sequence[str] | None) -> None:
        with self._lock:
            if self._pending is not None:  # building: replayed when the build is done
                self._pending.append((skill_id, fields))
                return
            self._apply(skill_id, fields)

    def _apply(self, skill_id: int, fields: Sequence[str] | None) -> None:
        self._drop(skill_id)
        if fields is not None:
            self._add(skill_id, self.tokens.of_rows([fields])[0])
        dead = self._rows - len(self._row_of)
        if dead > 1000 and dead * 3 > self._rows:
            self._compact()

    def _frequencies(self, tokens: list[tuple[str, int]]) -> dict[str, float]:
        """Column-weighted frequency of each term (FTS5 bm25's per-row phrase frequency)."""
        freq: dict[str, float] = {}
        weights = self.weights
        for term, col in tokens:
            freq[term] = freq.get(term, 0.0) + weights[col]
        return freq

    def _new_row(self, skill_id: int, length: int, freq: dict[str, float]) -> int:
        self._drop(skill_id)
        row = self._rows
        if row == len(self._skill):
            grow = len(self._skill)
            self._skill = np.concatenate([self._skill, np.zeros(grow, np.int64)])
            self._length = np.concatenate([self._length, np.zeros(grow, np.float32)])
            self._alive = np.concatenate([self._alive, np.zeros(grow, np.float32)])
        self._rows += 1
        self._skill[row], self._length[row], self._alive[row] = skill_id, length, 1.0
        self._row_of[skill_id] = row
        self._doc_terms.append(tuple(freq))
        self._total_length += length
        return row

    def _add(self, skill_id: int, tokens: list[tuple[str, int]]) -> None:
        freq = self._frequencies(tokens)
        row = self._new_row(skill_id, len(tokens), freq)
        for term, f in freq.items():
            postings = self._postings.get(term)
            if postings is None:
                postings = self._postings[term] = _Postings()
                self._sorted_terms = None
            postings.add(row, f)

    def _drop(self, skill_id: int) -> None:
        row = self._row_of.pop(skill_id, None)
        if row is None:
            return
        self._alive[row] = 0.0
        self._total_length -= float(self._length[row])
        for term in self._doc_terms[row]:
            self._postings[term].live -= 1

    def _compact(self) -> None:
        live = [(int(self._skill[r]), r) for r in self._row_of.values()]
        old_terms, old_postings = self._doc_terms, self._postings
        weights = {}
        for term, p in old_postings.items():
            for r, f in zip(p.rows[:p.size].tolist(), p.freqs[:p.size].tolist(), strict=True):
                weights.setdefault(r, {})[term] = f
        lengths = self._length.copy()
        self._reset()
        for skill_id, r in sorted(live, key=lambda item: item[1]):
            row = self._rows
            self._rows += 1
            self._skill[row], self._length[row], self._alive[row] = skill_id, lengths[r], 1.0
            self._row_of[skill_id] = row
            self._doc_terms.append(old_terms[r])
            self._total_length += float(lengths[r])
            for term, f in weights.get(r, {}).items():
                postings = self._postings.get(term)
                if postings is None:
                    postings = self._postings[term] = _Postings()
                postings.add(row, f)
        self._sorted_terms = None

    # -- queries

    def scores(self, words: Sequence[tuple[str, bool]], limit: int) -> list[tuple[int, float]]:
        """The `limit` best (skill id, bm25) for query words given as (word, is_prefix); best first."""
        stems = self.tokens.of_words([w for w, _ in words])
        with self._lock:
            n_docs = len(self._row_of)
            if n_docs == 0:
                return []
            avgdl = max(self._total_length / n_docs, 1e-9)
            rows = self._rows
            total = np.zeros(rows, dtype=np.float64)
            norm = K1 * (1 - B + B * self._length[:rows] / avgdl)
            alive = self._alive[:rows]
            for stem, (_, prefix) in zip(stems, words, strict=True):
                if stem is None:
                    continue
                terms = self._prefixed(stem) if prefix else ([stem] if stem in self._postings else [])
                if not terms:
                    continue
                if len(terms) == 1:
                    p = self._postings[terms[0]]
                    hit_rows, f = p.rows[:p.size], p.freqs[:p.size] * alive[p.rows[:p.size]]
                else:
                    dense = np.zeros(rows, dtype=np.float32)
                    for term in terms:
                        p = self._postings[term]
                        dense[p.rows[:p.size]] += p.freqs[:p.size]
                    dense *= alive
                    hit_rows = np.flatnonzero(dense)
                    f = dense[hit_rows]
                keep = f > 0
                hit_rows, f = hit_rows[keep], f[keep]
                hits = len(hit_rows)
                if hits == 0:
                    continue
                idf = math.log((n_docs - hits + 0.5) / (hits + 0.5))
                idf = idf if idf > 0 else 1e-6
                total[hit_rows] += idf * (f * (K1 + 1)) / (f + norm[hit_rows])
            found = np.flatnonzero(total)
            if len(found) == 0:
                return []
            if len(found) > limit:
                found = found[np.argpartition(-total[found], limit - 1)[:limit]]
            order = found[np.lexsort((self._skill[found], -total[found]))]
            return [(int(self._skill[r]), float(total[r])) for r in order]

    def _prefixed(self, stem: str) -> list[str]:
        if self._sorted_terms is None:
            self._sorted_terms = sorted(self._postings)
        terms = self._sorted_terms
        start = bisect.bisect_left(terms, stem)
        end = bisect.bisect_left(terms, stem + "\U0010ffff")
        return [t for t in terms[start:end] if self._postings[t].live > 0]
