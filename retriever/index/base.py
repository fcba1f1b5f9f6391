"""The VectorStore protocol: an id-addressed inner-product index of unit vectors."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["VectorStore"]


@runtime_checkable
class VectorStore(Protocol):
    """Vectors are L2-normalised float32 rows; ids are int64 catalog item ids.

    ``search`` returns ``(scores, ids)`` arrays of shape ``(n_queries, k)``, best
    first, padded with id ``-1``. ``save`` writes atomically and records the
    catalog change-log sequence number the contents cover.
    """

    dim: int

    @property
    def kind(self) -> str: ...

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, directory: Path, name: str, seq: int) -> None: ...
