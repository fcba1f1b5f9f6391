"""FAISS, the default vector-index backend (``index.backend = "faiss"``).

``FaissIndex`` implements ``VectorIndex`` over the ``IndexIDMap2`` that
``faiss_kinds.build_faiss_index`` makes. Indexes that cannot remove ids (HNSW) keep
tombstones that searches filter out; ``needs_rebuild`` says when a rebuild is worth it. An
IVF too small to train holds its vectors until it can, and searches them exactly meanwhile.
Searches run on a GPU clone when faiss sees a GPU (``index.use_gpu``), else on the CPU.

Persisted as ``<name>-<seq>.faiss`` plus a pointer ``<name>.json`` (both written to a temp
file, fsynced and renamed), so a crash at any moment leaves either the old or the new index
with the sequence number it really covers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from retriever.config import IndexConfig
from retriever.errors import StoreError
from retriever.index.atomic import atomic_write_bytes, load_pointer, pointer_path
from retriever.index.base import IndexTarget
from retriever.index.faiss_kinds import (
    build_faiss_index,
    choose_kind,
    gpus_for,
    ivf_lists,
    keeps_exact_vectors,
    untrained_storage,
)

__all__ = ["FaissBackend", "FaissIndex", "FaissStore", "atomic_write_bytes", "choose_kind", "ivf_lists",
           "load_pointer"]


class FaissIndex:
    """A FAISS index addressed by item id, with tombstones where removal is unsupported.

    ``directory`` and ``name`` say where ``persist`` writes it; an index made without them
    lives in memory only (``save`` still writes it anywhere).
    """

    def __init__(self, dim: int, cfg: IndexConfig, kind: str | None = None, n_hint: int = 0, *,
                 directory: Path | None = None, name: str | None = None) -> None:
        self.dim = int(dim)
        self.cfg = cfg
        self._kind = kind or choose_kind(cfg, n_hint, self.dim)
        self._index = build_faiss_index(self._kind, self.dim, cfg, n_hint, storage=_host_storage(cfg, self._kind))
        self._tombstones: set[int] = set()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # untrained IVF: held until trainable
        self._gpu: faiss.Index | None = None
        self._lock = threading.RLock()
        self._home = (directory, name)
        self._covered = -1

    # ---- VectorIndex ------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._kind

    def count(self) -> int:
        with self._lock:
            pending = sum(len(i) for i, _ in self._pending)
            return int(self._index.ntotal) - len(self._tombstones) + pending

    def __len__(self) -> int:
        return self.count()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise StoreError(f"vectors of shape {vecs.shape} do not fit this {self.dim}-d index")
        if len(ids) != len(vecs):
            raise StoreError(f"{len(ids)} ids for {len(vecs)} vectors")
        if not len(ids):
            return
        with self._lock:
            self._gpu = None
            self._tombstones.difference_update(ids.tolist())
            if not self._index.is_trained:
                self._pending.append((ids, vecs))
                self._train_if_possible()
                return
            self._index.add_with_ids(vecs, ids)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        with self._lock:
            self._gpu = None
            removed = self._remove_pending(ids)
            try:
                removed += int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
            except RuntimeError:  # HNSW and friends cannot remove: tombstone what is present
                present = [int(i) for i in ids if self._contains(int(i))]
                self._tombstones.update(present)
                removed += len(present)
            return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise StoreError(f"query of dimension {q.shape[-1]} for a {self.dim}-d index")
        with self._lock:
            self._flush_untrained()
            total = int(self._index.ntotal)
            if total == 0 or k <= 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            fetch = min(total, k + min(len(self._tombstones), 4 * k + 64))
            scores, ids = self._search_index().search(q, fetch)
            tomb = set(self._tombstones)
        if tomb:
            return _drop_tombstones(scores, ids, tomb, k)
        return scores[:, :k], ids[:, :k]

    def ids(self) -> np.ndarray:
        """All live ids."""
        with self._lock:
            self._flush_untrained()
            id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if self._tombstones:
                id_map = id_map[~np.isin(id_map, np.fromiter(self._tombstones, np.int64))]
            return id_map

    def memory(self) -> int:
        """Size of the serialised index (what ``persist`` writes; close to its memory footprint)."""
        with self._lock:
            self._flush_untrained()
            return int(faiss.serialize_index(self._index).size)

    def stored_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The vectors held for ``ids`` (flat and HNSW kinds with fp32/fp16 storage; else None)."""
        if not keeps_exact_vectors(self._kind, self.cfg.storage):
            return None
        got: list[int] = []
        vecs: list[np.ndarray] = []
        with self._lock:
            for item_id in np.asarray(ids, dtype=np.int64).tolist():
                if item_id in self._tombstones:
                    continue
                try:
                    vecs.append(np.asarray(self._index.reconstruct(int(item_id)), dtype=np.float32))
                except RuntimeError:  # not in the index
                    continue
                got.append(item_id)
        matrix = np.vstack(vecs).astype(np.float32) if vecs else np.zeros((0, self.dim), np.float32)
        return np.asarray(got, dtype=np.int64), matrix

    def needs_rebuild(self) -> bool:
        return choose_kind(self.cfg, self.count(), self.dim) != self._kind or self.needs_compaction

    def covered_seq(self) -> int:
        return self._covered

    def persist(self, seq: int) -> None:
        directory, name = self._home
        if directory is None or name is None:
            raise StoreError("this FAISS index was made without a directory and name; it cannot persist itself")
        self.save(directory, name, seq)

    # ---- FAISS specifics ----------------------------------------------------------
    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def needs_compaction(self) -> bool:
        return len(self._tombstones) > max(1000, 0.1 * self._index.ntotal)

    def nbytes(self) -> int:
        return self.memory()

    def uses_gpu(self) -> bool:
        """Whether searches run on a GPU clone of the index (cloned on the first search)."""
        with self._lock:
            return self._gpu is not None

    def search_params(self) -> dict[str, int]:
        """The current search-time knobs: ``ef_search`` (HNSW kinds) or ``nprobe`` (IVF kinds)."""
        base = faiss.downcast_index(self._index.index)
        if isinstance(base, faiss.IndexHNSW):
            return {"ef_search": int(base.hnsw.efSearch)}
        if isinstance(base, faiss.IndexIVF):
            return {"nprobe": int(base.nprobe)}
        return {}

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        base = faiss.downcast_index(self._index.index)
        if ef_search is not None and isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = int(ef_search)
        if nprobe is not None and isinstance(base, faiss.IndexIVF):
            base.nprobe = int(nprobe)
        self._gpu = None

    # ---- files ----------------------------------------------------------------------
    def save(self, directory: Path, name: str, seq: int) -> None:
        """Write ``<name>-<seq>.faiss`` and then the pointer ``<name>.json`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._flush_untrained()
            data = faiss.serialize_index(self._index).tobytes()
            meta = {"seq": int(seq), "kind": self._kind, "dim": self.dim, "tombstones": sorted(self._tombstones)}
        fname = f"{name}-{int(seq)}.faiss"
        atomic_write_bytes(directory / fname, data)
        meta["file"] = fname
        atomic_write_bytes(pointer_path(directory, name), json.dumps(meta).encode())
        for old in directory.glob(f"{name}-*.faiss"):
            if old.name != fname:
                old.unlink(missing_ok=True)
        self._home, self._covered = (directory, name), int(seq)

    @classmethod
    def load(cls, directory: Path, name: str, cfg: IndexConfig) -> tuple[FaissIndex, int] | None:
        """The saved index and the seq it covers, or None if there is none."""
        meta = load_pointer(directory, name)
        if meta is None:
            return None
        path = directory / str(meta.get("file"))
        try:
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreError(f"index file {path} is unreadable ({exc}); run `mmrag repair`") from exc
        if not isinstance(index, faiss.IndexIDMap2):
            raise StoreError(f"index file {path} holds a {type(index).__name__}, not an id map; run `mmrag repair`")
        store = cls(int(meta["dim"]), cfg, kind=str(meta["kind"]), directory=directory, name=name)
        store._index = index
        store._tombstones = {int(t) for t in meta.get("tombstones", [])}
        store._covered = int(meta["seq"])
        store.set_search_params(cfg.hnsw_ef_search, cfg.ivf_nprobe)
        return store, store._covered

    @classmethod
    def build(
        cls, dim: int, cfg: IndexConfig, batches: Iterable[tuple[np.ndarray, np.ndarray]], n: int
    ) -> FaissIndex:
        """A fresh index of the right kind for ``n`` vectors, filled from ``batches``."""
        store = cls(dim, cfg, n_hint=n)
        for ids, vecs in batches:
            store.add(ids, vecs)
        return store

    # ---- internals --------------------------------------------------------------------
    def _train_if_possible(self) -> None:
        n = sum(len(i) for i, _ in self._pending)
        base = faiss.downcast_index(self._index.index)
        need = base.nlist * 39 if isinstance(base, faiss.IndexIVF) else 1
        if n < max(need, 256):
            return
        ids = np.concatenate([i for i, _ in self._pending])
        vecs = np.concatenate([v for _, v in self._pending])
        self._index.train(vecs)
        self._index.add_with_ids(vecs, ids)
        self._pending = []

    def _remove_pending(self, ids: np.ndarray) -> int:
        if not self._pending:
            return 0
        drop = set(ids.tolist())
        kept, removed = [], 0
        for pid, pvec in self._pending:
            mask = np.array([i not in drop for i in pid.tolist()], dtype=bool)
            removed += int((~mask).sum())
            if mask.any():
                kept.append((pid[mask], pvec[mask]))
        self._pending = kept
        return removed

    def _contains(self, item_id: int) -> bool:
        if item_id in self._tombstones:
            return False
        try:
            self._index.reconstruct(item_id)
            return True
        except RuntimeError:
            return False

    def _flush_untrained(self) -> None:
        """An untrained IVF with few vectors: fall back to exact search over what is held."""
        if self._pending and not self._index.is_trained:
            ids = np.concatenate([i for i, _ in self._pending])
            vecs = np.concatenate([v for _, v in self._pending])
            self._kind = "flat"
            self._index = build_faiss_index("flat", self.dim, self.cfg, len(ids), storage=untrained_storage(self.cfg))
            self._index.add_with_ids(vecs, ids)
            self._pending = []

    def _search_index(self) -> faiss.Index:
        if gpus_for(self.cfg) == 0 or self._kind.lower() == "hnsw":
            return self._index
        if self._gpu is None:  # pragma: no cover - needs a GPU build of faiss (tests marked gpu)
            options = faiss.GpuMultipleClonerOptions()
            options.useFloat16 = self.cfg.storage != "fp32"  # a flat kept as float32 here, fp16 on the card
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self._index, co=options)
            except RuntimeError:  # a storage the GPU build does not implement: stay on the CPU
                return self._index
        return self._gpu


FaissStore = FaissIndex  # the name scripts and tests that save and load index files use


def _host_storage(cfg: IndexConfig, kind: str) -> str | None:
    """The storage of the CPU-side index: a flat searched on a GPU is kept as float32 (the GPU
    build clones a float flat, not a scalar-quantised one, and halves it to fp16 on the card)."""
    return "fp32" if kind.lower() == "flat" and gpus_for(cfg) > 0 else None


class FaissBackend:
    """The ``faiss`` backend: indexes are files in the store's index directory."""

    name = "faiss"

    def create(self, target: IndexTarget, n_hint: int = 0) -> FaissIndex:
        return FaissIndex(target.dim, target.config, n_hint=n_hint, directory=target.directory, name=target.space)

    def open(self, target: IndexTarget) -> FaissIndex | None:
        loaded = FaissIndex.load(target.directory, target.space, target.config)
        return None if loaded is None else loaded[0]

    def discard(self, target: IndexTarget) -> None:
        """Drop the pointer; the data file it named is left to ``mmrag repair`` and the next run's tidy-up."""
        pointer_path(target.directory, target.space).unlink(missing_ok=True)


def _drop_tombstones(scores: np.ndarray, ids: np.ndarray, tomb: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for r in range(len(ids)):
        keep = [j for j, i in enumerate(ids[r]) if i >= 0 and int(i) not in tomb][:k]
        out_s[r, : len(keep)] = scores[r, keep]
        out_i[r, : len(keep)] = ids[r, keep]
    return out_s, out_i
