"""What a store holds: the numbers ``mmrag stats`` and ``GET /stats`` report."""

from __future__ import annotations

from typing import Any

from retriever.store import Store

__all__ = ["store_stats"]


def store_stats(store: Store) -> dict[str, Any]:
    """Counts by modality, kind and status, each space's model, size and index kind, BM25 docs, failures."""
    counts = store.catalog.counts()
    failed = [{"uri": s.uri, "reason": s.error} for s in store.catalog.sources(status="failed")]
    store.sync()
    spaces = {}
    for name, info in store.spaces().items():
        space = store.space(name)
        spaces[name] = {"model": info.model_id, "dim": info.dim, "vectors": len(space) if space is not None else 0,
                        "index": getattr(space.index, "kind", None) if space else None}
    return {"store": str(store.root), "catalog": store.catalog.safe_url, "spaces": spaces,
            "bm25_docs": len(store.bm25()), **counts, "failed": failed}
