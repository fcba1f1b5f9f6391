"""``mmrag eval retrieval --sweep``: fusion settings re-fused over cached candidates, and chosen by
cross-validation rather than on the judgements they are scored with.

Every setting is run through the product's own fusion (``Retriever.fuse`` with that
``SearchConfig``), so a row's number is what ``Engine.search`` would return with those settings.
``cross_validate`` splits the queries into folds by a hash of their id, picks the best setting
of a family (RRF, score fusion, or either) on all folds but one, scores it on the held-out fold,
and averages the held-out scores: an estimate of the quality a setting chosen this way has on
queries it was not chosen on.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from retriever.config import SearchConfig
from retriever.fusion import NORMALISATIONS
from retriever.metrics import ndcg_at_k, recall_at_k
from retriever.search import Run

__all__ = ["FAMILIES", "cross_validate", "fold_of", "setting_grid", "sweep_fusion"]

Fuse = Callable[[SearchConfig, Mapping[str, Run]], list[tuple[int, float]]]
FAMILIES = ("rrf", "score", "any")


def setting_grid(base: SearchConfig, depths: Sequence[int]) -> list[SearchConfig]:
    """RRF over rank constants and score fusion over normalisations and BM25 weights, at each depth."""
    grid: list[SearchConfig] = []
    text_w = base.weight("text")
    for depth in depths:
        for rrf_k in (10, 20, 40, 60):
            grid.append(replace(base, fusion="rrf", rrf_k=rrf_k, depth=depth))
        for how, bm25 in itertools.product(NORMALISATIONS, (0.5, 0.75, 1.0, 1.5)):
            weights = tuple((n, bm25 * text_w if n == "bm25" else w) for n, w in _weights(base))
            grid.append(replace(base, fusion="score", score_normalisation=how, weights=weights, depth=depth))
    return grid


def _weights(cfg: SearchConfig) -> tuple[tuple[str, float], ...]:
    names = ("clip_text", "clip_image", "text", "bm25")
    return tuple((n, cfg.weight(n)) for n in names)


def label(cfg: SearchConfig) -> str:
    """A short name for a fusion setting."""
    if cfg.fusion == "rrf":
        return f"rrf k={cfg.rrf_k:g} depth={cfg.depth}"
    return f"score {cfg.score_normalisation} bm25={cfg.weight('bm25'):g} depth={cfg.depth}"


def fold_of(query_id: str, folds: int = 2) -> int:
    """The fold of a query: a stable hash of its id, so every run splits the queries alike."""
    return int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=4).digest(), "big") % folds


def sweep_fusion(
    cands: Mapping[str, Mapping[str, Run]],
    item_doc: Mapping[int, str],
    qrels: Mapping[str, Mapping[str, int]],
    fuse: Fuse,
    grid: Sequence[SearchConfig],
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
) -> list[dict[str, Any]]:
    """One row per setting: its label, settings, mean nDCG and recall, and per-query scores."""
    rows: list[dict[str, Any]] = []
    for cfg in grid:
        per_q: dict[str, tuple[float, float]] = {}
        for qid, runs in cands.items():
            if qid not in qrels:
                continue
            cut = {n: Run(r.ids[: cfg.depth], {i: r.scores[i] for i in r.ids[: cfg.depth]}) for n, r in runs.items()}
            docs = _docs([i for i, _ in fuse(cfg, cut)] if cut else [], item_doc)
            per_q[qid] = (ndcg_at_k(docs, qrels[qid], ndcg_k), recall_at_k(docs, qrels[qid], recall_k))
        n = max(1, len(per_q))
        rows.append({"label": label(cfg), "fusion": cfg.fusion, "rrf_k": cfg.rrf_k,
                     "normalisation": cfg.score_normalisation, "weights": dict(_weights(cfg)), "depth": cfg.depth,
                     "ndcg": sum(v[0] for v in per_q.values()) / n, "recall": sum(v[1] for v in per_q.values()) / n,
                     "per_query": per_q})
    rows.sort(key=lambda r: (-r["ndcg"], r["label"]))
    return rows


def cross_validate(rows: Sequence[Mapping[str, Any]], folds: int = 2) -> dict[str, dict[str, Any]]:
    """Per family: the setting picked on each fold's complement, and the held-out nDCG and recall."""
    out: dict[str, dict[str, Any]] = {}
    queries = sorted({q for r in rows for q in r["per_query"]})
    for family in FAMILIES:
        members = [r for r in rows if family == "any" or r["fusion"] == family]
        if not members or not queries:
            continue
        picks, ndcg, recall = [], 0.0, 0.0
        for f in range(folds):
            train = [q for q in queries if fold_of(q, folds) != f]
            test = [q for q in queries if fold_of(q, folds) == f]
            best = max(members, key=lambda r: (_mean(r, train, 0), r["label"]))
            picks.append(best["label"])
            ndcg += _mean(best, test, 0) * len(test)
            recall += _mean(best, test, 1) * len(test)
        out[family] = {"picks": picks, "ndcg": ndcg / len(queries), "recall": recall / len(queries)}
    return out


def _mean(row: Mapping[str, Any], queries: Sequence[str], which: int) -> float:
    per_q = row["per_query"]
    return sum(per_q[q][which] for q in queries) / max(1, len(queries))


def _docs(ids: Sequence[int], item_doc: Mapping[int, str]) -> list[str]:
    return list(dict.fromkeys(item_doc.get(i, f"~item:{i}") for i in ids))
