"""The one seam between a dense space and its vector index: ``VectorIndex`` and ``IndexBackend``.

A space (``retriever.index.spaces.DenseSpace``) keeps an index in step with the catalog's
change log. It talks to the index only through ``VectorIndex`` and gets indexes only from an
``IndexBackend`` (chosen by ``index.backend`` through ``retriever.index.registry``), so a
backend that keeps its data on a server (Milvus) fits as well as FAISS files in the store:

* the index, not the space, knows where its data lives and how it is made durable;
* ``covered_seq()`` is the change-log position its durable state covers, and ``persist(seq)``
  makes the current contents durable as covering ``seq``. The space never writes files.

A backend whose index lives on a server that every process shares (Milvus) sets
``shared = True`` on its indexes: only the process holding the store's write lock writes to
it (readers search it as it is, never replaying the log into it), and its adds are upserts, so
replaying a change twice after a crash changes nothing. Such an index may also keep the fields
mmrag filters on beside each vector (``FilterableIndex``), so a filtered search runs inside it.

Every backend passes the contract tests in ``retriever.index.testing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from retriever.config import IndexConfig

__all__ = ["FilterableIndex", "IndexBackend", "IndexFilter", "IndexTarget", "ItemFields", "VectorIndex"]


@dataclass(frozen=True)
class IndexTarget:
    """Which index a backend opens or creates: one dense space of one store.

    ``directory`` is the store's index directory; file backends keep their files there, server
    backends may keep only what names their collection. ``config`` is the store's ``index`` section.
    """

    space: str
    dim: int
    directory: Path
    config: IndexConfig
    store_id: str = ""  # the catalog's store id: names a server backend's collections (several stores
    #                     share one server); empty for targets of no store (contract tests, benches)


@dataclass(frozen=True)
class ItemFields:
    """What a ``FilterableIndex`` keeps beside a vector: the catalog fields searches filter on."""

    modality: str
    kind: str
    source_id: int
    source_uri: str
    source_display: str


@dataclass(frozen=True)
class IndexFilter:
    """A filter a ``FilterableIndex`` applies inside its search (empty tuples: no condition).

    ``source_glob`` is an ``fnmatch`` pattern on the source's URI or display name; a backend that
    cannot express a pattern exactly leaves it out (``search_where`` then returns candidates that
    the caller's own filter, applied to every hit anyway, narrows down).
    """

    modalities: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    source_glob: str | None = None

    def __bool__(self) -> bool:
        return bool(self.modalities or self.kinds or self.source_glob)


@runtime_checkable
class VectorIndex(Protocol):
    """An id-addressed inner-product index of L2-normalised vectors.

    Vectors are float32 rows of ``dim`` values; ids are int64 catalog item ids. ``search``
    returns ``(scores, ids)`` arrays of shape ``(n_queries, m)`` with ``m <= k``, best first;
    an id of ``-1`` is padding. Removing an id that is absent is allowed and counts nothing;
    callers add only absent ids and never add a removed id again (catalog ids are never
    reused). Wrong shapes raise StoreError.
    """

    @property
    def dim(self) -> int: ...

    @property
    def kind(self) -> str:
        """What the index is (e.g. ``flat``, ``hnsw``), as reported by ``mmrag stats``."""
        ...

    def count(self) -> int:
        """How many live vectors it holds."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove the given ids; returns how many were present."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray:
        """Every live id (int64), in no particular order."""
        ...

    def memory(self) -> int:
        """Bytes the index takes (in memory, or on the server)."""
        ...

    def stored_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, vectors)`` as held, for the given ids that are present; None when the index
        does not keep exact copies (compressed or approximate storage): then ``verify`` cannot
        compare them with the catalog."""
        ...

    def needs_rebuild(self) -> bool:
        """Whether a rebuild from the catalog would serve better (the kind no longer fits the
        size, removed entries pile up)."""
        ...

    def covered_seq(self) -> int:
        """The change-log position the durable state covers; -1 when it was never persisted."""
        ...

    def persist(self, seq: int) -> None:
        """Make the current contents durable, recorded as covering change-log position ``seq``.

        Crash-safe: after a crash the index opens as either the old or the new state, each with
        the position it really covers.
        """
        ...


@runtime_checkable
class FilterableIndex(VectorIndex, Protocol):
    """A vector index that keeps ``ItemFields`` per vector and filters inside its searches."""

    def add_items(self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ItemFields]) -> None:
        """``add`` with each vector's fields (``fields[i]`` belongs to ``ids[i]``)."""
        ...

    def search_where(self, queries: np.ndarray, k: int, where: IndexFilter) -> tuple[np.ndarray, np.ndarray]:
        """``search`` over the vectors whose fields pass ``where``."""
        ...


@runtime_checkable
class IndexBackend(Protocol):
    """Makes and finds the vector indexes of one kind of backend (``index.backend``)."""

    name: str

    def create(self, target: IndexTarget, n_hint: int = 0) -> VectorIndex:
        """A new, empty index for ``target``, sized for about ``n_hint`` vectors. Nothing is
        durable until ``persist``; a persisted index of the same target stays until then."""
        ...

    def open(self, target: IndexTarget) -> VectorIndex | None:
        """The persisted index of ``target``, None when there is none; StoreError when it is
        there but unreadable (the caller rebuilds it from the catalog)."""
        ...

    def discard(self, target: IndexTarget) -> None:
        """Forget the persisted index of ``target``, so the next ``open`` finds none."""
        ...
