"""Search: embed the query -> search each space -> fuse (RRF) -> filter -> MMR -> hydrate.

A text query searches the CLIP space through the text tower, the text space and
BM25; an image query searches the CLIP space through the image tower; both may
be given. Each search is a *run*; runs are fused with weighted reciprocal rank
fusion, ``sum_r w_r / (rrf_k + rank_r)``, into one ranked list across
modalities. Every hit keeps its per-run raw scores and ranks.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from retriever.catalog import ItemRecord
from retriever.config import SearchConfig
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.errors import QueryError
from retriever.store import Store
from retriever.types import SPACE_BM25, SPACE_CLIP, SPACE_TEXT, Hit, Modality

__all__ = ["Query", "Retriever", "rrf_fuse", "RUN_SPACES"]

# run name -> (space, config weight key)
RUN_SPACES = {
    "clip_text": SPACE_CLIP,
    "clip_image": SPACE_CLIP,
    "text": SPACE_TEXT,
    "bm25": SPACE_BM25,
}


@dataclass(frozen=True)
class Query:
    """A search request. ``image`` is a PIL image (already decoded)."""

    text: str | None = None
    image: Any = None
    k: int = 10
    modalities: tuple[Modality, ...] | None = None
    where: Mapping[str, Any] = field(default_factory=dict)
    depth: int | None = None
    mmr: bool | None = None
    runs: tuple[str, ...] | None = None  # restrict to these runs (evaluation of single spaces)

    def __post_init__(self) -> None:
        if (self.text is None or not self.text.strip()) and self.image is None:
            raise QueryError("a search needs query text, an image or an audio clip; got none")
        if self.k < 1:
            raise QueryError(f"k must be at least 1, got {self.k}")


def rrf_fuse(
    runs: Mapping[str, Sequence[int]], weights: Mapping[str, float], rrf_k: int
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


@dataclass
class _Run:
    ids: list[int]
    scores: dict[int, float]


class Retriever:
    """Runs queries against a store with the store's encoders."""

    def __init__(
        self,
        store: Store,
        clip: ImageTextEncoder | None,
        text: TextEncoder | None,
        config: SearchConfig,
    ) -> None:
        self.store, self.clip, self.text, self.config = store, clip, text, config

    def search(self, query: Query) -> list[Hit]:
        self.store.sync()
        depth = max(query.depth or self.config.depth, query.k)
        for _attempt in range(4):  # widen the candidate pool when filters drop too much
            runs = self._runs(query, depth)
            fused = rrf_fuse({n: r.ids for n, r in runs.items()}, self._weights(runs), self.config.rrf_k)
            records = self.store.catalog.items([i for i, _ in fused])
            kept = [(i, s) for i, s in fused if i in records and _passes(records[i], query)]
            exhausted = all(len(r.ids) < depth for r in runs.values())
            if len(kept) >= query.k or exhausted:
                break
            depth *= 4
        use_mmr = self.config.mmr if query.mmr is None else query.mmr
        if use_mmr and len(kept) > query.k:
            kept = self._mmr(kept, query.k)
        return [self._hit(records[i], s, runs) for i, s in kept[: query.k]]

    def _weights(self, runs: Mapping[str, _Run]) -> dict[str, float]:
        return {name: self.config.weight(name) for name in runs}

    def _runs(self, query: Query, depth: int) -> dict[str, _Run]:
        wanted = set(query.runs) if query.runs else set(RUN_SPACES)
        runs: dict[str, _Run] = {}
        text = query.text.strip() if query.text else None
        if text and "clip_text" in wanted and self.clip is not None:
            runs["clip_text"] = self._dense(SPACE_CLIP, self.clip.encode_texts([text]), depth)
        if query.image is not None and "clip_image" in wanted and self.clip is not None:
            runs["clip_image"] = self._dense(SPACE_CLIP, self.clip.encode_images([query.image]), depth)
        if text and "text" in wanted and self.text is not None:
            runs["text"] = self._dense(SPACE_TEXT, self.text.encode_texts([text]), depth)
        if text and "bm25" in wanted:
            scores, ids = self.store.bm25().search(text, depth)
            runs["bm25"] = _Run([int(i) for i in ids], {int(i): float(s) for i, s in zip(ids, scores)})
        if query.image is not None and self.clip is None:
            raise QueryError("an image query needs a CLIP space, and this store has none")
        return {n: r for n, r in runs.items() if r.ids} or runs

    def _dense(self, space_name: str, vec: np.ndarray, depth: int) -> _Run:
        space = self.store.space(space_name)
        if space is None:
            return _Run([], {})
        scores, ids = space.search(vec, depth)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        return _Run([i for i, _ in pairs], dict(pairs))

    def _mmr(self, kept: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        """Maximal marginal relevance on CLIP (else text) vectors: drop near-duplicates."""
        lam = self.config.mmr_lambda
        space = SPACE_CLIP if self.store.space(SPACE_CLIP) is not None else SPACE_TEXT
        ids, vecs = self.store.catalog.vectors(space, [i for i, _ in kept])
        vec_of = {int(i): v for i, v in zip(ids, vecs)}
        rel = np.array([s for _, s in kept])
        rel = (rel - rel.min()) / (np.ptp(rel) or 1.0)
        chosen: list[int] = []
        remaining = list(range(len(kept)))
        while remaining and len(chosen) < k:
            best, best_val = remaining[0], -np.inf
            for j in remaining:
                v = vec_of.get(kept[j][0])
                sim = max((float(v @ vec_of[kept[c][0]]) for c in chosen if kept[c][0] in vec_of), default=0.0) if v is not None else 0.0
                val = lam * rel[j] - (1 - lam) * sim
                if val > best_val:
                    best, best_val = j, val
            chosen.append(best)
            remaining.remove(best)
        return [kept[j] for j in chosen]

    def _hit(self, rec: ItemRecord, score: float, runs: Mapping[str, _Run]) -> Hit:
        scores = {n: r.scores[rec.id] for n, r in runs.items() if rec.id in r.scores}
        ranks = {n: r.ids.index(rec.id) + 1 for n, r in runs.items() if rec.id in r.scores}
        image = self.store.resolve_media(rec.preview)
        if image is None and rec.kind == "photo":
            image = rec.source_uri
        return Hit(
            item_id=rec.id,
            score=float(score),
            scores=scores,
            ranks=ranks,
            modality=rec.modality,
            kind=rec.kind,
            source_uri=rec.source_uri,
            source_name=rec.source_display,
            locator=rec.locator,
            text=rec.text,
            thumbnail_path=self.store.resolve_media(rec.thumbnail),
            image_path=image,
            metadata=rec.metadata,
        )


def _passes(rec: ItemRecord, query: Query) -> bool:
    if query.modalities and rec.modality not in query.modalities:
        return False
    for key, want in query.where.items():
        if key == "source":
            if not (fnmatch.fnmatch(rec.source_uri, want) or fnmatch.fnmatch(rec.source_display, want)):
                return False
        elif key == "kind":
            if rec.kind != want:
                return False
        elif key == "modality":
            if rec.modality.value != want:
                return False
        elif rec.metadata.get(key) != want:
            return False
    return True
