"""Vector-index backends by name: ``index.backend`` picks one.

A backend is registered as a factory ``IndexConfig -> IndexBackend`` that imports its
library when called, so registering costs nothing and a backend whose library is missing
fails only when chosen. ``faiss`` and ``milvus`` are built in; another backend
registers itself with ``register_backend("milvus", factory)`` and passes the contract tests
of ``retriever.index.testing``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from retriever.config import IndexConfig
from retriever.errors import ConfigError
from retriever.index.base import IndexBackend

__all__ = ["BackendFactory", "backend_for", "backend_names", "register_backend"]

BackendFactory = Callable[[IndexConfig], IndexBackend]


def _faiss(cfg: IndexConfig) -> IndexBackend:
    from retriever.index.faiss_index import FaissBackend

    return FaissBackend()


def _milvus(cfg: IndexConfig) -> IndexBackend:
    from retriever.index.milvus_index import MilvusBackend

    return MilvusBackend(cfg)


_BACKENDS: dict[str, BackendFactory] = {"faiss": _faiss, "milvus": _milvus}
_LOCK = threading.Lock()


def register_backend(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make ``factory`` the backend called ``name``; an existing name needs ``replace=True``."""
    key = name.strip().lower()
    with _LOCK:
        if key in _BACKENDS and not replace:
            raise ConfigError(f"index backend {key!r} is registered already (pass replace=True to replace it)")
        _BACKENDS[key] = factory


def backend_names() -> tuple[str, ...]:
    """The registered backend names, sorted."""
    with _LOCK:
        return tuple(sorted(_BACKENDS))


def backend_for(cfg: IndexConfig) -> IndexBackend:
    """The backend ``cfg.backend`` names; ConfigError naming the registered ones when none does."""
    with _LOCK:
        factory = _BACKENDS.get(cfg.backend)
    if factory is None:
        raise ConfigError(f"index.backend {cfg.backend!r} is not a registered backend; "
                          f"expected one of {', '.join(backend_names())}")
    return factory(cfg)
