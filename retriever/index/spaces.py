"""Retrieval spaces kept in step with the catalog.

A space is a rebuildable cache of catalog data: a vector index of one dense space's vectors
(any ``VectorIndex``, from the backend ``index.backend`` names), or the BM25 index of item
texts. Each knows the change-log sequence number it covers; ``sync()`` replays what it lacks.
Writers and readers share this one path: after a commit the writer syncs exactly like a
reader does, so the index always holds the float16 vectors the catalog holds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from retriever.catalog import Catalog
from retriever.config import IndexConfig
from retriever.errors import StoreError
from retriever.index.base import IndexBackend, IndexTarget, VectorIndex
from retriever.index.bm25 import Bm25Index
from retriever.index.registry import backend_for
from retriever.types import Space

__all__ = ["DenseSpace", "LexicalSpace", "catalog_head"]


def catalog_head(catalog: Catalog) -> int:
    """The newest change-log sequence number (the log may have been truncated)."""
    return max(catalog.max_seq(), catalog.log_floor())


class DenseSpace:
    """One dense space: its vector index, replayed from the catalog's change log.

    ``seq`` is the change-log position the index in memory covers; ``saved_seq`` the one its
    durable state covers (-1: nothing durable that is current).
    """

    def __init__(self, name: str, dim: int, directory: Path, catalog: Catalog, cfg: IndexConfig,
                 backend: IndexBackend | None = None) -> None:
        self.name, self.dim, self.directory, self.catalog, self.cfg = name, dim, directory, catalog, cfg
        self.backend = backend if backend is not None else backend_for(cfg)
        self.target = IndexTarget(name, dim, directory, cfg)
        self.index: VectorIndex | None = None
        self.seq = 0
        self.saved_seq = -1
        self._lock = threading.RLock()

    def open(self) -> None:
        """Open the persisted index (or rebuild it from the catalog) and replay the log."""
        with self._lock:
            try:
                loaded = self.backend.open(self.target)
            except StoreError:
                loaded = None  # unreadable cache: rebuilt below from the durable vectors
            if loaded is not None and loaded.dim == self.dim and loaded.covered_seq() >= self.catalog.log_floor():
                self.index, self.seq = loaded, loaded.covered_seq()
                self.saved_seq = self.seq
            else:
                self.rebuild()
            self.sync()

    def rebuild(self) -> None:
        """A fresh index from the catalog's durable vectors (no re-encoding)."""
        with self._lock:
            head = catalog_head(self.catalog)
            index = self.backend.create(self.target, n_hint=len(self.catalog.item_ids(self.name)))
            for ids, vecs in self.catalog.iter_vectors(self.name):
                index.add(ids, vecs)
            self.index, self.seq, self.saved_seq = index, head, -1

    def sync(self) -> int:
        """Apply catalog changes newer than this index; returns how many were applied."""
        with self._lock:
            if self.index is None or self.seq < self.catalog.log_floor():
                self.open()  # not opened yet, or the log was truncated past us: reload
                return 0
            changes = self.catalog.changes_since(self.seq)
            if not changes:
                return 0
            self._apply(self.index, changes)
            self.seq = changes[-1][0]
            return len(changes)

    def _apply(self, index: VectorIndex, changes: list[tuple[int, str, int]]) -> None:
        last_op: dict[int, str] = {}
        for _, op, item_id in changes:
            last_op[item_id] = op
        removed = np.fromiter((i for i, op in last_op.items() if op == "del"), dtype=np.int64)
        added = [i for i, op in last_op.items() if op == "add"]
        if len(removed):
            index.remove(removed)
        if added:
            ids, vecs = self.catalog.vectors(self.name, added)
            if not len(ids):  # none of them has a vector in this space (e.g. images in the text space)
                return
            present = index.ids()
            fresh = ~np.isin(ids, present) if len(present) else np.ones(len(ids), dtype=bool)
            index.add(ids[fresh], vecs[fresh])

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            index = self.index
        if index is None:
            return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
        return index.search(query, k)

    def maintain(self) -> None:
        """Rebuild when the index asks for it (its kind no longer fits its size, tombstones pile up)."""
        with self._lock:
            if self.index is not None and self.index.needs_rebuild():
                self.rebuild()

    def save(self) -> None:
        """Make the index durable as covering ``seq`` (nothing to do when it already is)."""
        with self._lock:
            if self.index is not None and self.seq != self.saved_seq:
                self.index.persist(self.seq)
                self.saved_seq = self.seq

    def discard(self) -> None:
        """Forget the persisted index; the next open rebuilds it from the catalog."""
        with self._lock:
            self.backend.discard(self.target)
            self.saved_seq = -1

    def __len__(self) -> int:
        index = self.index
        return index.count() if index is not None else 0


class LexicalSpace:
    """The BM25 space: rebuilt from catalog texts when the catalog moved on.

    While the catalog changes, a rebuild happens at most every ``refresh_s`` seconds
    (``index.bm25_refresh_s``) unless forced; writers force one before saving.
    """

    name = Space.BM25

    def __init__(self, directory: Path, catalog: Catalog, refresh_s: float = 2.0) -> None:
        self.directory, self.catalog, self.refresh_s = directory, catalog, refresh_s
        self.index = Bm25Index()
        self.seq = -1
        self.saved_seq = -1
        self._built_at = 0.0
        self._lock = threading.Lock()

    def open(self) -> None:
        try:
            loaded = Bm25Index.load(self.directory, self.name)
        except StoreError:
            loaded = None  # unreadable cache: rebuilt below from the catalog texts
        if loaded is not None:
            self.index, self.seq = loaded
            self.saved_seq = self.seq
        self.sync(force=True)

    def sync(self, force: bool = False) -> bool:
        """Rebuild if stale; at most every ``refresh_s`` seconds unless ``force``."""
        with self._lock:
            head = catalog_head(self.catalog)
            if head == self.seq:
                return False
            if not force and time.monotonic() - self._built_at < self.refresh_s:
                return False
            index = Bm25Index()
            index.build(pair for batch in self.catalog.iter_texts() for pair in batch)
            self.index, self.seq, self._built_at = index, head, time.monotonic()
            return True

    def rebuild(self) -> None:
        """Rebuild from the catalog now, even when the catalog did not move."""
        with self._lock:
            self.seq = -1
        self.sync(force=True)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(query, k)

    def save(self) -> None:
        with self._lock:
            if self.seq != self.saved_seq and self.seq >= 0:
                self.index.save(self.directory, self.name, self.seq)
                self.saved_seq = self.seq

    def __len__(self) -> int:
        return len(self.index)
