"""FAISS implementation of the VectorStore protocol.

``IndexIDMap2`` over an index chosen by size: exact (flat) below
``IndexConfig.flat_threshold`` vectors, HNSW above (or IVF / IVF-PQ / any faiss
factory string when configured). Inner product on L2-normalised vectors.
Flat, HNSW and IVF keep vectors as ``IndexConfig.storage``: float16 by default,
which is lossless because the catalog's durable copy is float16 already (half
the memory of float32 and faster scans; see bench/search.py for the numbers).
Indexes that cannot remove ids (HNSW) keep tombstones that searches filter out;
``needs_compaction`` tells the owner when a rebuild is worth it.

Saved as ``<name>-<seq>.faiss`` plus a pointer ``<name>.json`` (both written to a
temp file, fsynced and renamed), so a crash at any moment leaves either the old
or the new index with the sequence number it really covers.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from retriever.config import IndexConfig
from retriever.errors import ConfigError, StoreError

__all__ = ["FaissStore", "atomic_write_bytes", "choose_kind", "ivf_lists", "load_pointer"]

_STORAGE = {"fp16": "QT_fp16", "bf16": "QT_bf16", "sq8": "QT_8bit"}  # "fp32": plain float vectors


def choose_kind(cfg: IndexConfig, n: int) -> str:
    """The index kind for ``n`` vectors under ``cfg`` ("auto" picks by size)."""
    kind = cfg.kind.strip()
    if kind.lower() != "auto":
        return kind
    return "flat" if n < cfg.flat_threshold else "hnsw"


def ivf_lists(n: int) -> int:
    """Inverted lists for an IVF over ``n`` vectors (4 sqrt(n), the usual FAISS guideline)."""
    return int(min(65536, max(16, 4 * math.sqrt(max(n, 1)))))


def _quantizer_type(storage: str) -> int | None:
    """The faiss scalar-quantizer type for ``storage``, None for plain float32."""
    low = storage.strip().lower()
    if low == "fp32":
        return None
    if low not in _STORAGE:
        raise ConfigError(f"index storage {storage!r} is not one of fp32, {', '.join(_STORAGE)}")
    return getattr(faiss.ScalarQuantizer, _STORAGE[low])


def _untrained_storage(cfg: IndexConfig) -> str:
    """A storage that needs no training, for the exact fallback of an IVF too small to train."""
    return "fp32" if cfg.storage.strip().lower() == "fp32" else "fp16"


def _build(kind: str, dim: int, cfg: IndexConfig, n_hint: int, storage: str | None = None) -> faiss.Index:
    """``IndexIDMap2`` over the ``kind`` index, vectors kept as ``storage`` (default ``cfg.storage``)."""
    ip = faiss.METRIC_INNER_PRODUCT
    low = kind.lower()
    qt = _quantizer_type(cfg.storage if storage is None else storage)
    if low == "flat":
        base = faiss.IndexFlatIP(dim) if qt is None else faiss.IndexScalarQuantizer(dim, qt, ip)
    elif low == "hnsw":
        base = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip) if qt is None else faiss.IndexHNSWSQ(dim, qt, cfg.hnsw_m, ip)
        base.hnsw.efConstruction = cfg.hnsw_ef_construction
        base.hnsw.efSearch = cfg.hnsw_ef_search
    elif low == "ivf":
        coarse, lists = faiss.IndexFlatIP(dim), ivf_lists(n_hint)
        if qt is None:
            base = faiss.IndexIVFFlat(coarse, dim, lists, ip)
        else:
            base = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, qt, ip)
            base.by_residual = qt == faiss.ScalarQuantizer.QT_8bit  # fp16 of the vector itself is lossless
    elif low == "ivfpq":
        m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, ivf_lists(n_hint), m, 8, ip)
    else:
        try:
            base = faiss.index_factory(dim, kind, ip)
        except RuntimeError as exc:
            raise ConfigError(f"index kind {kind!r} is neither flat/hnsw/ivf/ivfpq nor a faiss factory string: {exc}")
    if isinstance(base, faiss.IndexIVF):
        base.nprobe = cfg.ivf_nprobe
    return faiss.IndexIDMap2(base)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync and rename, then fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_pointer(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"index pointer {path} is unreadable ({exc}); run `mmrag repair`") from exc


class FaissStore:
    """A FAISS index addressed by item id, with tombstones where removal is unsupported."""

    def __init__(self, dim: int, cfg: IndexConfig, kind: str | None = None, n_hint: int = 0) -> None:
        self.dim = int(dim)
        self.cfg = cfg
        self._kind = kind or choose_kind(cfg, n_hint)
        self._index = _build(self._kind, self.dim, cfg, n_hint)
        self._tombstones: set[int] = set()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # untrained IVF: held until trainable
        self._gpu: faiss.Index | None = None
        self._lock = threading.RLock()

    # ---- protocol -----------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._kind

    def __len__(self) -> int:
        with self._lock:
            pending = sum(len(i) for i, _ in self._pending)
            return int(self._index.ntotal) - len(self._tombstones) + pending

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def needs_compaction(self) -> bool:
        return len(self._tombstones) > max(1000, 0.1 * self._index.ntotal)

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

    def _train_if_possible(self) -> None:
        n = sum(len(i) for i, _ in self._pending)
        base = faiss.downcast_index(self._index.index)
        need = getattr(base, "nlist", 1) * 39 if isinstance(base, faiss.IndexIVF) else 1
        if n < max(need, 256):
            return
        ids = np.concatenate([i for i, _ in self._pending])
        vecs = np.concatenate([v for _, v in self._pending])
        self._index.train(vecs)
        self._index.add_with_ids(vecs, ids)
        self._pending = []

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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise StoreError(f"query of dimension {q.shape[1]} for a {self.dim}-d index")
        with self._lock:
            self._flush_untrained()
            total = int(self._index.ntotal)
            if total == 0 or k <= 0:
                return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
            extra = min(len(self._tombstones), 4 * k + 64)
            fetch = min(total, k + extra)
            index = self._search_index()
            scores, ids = index.search(q, fetch)
            tomb = self._tombstones
        if tomb:
            return _drop_tombstones(scores, ids, tomb, k)
        return scores[:, :k], ids[:, :k]

    def _flush_untrained(self) -> None:
        """An untrained IVF with few vectors: fall back to exact search over what is held."""
        if self._pending and not self._index.is_trained:
            ids = np.concatenate([i for i, _ in self._pending])
            vecs = np.concatenate([v for _, v in self._pending])
            self._kind = "flat"
            self._index = _build("flat", self.dim, self.cfg, len(ids), storage=_untrained_storage(self.cfg))
            self._index.add_with_ids(vecs, ids)
            self._pending = []

    def _search_index(self) -> faiss.Index:
        if self.cfg.use_gpu == "never" or faiss.get_num_gpus() == 0 or self._kind.lower() == "hnsw":
            return self._index
        if self._gpu is None:  # pragma: no cover - needs a GPU build of faiss
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self._index)
            except RuntimeError:  # a storage the GPU build does not implement: stay on the CPU
                return self._index
        return self._gpu

    def ids(self) -> np.ndarray:
        """All live ids (for verification)."""
        with self._lock:
            self._flush_untrained()
            id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            if self._tombstones:
                id_map = id_map[~np.isin(id_map, np.fromiter(self._tombstones, np.int64))]
            return id_map

    def search_params(self) -> dict[str, int]:
        """The current search-time knobs: ``ef_search`` (HNSW kinds) or ``nprobe`` (IVF kinds)."""
        base = faiss.downcast_index(self._index.index)
        if hasattr(base, "hnsw"):
            return {"ef_search": int(base.hnsw.efSearch)}
        if isinstance(base, faiss.IndexIVF):
            return {"nprobe": int(base.nprobe)}
        return {}

    def nbytes(self) -> int:
        """Size of the serialised index (what ``save`` writes; close to its memory footprint)."""
        with self._lock:
            self._flush_untrained()
            return int(faiss.serialize_index(self._index).size)

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        base = faiss.downcast_index(self._index.index)
        if ef_search is not None and hasattr(base, "hnsw"):
            base.hnsw.efSearch = int(ef_search)
        if nprobe is not None and isinstance(base, faiss.IndexIVF):
            base.nprobe = int(nprobe)
        self._gpu = None

    # ---- persistence --------------------------------------------------------
    def save(self, directory: Path, name: str, seq: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._flush_untrained()
            data = faiss.serialize_index(self._index).tobytes()
            meta = {"seq": int(seq), "kind": self._kind, "dim": self.dim, "tombstones": sorted(self._tombstones)}
        fname = f"{name}-{int(seq)}.faiss"
        atomic_write_bytes(directory / fname, data)
        meta["file"] = fname
        atomic_write_bytes(directory / f"{name}.json", json.dumps(meta).encode())
        for old in directory.glob(f"{name}-*.faiss"):
            if old.name != fname:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, name: str, cfg: IndexConfig) -> tuple[FaissStore, int] | None:
        """The saved index and the seq it covers, or None if there is none."""
        meta = load_pointer(directory, name)
        if meta is None:
            return None
        path = directory / meta["file"]
        try:
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        except (OSError, RuntimeError, ValueError) as exc:
            raise StoreError(f"index file {path} is unreadable ({exc}); run `mmrag repair`") from exc
        store = cls(meta["dim"], cfg, kind=meta["kind"])
        store._index = index
        store._tombstones = {int(t) for t in meta.get("tombstones", [])}
        store.set_search_params(cfg.hnsw_ef_search, cfg.ivf_nprobe)
        return store, int(meta["seq"])

    @classmethod
    def build(
        cls, dim: int, cfg: IndexConfig, batches: Iterable[tuple[np.ndarray, np.ndarray]], n: int
    ) -> FaissStore:
        """A fresh index of the right kind for ``n`` vectors, filled from ``batches``."""
        store = cls(dim, cfg, n_hint=n)
        for ids, vecs in batches:
            store.add(ids, vecs)
        return store


def _drop_tombstones(scores: np.ndarray, ids: np.ndarray, tomb: set[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    out_s = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), k), -1, dtype=np.int64)
    for r in range(len(ids)):
        keep = [j for j, i in enumerate(ids[r]) if i >= 0 and int(i) not in tomb][:k]
        out_s[r, : len(keep)] = scores[r, keep]
        out_i[r, : len(keep)] = ids[r, keep]
    return out_s, out_i
