"""Embedding in the background: the queue of written skills waiting for a vector, and re-embedding passes.

- A create (or reactivation) does not embed: it commits the skill row, FTS row and summary without a
  vector (a reactivated skill's old one is deleted in the same transaction), then `EmbedQueue.put`s
  the skill id; `skill_create` waits for no model at all. An update embeds its one text before its
  transaction (so after it returns the vector is of the new text); one that could not (model still
  loading, or failing) is queued too.
- One daemon thread (`EmbeddingWorker.start`) embeds the queue QUEUE_BATCH texts at a time: a batched
  forward pass costs MiniLM ~3-5x less per text than one text at a time. Each vector is written in a
  short transaction only if the skill's text is still the one embedded (a concurrent update re-queues
  it), then put in the in-memory vector index. The thread runs at a lower CPU priority
  (WORKER_NICE), so on a busy machine searches and writes come first.
- Searches wait for a small backlog (`EmbedQueue.wait_for`, at most SEARCH_WAIT_BACKLOG texts for at
  most SEARCH_WAIT_S), so a client that creates then searches finds its skill by meaning too; a
  larger backlog (a bulk import) is not waited for: keyword search finds those skills meanwhile.
- Nothing is lost on a crash: a skill without a vector of the active model is what
  `stale_embeddings()` finds, and the upkeep (selfmcp/upkeep.py) asks for a re-embedding pass at
  start-up and every 30 s. A pass runs in the same thread, a batch at a time, the queue first;
  it skips skills the queue embedded meanwhile and pauses when the active model does not answer.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import db
from embeddings import Embedder, content_hash, embed_with_model, encode
from selfmcp.embedders.lazynp import np
from selfmcp.store import SkillStore, now_text

log = logging.getLogger("selfmcp.search")

QUEUE_BATCH = 64
REEMBED_BATCH = 64
SEARCH_WAIT_BACKLOG = 256
SEARCH_WAIT_S = 3.0
WORKER_NICE = 10
# Seconds the thread waits before loading a model that is not loaded yet.
WARM_UP_DELAY_S = 0.5
# Database passes one run of the thread makes at most (writes during a pass can leave new gaps).
MAX_PASSES = 10
# The worker embeds EMBED_CHUNK texts at a time and, before each chunk, waits while a search computes its
# vector scores (and SEARCH_GRACE_S after the last one), at most YIELD_MAX_S: searches come first.
EMBED_CHUNK = 16
SEARCH_GRACE_S = 0.05
YIELD_MAX_S = 0.5
# Times a queued batch is tried again when the database stays locked (then the upkeep's next round).
BUSY_RETRIES = 3

Publish = Callable[[list[tuple[int, "np.ndarray"]], str], None]  # a string: np is imported on first use


class EmbedQueue:
    """Skill ids waiting for a vector, oldest first; a skill queued again while embedded is embedded again."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: dict[int, int] = {}  # skill id -> sequence number of its latest put
        self._seq = 0

    def __len__(self) -> int:
        with self._cv:
            return len(self._pending)

    def put(self, skill_id: int) -> None:
        with self._cv:
            self._seq += 1
            self._pending.pop(skill_id, None)
            self._pending[skill_id] = self._seq

    def discard(self, skill_id: int) -> None:
        with self._cv:
            if self._pending.pop(skill_id, None) is not None:
                self._cv.notify_all()

    def take(self, n: int) -> dict[int, int]:
        """The `n` oldest entries (they stay queued until `done`)."""
        with self._cv:
            return dict(itertools.islice(self._pending.items(), n))

    def done(self, taken: dict[int, int]) -> None:
        """Drop what `take` returned, except skills queued again since."""
        with self._cv:
            for skill_id, seq in taken.items():
                if self._pending.get(skill_id) == seq:
                    del self._pending[skill_id]
            self._cv.notify_all()

    def clear(self) -> None:
        with self._cv:
            self._pending.clear()
            self._cv.notify_all()

    def wait_for(self, max_backlog: int, timeout: float) -> bool:
        """Wait until every skill queued now is embedded, if they are at most `max_backlog`, for at most
        `timeout` seconds; True when none of them is left."""
        deadline = time.monotonic() + timeout
        with self._cv:
            if not self._pending:
                return True
            if len(self._pending) > max_backlog:
                return False
            waiting = list(self._pending)
            while True:
                waiting = [i for i in waiting if i in self._pending]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    return not waiting
                self._cv.wait(left)


class EmbeddingWorker:
    """The queue, the thread that empties it, and re-embedding passes over the database (module docstring)."""

    def __init__(self, store: SkillStore, embedder: Embedder, text_of: Callable[[sqlite3.Row], str],
                 publish: Publish) -> None:
        self.store = store
        self.embedder = embedder
        self.text_of = text_of  # the embedded text of a (id, name, description, body) row
        self.publish = publish  # (written [(skill id, vector)], model): into the in-memory index
        self.queue = EmbedQueue()
        self.lock = threading.Lock()  # held by the running thread
        self._wanted = threading.Event()  # a database pass is asked for
        self.paused = False
        self._search_cv = threading.Condition()
        self._searches = 0
        self._last_search = 0.0

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        """Around a search's own work: the worker does not start a chunk meanwhile."""
        with self._search_cv:
            self._searches += 1
        try:
            yield
        finally:
            with self._search_cv:
                self._searches -= 1
                self._last_search = time.monotonic()
                self._search_cv.notify_all()

    def _yield_to_searches(self) -> None:
        deadline = time.monotonic() + YIELD_MAX_S
        with self._search_cv:
            while True:
                now = time.monotonic()
                wait = deadline - now if self._searches else min(deadline, self._last_search + SEARCH_GRACE_S) - now
                if wait <= 0:
                    return
                self._search_cv.wait(wait)

    def stale(self, limit: int | None = None) -> list[int]:
        """Active skills with no vector of the active model (missing, or another model's): one indexed query."""
        with self.store.read() as tx:
            return tx.stale_embedding_ids(self.embedder.model_id, limit)

    def embed_batch(self, ids: Sequence[int], *, any_model: bool, skip_current: bool = False) -> int | None:
        """Embed the skills `ids` as their text is now and write the vectors still of that text; how many.

        None (nothing written) when the active model did not answer (a fallback did) and not `any_model`.
        `skip_current` leaves out skills that already have a vector of this text and model.
        """
        with self.store.read() as tx:
            rows = tx.texts(ids)
            texts = [self.text_of(r) for r in rows]
            if skip_current:
                keep = [i for i, (r, t) in enumerate(zip(rows, texts, strict=True))
                        if not self._is_current(tx.embedding_state(r["id"]), t)]
                rows, texts = [rows[i] for i in keep], [texts[i] for i in keep]
        if not rows:
            return 0
        vectors, model = self._embed(texts)
        if model != self.embedder.model_id and not any_model:
            return None
        now = now_text()
        written = []
        with self.store.write() as tx:
            # An update may have changed a text while it was embedded: keep only vectors of the text as it is.
            current = {r["id"]: r for r in tx.texts([row["id"] for row in rows])}
            for row, text, vector in zip(rows, texts, vectors, strict=True):
                now_row = current.get(row["id"])
                if now_row is None or tuple(now_row) != tuple(row):
                    continue
                tx.upsert_embedding(row["id"], encode(vector), int(vector.shape[0]), model, content_hash(text), now=now)
                written.append((row["id"], vector))
        self.publish(written, model)
        return len(written)

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, str]:
        """`texts` embedded EMBED_CHUNK at a time, each chunk after any search running now."""
        chunks = []
        for start in range(0, len(texts), EMBED_CHUNK):
            self._yield_to_searches()
            chunks.append(embed_with_model(self.embedder, texts[start:start + EMBED_CHUNK]))
        if len({model for _, model in chunks}) > 1:  # a fallback took over midway: one model for the batch
            return embed_with_model(self.embedder, texts)
        return np.concatenate([v for v, _ in chunks]), chunks[0][1]

    def _is_current(self, stored: sqlite3.Row | None, text: str) -> bool:
        return (stored is not None and stored["model"] == self.embedder.model_id
                and stored["content_hash"] == content_hash(text))

    def reembed_stale(self, batch_size: int = REEMBED_BATCH, progress: Callable[[int, int], None] | None = None, *,
                      ids: list[int] | None = None) -> int:
        """Re-embed every stale vector (or the skills `ids`) with the active model, in this thread; how many
        were written. Each batch commits on its own; searches use the vectors made so far."""
        stale = self.stale() if ids is None else ids
        done = 0
        self.paused = False
        for start in range(0, len(stale), batch_size):
            written = self.embed_batch(stale[start:start + batch_size], any_model=False)
            if written is None:
                log.warning("re-embedding paused: the active model is not answering")
                self.paused = True
                break
            done += written
            if progress is not None:
                progress(done, len(stale))
        return done

    def reembed_in_background(self) -> threading.Thread | None:
        """Ask for a database pass (in the thread; None when it was running already: it makes the pass)."""
        self._wanted.set()
        return self.start()

    def start(self) -> threading.Thread | None:
        """Start the thread unless it runs; it stops when the queue is empty and no pass is wanted."""
        if not self.lock.acquire(blocking=False):
            return None
        thread = threading.Thread(target=self._run, name="selfmcp-embed", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        failed = False
        try:
            # below the request threads: on a busy machine they come first
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
            warm_up = getattr(self.embedder, "warm_up", None)
            if warm_up is not None:
                if not getattr(self.embedder, "ready", True):
                    # Let start-up finish first (the server answers tools/list meanwhile);
                    # a query that needs the model sooner loads it itself.
                    time.sleep(WARM_UP_DELAY_S)
                warm_up()
            self._work()
        except Exception as exc:
            failed = True
            if isinstance(exc, sqlite3.Error):  # the database is locked or went away: one line, no traceback
                log.warning("embedding stopped (%s); the upkeep embeds what is left at its next round", exc)
            else:
                log.exception("embedding failed; the upkeep embeds what is left at its next round")
            self.queue.clear()  # those skills have no vector: stale_embeddings() finds them
        finally:
            self.lock.release()
        # Work that came between the last look and the release: its start() found the lock held.
        if not failed and (len(self.queue) or (self._wanted.is_set() and not self.paused)):
            self.start()

    def _work(self) -> None:
        pending: list[int] = []
        total = done = count = passes = busy = 0
        while True:
            taken = self.queue.take(QUEUE_BATCH)
            if taken:  # writes first: a search may be waiting for them
                try:
                    self.embed_batch(list(taken), any_model=True)
                except sqlite3.OperationalError as exc:  # another writer held the lock past busy_timeout
                    busy += 1
                    if busy > BUSY_RETRIES or isinstance(exc, db.StorageUnavailable):
                        raise
                    log.warning("could not write vectors (%s); trying again", exc)
                    time.sleep(busy)
                    continue  # still queued
                busy = 0
                self.queue.done(taken)
                continue
            if pending:
                batch, pending = pending[:REEMBED_BATCH], pending[REEMBED_BATCH:]
                written = self.embed_batch(batch, any_model=False, skip_current=True)
                if written is None:
                    log.warning("re-embedding paused: the active model is not answering")
                    self.paused = True
                    return
                done += written
                if written:
                    log.info("re-embedded %d/%d skills with %s", done, total, self.embedder.model_id)
                if pending:
                    continue
                count += done
                if done and self.stale(limit=1):  # writes during the pass left new gaps
                    self._wanted.set()
            if not self._wanted.is_set() or passes >= MAX_PASSES:
                if count:
                    log.info("re-embedding finished: %d skills", count)
                return
            self._wanted.clear()
            self.paused = False
            passes += 1
            pending = self.stale()
            total, done = len(pending), 0

