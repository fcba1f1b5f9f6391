"""The contract every vector-index backend passes: a mixin of pytest tests.

A backend's test module subclasses ``VectorIndexContract`` and provides the ``backend``
fixture (an ``IndexBackend``) and, when the defaults do not suit it, ``index_config``::

    from retriever.index.testing import VectorIndexContract

    class TestMyBackend(VectorIndexContract):
        @pytest.fixture
        def backend(self):
            return MyBackend()

Each test gets a fresh ``IndexTarget`` under pytest's ``tmp_path``. Importing this module
imports pytest; nothing else in the package does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.config import IndexConfig
from retriever.errors import StoreError
from retriever.index.base import IndexBackend, IndexTarget, VectorIndex

__all__ = ["VectorIndexContract", "unit_vectors"]


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` random L2-normalised float32 rows, rounded through float16 like the catalog's copies."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16).astype(np.float32)


def _live(index: VectorIndex) -> set[int]:
    return set(index.ids().tolist())


class VectorIndexContract:
    """Behaviour a ``DenseSpace`` relies on, checked against one backend."""

    dim = 16
    n_vectors = 1200  # enough to train an IVF index made for them (16 lists x 39 vectors)
    n_hint = 0  # the size ``filled`` tells ``create`` to expect (0: the smallest index of its kind)
    min_self_recall = 0.9  # approximate kinds may miss a few exact self-matches

    @pytest.fixture
    def backend(self) -> IndexBackend:
        raise NotImplementedError("a backend's contract tests provide the `backend` fixture")

    @pytest.fixture
    def index_config(self) -> IndexConfig:
        return IndexConfig()

    @pytest.fixture
    def target(self, tmp_path: Path, index_config: IndexConfig) -> IndexTarget:
        return IndexTarget("contract", self.dim, tmp_path / "indexes", index_config)

    @pytest.fixture
    def data(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.arange(1000, 1000 + self.n_vectors, dtype=np.int64)
        return ids, unit_vectors(self.n_vectors, self.dim, seed=3)

    @pytest.fixture
    def filled(self, backend: IndexBackend, target: IndexTarget, data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
        index = backend.create(target, n_hint=self.n_hint)
        index.add(*data)
        return index

    # ---- shape of an index -------------------------------------------------------
    def test_is_a_vector_index(self, backend: IndexBackend, target: IndexTarget) -> None:
        index = backend.create(target)
        assert isinstance(index, VectorIndex) and isinstance(backend, IndexBackend)
        assert index.dim == self.dim and isinstance(index.kind, str) and index.kind
        assert index.count() == 0 and len(index.ids()) == 0 and index.covered_seq() == -1

    def test_empty_index_searches_to_nothing(self, backend: IndexBackend, target: IndexTarget) -> None:
        scores, ids = backend.create(target).search(unit_vectors(3, self.dim), 5)
        assert scores.shape[0] == ids.shape[0] == 3 and not (ids >= 0).any()

    def test_wrong_shapes_are_store_errors(self, backend: IndexBackend, target: IndexTarget) -> None:
        index = backend.create(target)
        with pytest.raises(StoreError, match=f"{self.dim}-d"):
            index.add(np.arange(2, dtype=np.int64), unit_vectors(2, self.dim + 1))
        with pytest.raises(StoreError):
            index.add(np.arange(3, dtype=np.int64), unit_vectors(2, self.dim))
        index.add(np.arange(2, dtype=np.int64), unit_vectors(2, self.dim))
        with pytest.raises(StoreError, match=f"{self.dim}-d"):
            index.search(unit_vectors(1, self.dim + 1), 1)

    # ---- add, search, remove -------------------------------------------------------
    def test_add_then_search_finds_each_vector(self, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
        ids, vecs = data
        assert filled.count() == len(ids) and _live(filled) == set(ids.tolist())
        scores, got = filled.search(vecs[:50], 5)
        assert scores.shape == got.shape and scores.shape[0] == 50 and scores.shape[1] <= 5
        assert float(np.mean(got[:, 0] == ids[:50])) >= self.min_self_recall
        found = got[:, 0] == ids[:50]
        assert np.allclose(scores[found, 0], 1.0, atol=1e-2)  # inner product of unit vectors
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first

    def test_search_takes_one_query_as_a_row(self, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
        scores, got = filled.search(data[1][0], 3)
        assert scores.shape[0] == got.shape[0] == 1 and got.dtype == np.int64

    def test_remove_hides_ids_and_counts_them(self, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
        ids, vecs = data
        assert filled.remove(ids[:10]) == 10
        assert filled.remove(ids[:10]) == 0  # absent now: nothing to remove
        assert filled.remove(np.asarray([7, 8], dtype=np.int64)) == 0  # never there
        _, got = filled.search(vecs[:10], 5)
        assert not set(got.ravel().tolist()) & set(ids[:10].tolist())
        assert filled.count() == len(ids) - 10 and not _live(filled) & set(ids[:10].tolist())

    def test_empty_calls_change_nothing(self, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
        filled.add(np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
        assert filled.remove(np.zeros(0, np.int64)) == 0 and filled.count() == len(data[0])

    def test_reports_memory_and_rebuild_advice(self, filled: VectorIndex) -> None:
        assert filled.memory() > 0 and isinstance(filled.needs_rebuild(), bool)

    def test_stored_vectors_are_the_added_ones(self, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]) -> None:
        ids, vecs = data
        held = filled.stored_vectors(ids[:20])
        if held is None:
            pytest.skip(f"a {filled.kind} index keeps no exact copies of its vectors")
        got_ids, got = held
        assert sorted(got_ids.tolist()) == sorted(ids[:20].tolist())
        order = {int(i): n for n, i in enumerate(ids[:20])}
        assert np.allclose(got, vecs[[order[int(i)] for i in got_ids]], atol=1e-3)

    # ---- durability ----------------------------------------------------------------------
    def test_nothing_persisted_opens_as_none(self, backend: IndexBackend, target: IndexTarget) -> None:
        assert backend.open(target) is None

    def test_persist_then_open_gives_the_same_index(
        self, backend: IndexBackend, target: IndexTarget, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]
    ) -> None:
        ids, vecs = data
        filled.remove(ids[:7])
        filled.persist(42)
        assert filled.covered_seq() == 42
        again = backend.open(target)
        assert again is not None and again.covered_seq() == 42 and again.dim == self.dim
        assert again.count() == filled.count() and _live(again) == _live(filled)
        assert (again.search(vecs[7:27], 3)[1] == filled.search(vecs[7:27], 3)[1]).all()

    def test_later_persist_wins_and_discard_forgets(
        self, backend: IndexBackend, target: IndexTarget, filled: VectorIndex, data: tuple[np.ndarray, np.ndarray]
    ) -> None:
        filled.persist(5)
        filled.remove(data[0][:3])
        filled.persist(9)
        again = backend.open(target)
        assert again is not None and again.covered_seq() == 9 and again.count() == len(data[0]) - 3
        backend.discard(target)
        assert backend.open(target) is None

    def test_a_new_index_leaves_the_persisted_one_alone(
        self, backend: IndexBackend, target: IndexTarget, filled: VectorIndex
    ) -> None:
        filled.persist(3)
        fresh = backend.create(target)
        assert fresh.count() == 0 and fresh.covered_seq() == -1
        again = backend.open(target)
        assert again is not None and again.count() == filled.count()
