"""Compare two stores built from the same files: items, vectors and ranked search results.

Used by the crash torture (``pipelines.testing.crash``) to hold a store that survived
kill -9 rounds against a clean ingest of the same corpus. Items are matched by their
address (source, kind, locator), never by id: ids differ between the stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pipelines.engine import Engine
    from retriever.config import SearchConfig
    from retriever.encoders.base import ImageTextEncoder, TextEncoder
    from retriever.store import Store

__all__ = [
    "Models",
    "canonical_top",
    "compare_stores",
    "item_keys",
    "load_models",
    "open_store",
    "ranked",
    "space_runs",
]

Key = tuple[str, str, str]  # (source uri, kind, locator as sorted JSON)
Runs = dict[str, dict[Key, float]]  # run name -> item address -> score
TIGHT = 1e-4  # score tolerance between the stores: the workers encode in fp32, stored as float16


@dataclass(frozen=True)
class Models:
    """Loaded encoders to share: the text model and, for stores with a CLIP space, CLIP.

    They must be built with the torture's settings (``models.precision = fp32``), like the
    workers' models, or the vectors of an in-process ingest drift from theirs.
    """

    text: TextEncoder
    clip: ImageTextEncoder | None = None


def load_models(clip: str) -> Models:
    """The torture's encoders for CLIP spec ``clip`` (``none``: text only), built from the settings
    in fp32; weights load on first use."""
    from retriever.config import Config
    from retriever.encoders import build_clip_encoder, build_text_encoder

    models = Config().with_overrides({"models.clip": clip, "models.precision": "fp32"}).models
    return Models(build_text_encoder(models), build_clip_encoder(models))


def open_store(store_dir: Path, clip: str) -> Store:
    """An existing store opened like a reader (no models)."""
    from retriever.config import Config
    from retriever.store import Store

    config = Config.load(store_dir, {"models.clip": clip})
    return Store(store_dir, config, create=False)


def item_keys(store_dir: Path, clip: str) -> dict[Key, dict[str, np.ndarray]]:
    """(source, kind, locator) -> {space: unit vector} of every item, for comparing two stores."""
    import numpy as np

    from retriever.maintenance.verify import item_rows

    store = open_store(store_dir, clip)
    try:
        uri_of = {s.id: s.uri for s in store.catalog.sources()}
        keys: dict[int, Key] = {}
        for rows in item_rows(store):
            for iid, sid, kind, loc, _t, _th, _pr in rows:
                keys[iid] = (uri_of[sid], kind, json.dumps(loc, sort_keys=True))
        out: dict[Key, dict[str, np.ndarray]] = {key: {} for key in keys.values()}
        for name in store.spaces():
            ids, vecs = store.catalog.vectors(name, list(keys))
            for iid, vec in zip(ids.tolist(), vecs):
                out[keys[iid]][name] = vec / (np.linalg.norm(vec) or 1.0)
        return out
    finally:
        store.close()


def compare_stores(
    crash: Path, clean: Path, clip: str, queries: list[str], image_queries: list[Path],
    models: Models | None = None,
) -> dict[str, Any]:
    """Items, vectors and search results of two stores built from the same files.

    Every space is searched to full depth: both stores must return the same items
    (by source and locator) with the same scores (``TIGHT``). The fused top-10 lists
    must then be identical, except where items with exactly equal scores in a space
    (e.g. two chunks with the same BM25 score) trade places: the order of tied items
    is arbitrary, and item ids (the engine's tie-break) differ between the stores.
    Such a query counts as a ``tie_reorder`` only if fusing each store's runs with
    ties broken by (source, locator) gives identical top 10s (``same_top_set``: the
    reordered lists still hold the same items); anything else is a mismatch.
    ``models`` are shared encoders (default: ``load_models(clip)``).
    """
    from pipelines.engine import Engine

    result: dict[str, Any] = {**_item_differences(crash, clean, clip), "queries": 0, "space_mismatches": 0,
                              "search_mismatches": 0, "tie_reorders": 0, "same_top_set": 0, "examples": []}
    models = models or load_models(clip)
    text = _MemoText(models.text)  # one model for both stores, each query encoded once
    image_text = _MemoClip(models.clip) if models.clip is not None else None
    overrides = {"models.clip": clip, "models.precision": "fp32"}
    with Engine.open(crash, overrides=overrides, text=text, clip=image_text) as ea, \
            Engine.open(clean, overrides=overrides, text=text, clip=image_text) as eb:
        asks: list[dict[str, str]] = [{"text": q} for q in queries]
        asks += [{"image": str(p)} for p in image_queries] if image_text is not None else []
        for ask in asks:
            _compare_query(ea, eb, ask, result)
    return result


def _item_differences(crash: Path, clean: Path, clip: str) -> dict[str, int]:
    a, b = item_keys(crash, clip), item_keys(clean, clip)
    drift = sum(
        1 for key in set(a) & set(b) for space in set(a[key]) | set(b[key])
        if space not in a[key] or space not in b[key] or float(a[key][space] @ b[key][space]) < 1 - TIGHT
    )
    return {"items_only_in_crash": len(set(a) - set(b)), "items_only_in_clean": len(set(b) - set(a)),
            "vector_drift": drift}


def _compare_query(ea: Engine, eb: Engine, ask: dict[str, str], result: dict[str, Any]) -> None:
    """Count one query's outcome in ``result`` (see ``compare_stores``)."""
    result["queries"] += 1
    runs_a, runs_b = space_runs(ea, ask), space_runs(eb, ask)
    bad_spaces = _space_differences(runs_a, runs_b)
    result["space_mismatches"] += bool(bad_spaces)
    ra, rb = ranked(_top10(ea, ask)), ranked(_top10(eb, ask))
    if ra == rb and not bad_spaces:
        return
    cfg = ea.config.search
    if not bad_spaces and canonical_top(runs_a, 10, cfg) == canonical_top(runs_b, 10, cfg):
        result["tie_reorders"] += 1
        result["same_top_set"] += set(ra) == set(rb)
    else:
        result["search_mismatches"] += 1
    result["examples"].append({"query": ask, "spaces": bad_spaces, "crash": ra[:5], "clean": rb[:5]})


def _top10(eng: Engine, ask: dict[str, str]) -> list[Any]:
    return eng.search(text=ask.get("text"), image=ask.get("image"), k=10)


class _MemoText:
    """A text encoder that remembers the texts it encoded (queries repeat across stores and runs)."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.space, self.model_id = encoder.space, encoder.model_id
        self._texts: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in self._texts:
            self._texts[key] = self.encoder.encode_texts(texts)
        return self._texts[key]


class _MemoClip(_MemoText):
    """``_MemoText`` for a CLIP model: its text tower remembers; images are encoded as asked."""

    encoder: ImageTextEncoder

    def __init__(self, encoder: ImageTextEncoder) -> None:
        super().__init__(encoder)

    def preprocess(self, image: Any) -> Any:
        return self.encoder.preprocess(image)

    def encode_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        return self.encoder.encode_preprocessed(batch)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.encoder.encode_images(images)


def space_runs(eng: Engine, ask: dict[str, str]) -> Runs:
    """Every item of every space the query reaches, with its score (full depth)."""
    import numpy as np

    from retriever.types import RunName

    store = eng.store
    store.sync()
    runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for run, (space_names, vec) in _query_vectors(eng, ask).items():
        ids: list[int] = []
        scores: list[float] = []
        for name in space_names:
            space = store.space(name)
            if space is None or not len(space):
                continue
            s, i = space.search(vec, len(space))
            ids += list(i[0])
            scores += list(s[0])
        runs[run] = (np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))
    if "text" in ask:
        bm25_scores, bm25_ids = store.bm25().search(ask["text"], max(1, len(store.bm25())))
        runs[RunName.BM25] = (bm25_ids, bm25_scores)
    keys = _keys_of(store, {int(i) for found, _ in runs.values() for i in found if i >= 0})
    return {
        run: {keys[int(i)]: float(s) for i, s in zip(found, scored) if i >= 0}
        for run, (found, scored) in runs.items()
    }


def _query_vectors(eng: Engine, ask: dict[str, str]) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """run name -> (the spaces it searches, the query's vector) for a text or image query."""
    from pipelines.engine import load_query_image
    from retriever.search import RUN_SPACES
    from retriever.types import RunName

    vecs: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    clip = eng.clip_encoder
    if "text" in ask:
        vecs[RunName.TEXT] = (RUN_SPACES[RunName.TEXT], eng.text_encoder.encode_texts([ask["text"]]))
        if clip is not None:
            vecs[RunName.CLIP_TEXT] = (RUN_SPACES[RunName.CLIP_TEXT], clip.encode_texts([ask["text"]]))
    if "image" in ask and clip is not None:
        image = load_query_image(ask["image"])
        vecs[RunName.CLIP_IMAGE] = (RUN_SPACES[RunName.CLIP_IMAGE], clip.encode_images([image]))
    return vecs


def _keys_of(store: Store, ids: set[int]) -> dict[int, Key]:
    recs = store.catalog.items(sorted(ids))
    return {i: _key(r) for i, r in recs.items()}


def canonical_top(runs: Runs, k: int, cfg: SearchConfig) -> list[Key]:
    """Reciprocal rank fusion as the engine does it, with ties broken by (source, locator)."""
    fused: dict[Key, float] = {}
    for run, scores in runs.items():
        order = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[: max(cfg.depth, k)]
        for rank, (key, _) in enumerate(order, start=1):
            fused[key] = fused.get(key, 0.0) + cfg.weight(run) / (cfg.rrf_k + rank)
    return [key for key, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _space_differences(x: Runs, y: Runs, tol: float = TIGHT) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for run in sorted(set(x) | set(y)):
        rx, ry = x.get(run, {}), y.get(run, {})
        if set(rx) != set(ry):
            only_crash, only_clean = len(set(rx) - set(ry)), len(set(ry) - set(rx))
            out.append({"run": run, "only_crash": only_crash, "only_clean": only_clean})
            continue
        off = [k for k in rx if abs(rx[k] - ry[k]) > tol * max(1.0, abs(ry[k]))]
        if off:
            out.append({"run": run, "score_differs": len(off), "example": list(off[0])})
    return out


def ranked(hits: Sequence[Any]) -> list[Key]:
    """The addresses of ranked hits."""
    return [_key(h) for h in hits]


def _key(found: Any) -> Key:
    """The address of a hit or an item record."""
    return found.source_uri, found.kind, json.dumps(found.locator.to_dict(), sort_keys=True)
