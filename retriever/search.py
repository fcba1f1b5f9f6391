"""Search: embed the query -> search each space -> fuse (RRF) -> filter -> MMR -> hydrate.

A text query searches the text space, BM25 and, through CLIP's text tower, the
visual items (the ``clip`` space); an image query searches both CLIP spaces (visual
items and text items) through the image tower; both may be given. Each search is a *run*; runs are fused with
weighted reciprocal rank fusion, ``sum_r w_r / (rrf_k + rank_r)``, into one ranked
list across modalities. Every hit keeps its per-run raw scores and ranks.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from retriever.catalog import ItemRecord
from retriever.config import SearchConfig
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.copies import collapse_copies, copy_citations, copy_key
from retriever.errors import QueryError
from retriever.filters import index_filter, passes
from retriever.fusion import fuse, rrf_fuse
from retriever.index.base import IndexFilter
from retriever.store import Store
from retriever.types import CLIP_SPACES, Hit, ItemKind, Modality, RunName, Space

__all__ = ["RUN_SPACES", "Query", "Retriever", "Run", "rrf_fuse"]

# run -> the spaces it searches (with search.clip_text_scope="all" the clip_text run reads both CLIP spaces)
RUN_SPACES: dict[RunName, tuple[Space, ...]] = {
    RunName.CLIP_TEXT: (Space.CLIP,),
    RunName.CLIP_IMAGE: CLIP_SPACES,
    RunName.TEXT: (Space.TEXT,),
    RunName.BM25: (Space.BM25,),
}

_THREADS_LOCK = threading.Lock()
_threads_users = 0
_threads_saved: dict[str, int] = {}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run one query's encoding and index search on one thread, then restore the settings.

    One query gains little from intra-op threads (torch) or OpenMP (faiss), and when the
    cores are busy (other queries, an ingest, other processes) their spinning, descheduled
    workers make it far slower. Measured on this 2-core machine under load: MiniLM encoding
    one query 1900 ms wall / 490 ms CPU with 2 torch threads, 78 ms / 11 ms with one; a flat
    faiss search over 3,000 vectors 36 ms wall with 2 OpenMP threads and almost no CPU.
    Reference-counted, so overlapping searches restore the batch settings only at the end.
    """
    global _threads_users
    torch, faiss = sys.modules.get("torch"), sys.modules.get("faiss")  # never imported here
    with _THREADS_LOCK:
        if _threads_users == 0:
            if torch is not None:
                _threads_saved["torch"] = torch.get_num_threads()
                torch.set_num_threads(1)
            if faiss is not None:
                _threads_saved["faiss"] = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_users -= 1
            if _threads_users == 0:
                if "torch" in _threads_saved and torch is not None:
                    torch.set_num_threads(_threads_saved.pop("torch"))
                if "faiss" in _threads_saved and faiss is not None:
                    faiss.omp_set_num_threads(_threads_saved.pop("faiss"))


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
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be a whole number of at least 1, got {self.k!r}")
        for key in ("source", "kind", "modality"):
            if key in self.where and not isinstance(self.where[key], str):
                raise QueryError(f"filter {key!r} must be a string, got {type(self.where[key]).__name__} "
                                 f"{self.where[key]!r}")
        if "modality" in self.where:
            Modality.parse(self.where["modality"])  # unknown names fail with the accepted ones


@dataclass
class Run:
    """One space's candidates for a query: item ids best first and their raw scores."""

    ids: list[int]
    scores: dict[int, float]


class _Timer:
    """Adds wall time per stage into ``sink`` (seconds); a no-op without a sink."""

    def __init__(self, sink: MutableMapping[str, float] | None) -> None:
        self.sink = sink

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sink is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sink[stage] = self.sink.get(stage, 0.0) + time.perf_counter() - t0


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

    def search(self, query: Query, timings: MutableMapping[str, float] | None = None) -> list[Hit]:
        """The fused top ``query.k``; ``timings`` (optional) receives seconds per stage."""
        timer = _Timer(timings)
        with timer("sync"):
            self.store.sync()
        depth = self.config.candidates(query.k, query.depth)
        use_mmr = self.config.mmr if query.mmr is None else query.mmr
        for _attempt in range(4):  # widen the candidate pool when filters drop too much
            runs = self.candidates(query, depth, timings)
            exhausted = all(len(r.ids) < depth for r in runs.values())
            if query.modalities or query.where:
                with timer("filter"):
                    runs = self._filtered(runs, query)
            with timer("fuse"):
                fused = self.fuse(runs)
            with timer("hydrate"):
                # MMR re-ranks the whole filtered pool; otherwise only the top k is hydrated
                kept, records, copies = self._hydrate(fused, query, len(fused) if use_mmr else query.k)
            if len(kept) >= query.k or exhausted:
                break
            depth *= 4
        if use_mmr and len(kept) > query.k:
            with timer("mmr"):
                kept = self._mmr(kept, query.k)
        with timer("hits"):
            return [self._hit(records[i], s, runs, [records[c] for c in copies.get(i, [])]) for i, s in kept[: query.k]]

    def candidates(
        self, query: Query, depth: int, timings: MutableMapping[str, float] | None = None
    ) -> dict[str, Run]:
        """Each run's top ``depth`` candidates (run name -> ``Run``), before fusion."""
        timer = _Timer(timings)
        wanted = set(query.runs) if query.runs else set(RUN_SPACES)
        text = query.text.strip() if query.text else None
        if query.image is not None and self.clip is None:
            raise QueryError("an image query needs a CLIP space, and this store has none")
        runs: dict[str, Run] = {}
        where = index_filter(query.modalities, query.where)
        for name in RUN_SPACES:
            run = self._run(name, text, query.image, depth, timer, where) if name in wanted else None
            if run is not None:
                runs[name] = run
        return {n: r for n, r in runs.items() if r.ids} or runs

    def _run(self, name: RunName, text: str | None, image: Any, depth: int, timer: _Timer,
             where: IndexFilter) -> Run | None:
        """One run's candidates; None when the query or the store has nothing for it."""
        if name == RunName.BM25:
            if not text:
                return None
            with timer("search.bm25"):
                scores, ids = self.store.bm25().search(text, depth)
            return Run([int(i) for i in ids], {int(i): float(s) for i, s in zip(ids, scores)})
        encode: Callable[[], np.ndarray]
        if name == RunName.CLIP_IMAGE:
            if self.clip is None or image is None:
                return None
            encode = partial(self.clip.encode_images, [image])
        else:
            encoder = self.text if name == RunName.TEXT else self.clip
            if encoder is None or not text:
                return None
            encode = partial(encoder.encode_texts, [text])
        if not self._searched_spaces_hold_vectors(name):
            return None  # e.g. CLIP in a store without images: the run could find nothing, skip encoding
        with timer(f"encode.{name}"), _one_thread():
            vec = encode()
        with timer(f"search.{name}"):
            if name == RunName.CLIP_TEXT:
                return self._clip_text(vec, depth, where)
            return self._dense(RUN_SPACES[name], vec, depth, where)

    def _searched_spaces_hold_vectors(self, name: RunName) -> bool:
        searched = (CLIP_SPACES if self.config.clip_text_scope == "all" else (Space.CLIP,)) \
            if name == RunName.CLIP_TEXT else RUN_SPACES[name]
        # a shared (server) index is not counted per query: counting asks the server
        return any(space.shared or len(space) > 0 for space in map(self.store.space, searched) if space is not None)

    def _clip_text(self, vec: np.ndarray, depth: int, where: IndexFilter) -> Run:
        """The CLIP text-tower run: over visual items unless ``search.clip_text_scope`` is "all".

        A text item's CLIP vector comes from CLIP's 77-token text tower, a much weaker text
        matcher than the text space and BM25 (and, through the modality gap, text-text
        similarities outrank text-image ones, so text chunks would crowd images out of this
        run). Measured on SciFact + synthetic shapes with the tiny CLIP (docs/tuning.md):
        over all items this run cost the text queries up to 0.09 nDCG@10 and still missed the
        images; over visual items it leaves text queries unchanged and finds the images.
        Visual items have their own index (``clip``), so this run is exact in what it covers
        whatever the ratio of text to images in the store.
        """
        if self.config.clip_text_scope == "all":
            return self._dense(CLIP_SPACES, vec, depth, where)
        return self._dense((Space.CLIP,), vec, depth, where)

    def fuse(self, runs: Mapping[str, Run]) -> list[tuple[int, float]]:
        """The runs fused with this retriever's settings (``search.fusion``), best first.

        Each item's sum is scaled by (total weight / weight of the runs that could have found
        it) ** ``search.modality_balance``: a text query's CLIP run ranks only visual items and
        its text and BM25 runs only items with text, so unscaled a photo scores at most one run's
        share (RRF: 1/(rrf_k+1); score fusion: the run's weight) where a text chunk two runs agree
        on scores twice that, and in a store with much text about the same things no image reaches
        the top ten. At balance 1 the best item of each modality would score alike, which puts some
        image near the top of every query (SciFact in a mixed store fell from 0.916 to 0.556
        nDCG@10); the default 0.6 (measured, docs/tuning.md) brings the images in without that
        cost. When every item could have been found by every run (a text-only store) nothing is scaled.
        Text-space candidates below ``search.min_text_similarity`` are left out (``_counted``).
        """
        weights = {name: self.config.weight(name) for name in runs}
        counted = {n: [(i, r.scores[i]) for i in self._counted(n, r)] for n, r in runs.items()}
        cfg = self.config
        fused = fuse(counted, weights, cfg.fusion, cfg.rrf_k, cfg.score_normalisation)
        found = {n for n, r in runs.items() if r.ids}
        coverage_differs = RunName.CLIP_TEXT in found and bool(found & {RunName.TEXT, RunName.BM25})
        if cfg.modality_balance <= 0 or cfg.clip_text_scope == "all" or not coverage_differs:
            return fused
        return self._fair(fused, runs, weights)

    def _counted(self, name: str, run: Run) -> list[int]:
        """The ids of ``run`` that count in fusion: not the text space's below ``search.min_text_similarity``.

        A dense run ranks every item however unrelated, so its first ranks are noise for a query that no
        text is about. The run still counts as having searched the text items (``_fair``).
        """
        floor = self.config.min_text_similarity
        if name != RunName.TEXT or floor <= -1.0:
            return run.ids
        return [i for i in run.ids if run.scores[i] >= floor]

    def _fair(
        self, fused: list[tuple[int, float]], runs: Mapping[str, Run], weights: Mapping[str, float]
    ) -> list[tuple[int, float]]:
        """Scale each fused score by (total weight / weight of the runs that cover the item) ** balance."""
        members = self.store.catalog.spaces_of([i for i, _ in fused], (Space.CLIP, Space.TEXT))
        visual, textual = members[Space.CLIP], members[Space.TEXT]
        live = {n: weights[n] for n, r in runs.items() if r.ids and weights[n] > 0}
        balance = self.config.modality_balance
        total = sum(live.values())
        out = []
        for item_id, score in fused:
            covered = sum(
                w for n, w in live.items()
                if n == RunName.CLIP_IMAGE
                or (n == RunName.CLIP_TEXT and item_id in visual)
                or (n in (RunName.TEXT, RunName.BM25) and item_id in textual)
            )
            out.append((item_id, score * (total / covered) ** balance if covered > 0 else score))
        return sorted(out, key=lambda kv: (-kv[1], kv[0]))

    def _filtered(self, runs: Mapping[str, Run], query: Query) -> dict[str, Run]:
        """Each run without the items that fail the filters, so ranks count only items that pass:
        a filtered search ranks as a search of the matching items alone would, whether the filter
        ran inside an index (Milvus) or here."""
        ids = {i for r in runs.values() for i in r.ids}
        records = self.store.catalog.items(sorted(ids))
        keep = {i for i, rec in records.items() if passes(rec, query.modalities, query.where)}
        return {n: Run([i for i in r.ids if i in keep], {i: s for i, s in r.scores.items() if i in keep})
                for n, r in runs.items()}

    def _hydrate(
        self, fused: Sequence[tuple[int, float]], query: Query, need: int
    ) -> tuple[list[tuple[int, float]], dict[int, ItemRecord], dict[int, list[int]]]:
        """Catalog records of the best fused items that pass the filters, ``need`` of them at most,
        and the copies folded into each (``search.collapse_copies``: the same passage, photo or page
        in another file is one result, ``retriever.copies``).

        Reads the catalog in growing windows, so an unfiltered query reads only its top k (and a few
        more when copies were folded).
        """
        filtered = bool(query.modalities or query.where)
        kept: list[tuple[int, float]] = []
        records: dict[int, ItemRecord] = {}
        copies: dict[int, list[int]] = {}
        seen: dict[Hashable, int] = {}
        pos, window = 0, need if not filtered else max(2 * need, 32)
        while pos < len(fused) and len(kept) < need:
            chunk = fused[pos : pos + window]
            records.update(self.store.catalog.items([i for i, _ in chunk]))
            passing = [(i, s) for i, s in chunk if i in records and passes(records[i], query.modalities, query.where)]
            if self.config.collapse_copies:
                passing, found = collapse_copies(passing, {i: copy_key(records[i]) for i, _ in passing}, seen)
                for first, more in found.items():
                    copies.setdefault(first, []).extend(more)
            kept += passing
            pos += len(chunk)
            window *= 4
        return kept[:need], records, copies

    def _dense(self, space_names: Sequence[str], vec: np.ndarray, depth: int, where: IndexFilter) -> Run:
        """The top ``depth`` of one or more spaces of one model, merged by score (ties by id).

        An index that filters (Milvus) applies the query's filters inside its search, so its run
        holds only items that pass them; other runs are filtered after fusion (``_hydrate``)."""
        pairs: list[tuple[int, float]] = []
        for name in space_names:
            space = self.store.space(name)
            if space is None:
                continue
            with _one_thread():
                scores, ids = space.search(vec, depth, where)
            pairs += [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if len(space_names) > 1:
            pairs = sorted(pairs, key=lambda p: (-p[1], p[0]))[:depth]
        return Run([i for i, _ in pairs], dict(pairs))

    def _mmr(self, kept: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
        """Maximal marginal relevance on CLIP (else text) vectors: drop near-duplicates."""
        lam = self.config.mmr_lambda
        spaces = CLIP_SPACES if self.store.space(Space.CLIP) is not None else (Space.TEXT,)
        vec_of: dict[int, np.ndarray] = {}
        for space in spaces:
            ids, vecs = self.store.catalog.vectors(space, [i for i, _ in kept])
            vec_of.update((int(i), v) for i, v in zip(ids, vecs))
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

    def _hit(self, rec: ItemRecord, score: float, runs: Mapping[str, Run], copies: Sequence[ItemRecord]) -> Hit:
        scores = {n: r.scores[rec.id] for n, r in runs.items() if rec.id in r.scores}
        ranks = {n: r.ids.index(rec.id) + 1 for n, r in runs.items() if rec.id in r.scores}
        image = self.store.resolve_media(rec.preview)
        if image is None and rec.kind == ItemKind.PHOTO:
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
            copies=copy_citations(rec, copies),
        )

