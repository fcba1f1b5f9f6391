"""The vector-index contract (``retriever.index.testing``) run for FAISS (flat, HNSW, IVF) and for a
plain exact NumPy backend written here, which also shows that spaces, stores and ``verify`` reach an
index only through the protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.catalog import Catalog, NewItem, SourceInfo
from retriever.config import Config, IndexConfig
from retriever.errors import ConfigError, StoreError
from retriever.index import registry
from retriever.index.atomic import atomic_write_bytes, load_pointer, pointer_path
from retriever.index.base import IndexBackend, IndexTarget, VectorIndex
from retriever.index.faiss_index import FaissBackend, FaissIndex
from retriever.index.registry import backend_for, backend_names, register_backend
from retriever.index.spaces import DenseSpace
from retriever.index.testing import VectorIndexContract, unit_vectors
from retriever.maintenance.verify import verify
from retriever.store import Store


class ExactIndex:
    """Brute-force inner product over a dict of vectors; persisted as ``.npy`` files and a pointer."""

    kind = "exact"

    def __init__(self, target: IndexTarget) -> None:
        self.target, self.dim = target, target.dim
        self.rows: dict[int, np.ndarray] = {}
        self._covered = -1

    def count(self) -> int:
        return len(self.rows)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(vecs) != len(ids):
            raise StoreError(f"{len(ids)} ids and vectors of shape {vecs.shape} do not fit this {self.dim}-d index")
        self.rows.update(zip(np.asarray(ids, dtype=np.int64).tolist(), vecs))

    def remove(self, ids: np.ndarray) -> int:
        return sum(self.rows.pop(int(i), None) is not None for i in ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise StoreError(f"query of dimension {q.shape[1]} for a {self.dim}-d index")
        ids = np.fromiter(self.rows, dtype=np.int64, count=len(self.rows))
        if not len(ids) or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores = q @ np.stack(list(self.rows.values())).T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), ids[order]

    def ids(self) -> np.ndarray:
        return np.fromiter(self.rows, dtype=np.int64, count=len(self.rows))

    def memory(self) -> int:
        return 8 + sum(v.nbytes + 8 for v in self.rows.values())

    def stored_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = [int(i) for i in ids if int(i) in self.rows]
        vecs = np.stack([self.rows[i] for i in got]) if got else np.zeros((0, self.dim), np.float32)
        return np.asarray(got, dtype=np.int64), vecs

    def needs_rebuild(self) -> bool:
        return False

    def covered_seq(self) -> int:
        return self._covered

    def persist(self, seq: int) -> None:
        directory, name = self.target.directory, self.target.space
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"{name}-{seq}"
        np.save(directory / f"{stem}.ids.npy", self.ids(), allow_pickle=False)
        np.save(directory / f"{stem}.vecs.npy", self.stored_vectors(self.ids())[1], allow_pickle=False)
        meta = {"seq": seq, "dim": self.dim, "ids": f"{stem}.ids.npy", "vecs": f"{stem}.vecs.npy"}
        atomic_write_bytes(pointer_path(directory, name), json.dumps(meta).encode())
        self._covered = seq


class ExactBackend:
    name = "exact"

    def create(self, target: IndexTarget, n_hint: int = 0) -> ExactIndex:
        return ExactIndex(target)

    def open(self, target: IndexTarget) -> ExactIndex | None:
        meta = load_pointer(target.directory, target.space)
        if meta is None:
            return None
        index = ExactIndex(IndexTarget(target.space, int(meta["dim"]), target.directory, target.config))
        ids = np.load(target.directory / meta["ids"], allow_pickle=False)
        index.add(ids, np.load(target.directory / meta["vecs"], allow_pickle=False).reshape(len(ids), index.dim))
        index._covered = int(meta["seq"])
        return index

    def discard(self, target: IndexTarget) -> None:
        pointer_path(target.directory, target.space).unlink(missing_ok=True)


class TestFaissContract(VectorIndexContract):
    @pytest.fixture
    def backend(self) -> IndexBackend:
        return backend_for(IndexConfig(backend="faiss"))

    @pytest.fixture(params=["flat", "hnsw", "ivf"])
    def index_config(self, request: pytest.FixtureRequest) -> IndexConfig:
        return IndexConfig(kind=request.param, hnsw_ef_search=64, ivf_nprobe=16)

    def test_the_kind_asked_for_is_the_kind_built(self, backend: IndexBackend, target: IndexTarget) -> None:
        index = backend.create(target, n_hint=self.n_hint)
        index.add(np.arange(self.n_vectors, dtype=np.int64), unit_vectors(self.n_vectors, self.dim))
        index.search(unit_vectors(1, self.dim), 1)
        assert index.kind == target.config.kind  # an IVF of this size is trained, not an exact fallback


class TestExactContract(VectorIndexContract):
    @pytest.fixture
    def backend(self) -> IndexBackend:
        return ExactBackend()


@pytest.fixture
def exact_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """``index.backend = "exact"`` for the length of a test."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    register_backend("exact", lambda cfg: ExactBackend())


def test_faiss_is_the_default_backend() -> None:
    assert IndexConfig().backend == "faiss" and "faiss" in backend_names()
    assert isinstance(backend_for(IndexConfig()), FaissBackend)


def test_unknown_backend_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="'nosuch' is not a registered backend; expected one of .*faiss"):
        backend_for(IndexConfig(backend="nosuch"))


def test_backends_register_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    made: list[IndexConfig] = []

    def factory(cfg: IndexConfig) -> IndexBackend:
        made.append(cfg)
        return ExactBackend()

    register_backend("exact", factory)
    with pytest.raises(ConfigError, match="registered already"):
        register_backend("exact", factory)
    register_backend("exact", factory, replace=True)
    cfg = IndexConfig(backend="exact")
    assert isinstance(backend_for(cfg), ExactBackend) and made == [cfg] and "exact" in backend_names()


def test_an_index_without_a_home_cannot_persist() -> None:
    with pytest.raises(StoreError, match="cannot persist"):
        FaissIndex(8, IndexConfig()).persist(1)


def _commit(cat: Catalog, uri: str, vecs: np.ndarray) -> list[int]:
    info = SourceInfo(uri, uri, f"h-{uri}-{len(vecs)}", 1, 0.0)
    items = [NewItem("text", "chunk", {"uri": uri}, f"{uri} text {i}", {}, {"text": v}) for i, v in enumerate(vecs)]
    return cat.commit_source(info, items, metadata={}, notes=[], run_id=None)


def test_a_space_replays_the_log_onto_any_backend(tmp_path: Path) -> None:
    cat = Catalog.for_store(tmp_path)
    a = _commit(cat, "/a", unit_vectors(4, 8, seed=1))
    space = DenseSpace("text", 8, tmp_path / "idx", cat, IndexConfig(), backend=ExactBackend())
    space.open()
    space.save()
    assert isinstance(space.index, VectorIndex) and space.saved_seq == space.index.covered_seq() == space.seq
    b = _commit(cat, "/b", unit_vectors(3, 8, seed=2))
    a2 = _commit(cat, "/a", unit_vectors(2, 8, seed=3))
    reader = DenseSpace("text", 8, tmp_path / "idx", cat, IndexConfig(), backend=ExactBackend())
    reader.open()  # the persisted index plus the replayed log
    assert set(reader.index.ids().tolist()) == set(b) | set(a2) and not set(a) & set(reader.index.ids().tolist())
    reader.discard()
    assert ExactBackend().open(reader.target) is None


def test_store_and_verify_use_the_configured_backend(tmp_path: Path, exact_backend: None) -> None:
    store = Store(tmp_path / "store", Config(index=IndexConfig(backend="exact")))
    try:
        store.register_space("text", "test-model", 8)
        ids = _commit(store.catalog, "/a", unit_vectors(5, 8, seed=4))
        store.sync()
        store.save()
        pointer = json.loads((store.index_dir / "text.json").read_text())
        assert pointer["ids"].endswith(".npy") and not list(store.index_dir.glob("*.faiss"))
        report = verify(store, check_files=False)
        assert report.ok and report.counts["indexes"]["text"] == len(ids), report.to_dict()
        space = store.space("text")
        assert space is not None and space.index is not None
        space.index.remove(np.asarray(ids[:1]))  # an index that lost an item: verify sees it through the protocol
        space.index.persist(space.seq)
        assert "index_missing" in verify(store, check_files=False).codes()
    finally:
        store.close()
