"""Retrieval spaces kept in step with the catalog.

A space is a rebuildable cache of catalog data: a vector index of one dense space's vectors
(any ``VectorIndex``, from the backend ``index.backend`` names), or the BM25 index of item
texts. Each knows the change-log sequence number it covers; ``sync()`` replays what it lacks.
Writers and readers share this one path: after a commit the writer syncs exactly like a
reader does, so the index always holds the float16 vectors the catalog holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retriever.catalog import Catalog
from retriever.config import IndexConfig
from retriever.errors import StoreError
from retriever.index.base import FilterableIndex, IndexBackend, IndexFilter, IndexTarget, ItemFields, VectorIndex
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
                 backend: IndexBackend | None = None, *, store_id: str = "",
                 writer: Callable[[], bool] | None = None) -> None:
        self.name, self.dim, self.directory, self.catalog, self.cfg = name, dim, directory, catalog, cfg
        self.backend = backend if backend is not None else backend_for(cfg)
        self.target = IndexTarget(name, dim, directory, cfg, store_id)
        self.index: VectorIndex | None = None
        self.seq = 0
        self.saved_seq = -1
        self._lock = threading.RLock()
        # an index on a server that every process shares is written by the write-lock holder only;
        # ``writer`` says whether this process holds it now (None: never)
        self.shared = bool(getattr(self.backend, "shared", False))
        self._writer = writer
        self._as_writer: bool | None = None  # the role the shared index was last opened in
        self._followed = -2  # a shared reader: the catalog head when it last re-read the index state

    def may_write(self) -> bool:
        """Whether this process writes the index: always for a private one, else when holding the lock."""
        return not self.shared or (self._writer is not None and self._writer())

    def open(self) -> None:
        """Open the persisted index (or rebuild it from the catalog) and replay the log."""
        with self._lock:
            self._as_writer = self.may_write()
            try:
                loaded = self.backend.open(self.target)
            except StoreError:
                if not self._as_writer:
                    raise  # a reader of a shared index cannot rebuild it: say what is wrong
                loaded = None  # unreadable cache: rebuilt below from the durable vectors
            usable = loaded is not None and loaded.dim == self.dim
            if usable and loaded is not None and (loaded.covered_seq() >= self.catalog.log_floor()
                                                  or not self._as_writer):
                self.index, self.seq = loaded, loaded.covered_seq()
                self.saved_seq = self.seq
            elif self._as_writer:
                self.rebuild()
            else:  # a shared index no writer has made yet: nothing to search until one does
                self.index, self.seq = None, -1
            self._followed = catalog_head(self.catalog)
            self.sync()

    def rebuild(self) -> None:
        """A fresh index from the catalog's durable vectors (no re-encoding)."""
        with self._lock:
            if not self.may_write():
                raise StoreError(f"space '{self.name}' lives on a shared index server; only the writer "
                                 "(the holder of the store's write lock) rebuilds it")
            head = catalog_head(self.catalog)
            index = self.backend.create(self.target, n_hint=len(self.catalog.item_ids(self.name)))
            for ids, vecs in self.catalog.iter_vectors(self.name):
                self._add(index, ids, vecs)
            self.index, self.seq, self.saved_seq = index, head, -1

    def sync(self) -> int:
        """Apply catalog changes newer than this index; returns how many were applied."""
        with self._lock:
            if self.shared and self._as_writer is not None and self._as_writer != self.may_write():
                self.open()  # the role changed: a new writer replays from the durable position
                return 0
            if self.shared and not self._as_writer:
                self._follow()
                return 0
            if self.index is None or self.seq < self.catalog.log_floor():
                self.open()  # not opened yet, or the log was truncated past us: reload
                return 0
            changes = self.catalog.changes_since(self.seq)
            if not changes:
                return 0
            self._apply(self.index, changes)
            self.seq = changes[-1][0]
            return len(changes)

    def _follow(self) -> None:
        """A reader of a shared index: re-read which index is current when the catalog moved."""
        head = catalog_head(self.catalog)
        if head == self._followed:
            return
        with contextlib.suppress(StoreError):  # keep searching the one we have
            loaded = self.backend.open(self.target)
            if loaded is not None and loaded.dim == self.dim:
                self.index, self.seq = loaded, loaded.covered_seq()
        self._followed = head

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
            if not self.shared:  # a shared index upserts: adding an id again changes nothing
                present = index.ids()
                fresh = ~np.isin(ids, present) if len(present) else np.ones(len(ids), dtype=bool)
                ids, vecs = ids[fresh], vecs[fresh]
            self._add(index, ids, vecs)

    def _add(self, index: VectorIndex, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Add vectors, with the catalog fields of their items where the index filters on them."""
        if not isinstance(index, FilterableIndex):
            index.add(ids, vecs)
            return
        records = self.catalog.items(ids.tolist())
        keep = np.fromiter((int(i) in records for i in ids), dtype=bool, count=len(ids))
        ids, vecs = ids[keep], vecs[keep]  # an item removed meanwhile: its "del" comes next
        fields = [ItemFields(r.modality.value, r.kind, r.source_id, r.source_uri, r.source_display)
                  for r in (records[int(i)] for i in ids)]
        index.add_items(ids, vecs, fields)

    def search(self, query: np.ndarray, k: int, where: IndexFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The index's top ``k``; ``where`` is applied inside an index that filters (else ignored:
        the caller filters every hit anyway)."""
        with self._lock:
            index = self.index
        if index is None:
            return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
        if where and isinstance(index, FilterableIndex):
            return index.search_where(query, k, where)
        return index.search(query, k)

    def filters(self) -> bool:
        """Whether searches of this space can filter inside the index."""
        return isinstance(self.index, FilterableIndex)

    def maintain(self) -> None:
        """Rebuild when the index asks for it (its kind no longer fits its size, tombstones pile up)."""
        with self._lock:
            if self.index is not None and self.index.needs_rebuild():
                self.rebuild()

    def save(self) -> None:
        """Make the index durable as covering ``seq`` (nothing to do when it already is)."""
        with self._lock:
            if self.index is not None and self.seq != self.saved_seq and self.may_write():
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
