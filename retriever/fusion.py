"""Fusion of ranked runs into one list, as pure functions over item ids and scores.

Two ways, chosen by ``search.fusion`` (measurements in ``docs/tuning.md``):

* ``rrf``: weighted reciprocal rank fusion, ``sum_r w_r / (rrf_k + rank_r)``. It reads ranks only,
  so a run's score scale never matters, but it throws away how far apart the scores are: an
  item BM25 puts far ahead of the rest counts the same as one barely ahead.
* ``score``: a weighted sum of each run's scores normalised over its own candidates
  (``normalise``), ``sum_r w_r * norm_r(item)``; an item a run did not return counts 0 there,
  below every item it did return. This keeps the margins each run sees.

Both break ties by item id, so a ranking never depends on dictionary order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = ["FUSIONS", "NORMALISATIONS", "Fusion", "Normalisation", "fuse", "normalise", "rrf_fuse", "score_fuse"]

Fusion = Literal["rrf", "score"]
Normalisation = Literal["minmax", "zscore"]
FUSIONS: tuple[Fusion, ...] = ("rrf", "score")
NORMALISATIONS: tuple[Normalisation, ...] = ("minmax", "zscore")


def rrf_fuse(
    runs: Mapping[str, Sequence[int]], weights: Mapping[str, float], rrf_k: float
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion of ranked id lists, best first (ties by id)."""
    fused: dict[int, float] = {}
    for name, ids in runs.items():
        w = weights.get(name, 1.0)
        if w <= 0:
            continue
        for rank, item_id in enumerate(ids, start=1):
            fused[item_id] = fused.get(item_id, 0.0) + w / (rrf_k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def normalise(scores: Sequence[float], how: Normalisation = "minmax") -> list[float]:
    """One run's scores on a common scale: ``minmax`` maps them onto [0, 1] (best 1, worst 0; all
    equal: all 1), ``zscore`` onto standard deviations from their mean shifted so the worst is 0
    (all equal: all 1). Either way a returned item scores >= 0, the value of an item not returned."""
    if not scores:
        return []
    lo, hi = min(scores), max(scores)
    if hi <= lo:
        return [1.0] * len(scores)
    if how == "minmax":
        return [(s - lo) / (hi - lo) for s in scores]
    if how == "zscore":
        mean = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return [(s - lo) / sd for s in scores]
    raise ValueError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALISATIONS)}")


def score_fuse(
    runs: Mapping[str, Sequence[tuple[int, float]]], weights: Mapping[str, float], how: Normalisation = "minmax"
) -> list[tuple[int, float]]:
    """Weighted sum of normalised scores (``runs``: name -> ``(item id, raw score)`` pairs), best first."""
    fused: dict[int, float] = {}
    for name, pairs in runs.items():
        w = weights.get(name, 1.0)
        if w <= 0 or not pairs:
            continue
        for (item_id, _), value in zip(pairs, normalise([s for _, s in pairs], how)):
            fused[item_id] = fused.get(item_id, 0.0) + w * value
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def fuse(
    runs: Mapping[str, Sequence[tuple[int, float]]],
    weights: Mapping[str, float],
    method: Fusion = "rrf",
    rrf_k: float = 20,
    how: Normalisation = "minmax",
) -> list[tuple[int, float]]:
    """``runs`` (name -> ``(item id, raw score)`` pairs, best first) fused by ``method``, best first."""
    if method == "score":
        return score_fuse(runs, weights, how)
    if method == "rrf":
        return rrf_fuse({name: [i for i, _ in pairs] for name, pairs in runs.items()}, weights, rrf_k)
    raise ValueError(f"unknown fusion {method!r}; expected one of {', '.join(FUSIONS)}")
