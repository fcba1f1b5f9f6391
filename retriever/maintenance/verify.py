"""Check a store's catalog against its indexes and files, and repair what can be repaired.

``verify(store)`` reads only. It compares what any reader would get when it opens
the store (each persisted index plus the change log replayed onto it) with the catalog,
the source of truth; checks the durable vectors, thumbnails and previews; and looks
for files nothing refers to. ``repair(store)`` (the caller holds the write lock)
rebuilds every index from the catalog's durable vectors (no model is loaded), removes
what it cannot fix so that the next ingest redoes it, deletes orphan files, and
verifies again. Indexes are reached only through the ``VectorIndex`` protocol, so this
checks any backend. Severities: see ``retriever.maintenance.report``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from retriever.errors import StoreError
from retriever.index.base import VectorIndex
from retriever.index.bm25 import Bm25Index
from retriever.index.spaces import DenseSpace, catalog_head
from retriever.lock import write_lock_held
from retriever.maintenance.report import ERROR, WARNING, Problem, Severity, VerifyReport, ids_problem
from retriever.store import Store
from retriever.types import Space, spaces_for

__all__ = ["ERROR", "WARNING", "Problem", "Severity", "VerifyReport", "ids_problem", "item_rows", "verify"]


def item_rows(store: Store, batch: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
    """(id, source_id, kind, locator, text, thumbnail, preview) of every item, in id order.

    The tuple view of ``Catalog.item_summaries``, for scripts that unpack rows.
    """
    for summaries in store.catalog.item_summaries(batch):
        yield [(r.id, r.source_id, r.kind, r.locator, r.text, r.thumbnail, r.preview) for r in summaries]


def verify(
    store: Store, check_files: bool = True, hash_all: bool = False, max_vector_checks: int = 50_000,
    holds_lock: bool = False,
) -> VerifyReport:
    """Check catalog <-> indexes <-> files; see the module docstring for what is checked.

    ``holds_lock``: the caller is the writer (repair), so a held write lock is its own.
    """
    from retriever.maintenance.files import check_index_files, check_media, check_sources

    problems: list[Problem] = []
    counts: dict[str, Any] = dict(store.catalog.counts())
    counts["head"] = catalog_head(store.catalog)
    if not holds_lock and write_lock_held(store.lock_path):
        problems.append(Problem("writer_active", WARNING, f"an ingest is writing to {store.root}; findings may be transient"))
    spaces = store.spaces()
    problems += _check_manifest(store, set(spaces), counts)
    for name, info in sorted(spaces.items()):
        problems += _check_dense(store, name, info.dim, counts, max_vector_checks)
    problems += _check_bm25(store, counts)
    problems += _check_items(store, set(spaces))
    problems += _check_runs(store, problems)
    problems += check_media(store)
    problems += check_index_files(store)
    if check_files:
        problems += check_sources(store, hash_all)
    return VerifyReport(str(store.root), tuple(problems), counts)


def _check_manifest(store: Store, spaces: set[str], counts: dict[str, Any]) -> list[Problem]:
    out = []
    with_vectors = set(counts.get("vectors_by_space", {}))
    if counts.get("items") and not store.manifest_path.exists() and not store.catalog.get_meta("manifest"):
        out.append(Problem("manifest_missing", ERROR, f"{store.manifest_path} is missing but the catalog has items",
                           path=str(store.manifest_path)))
    for name in sorted(with_vectors - spaces):
        out.append(Problem("space_unknown", ERROR, f"the catalog has vectors in space '{name}', which the manifest "
                           "does not list", space=name))
    for name, info in store.spaces().items():
        bad = store.catalog.wrong_size_vectors(name, info.dim)
        if bad:
            out.append(ids_problem("vector_corrupt", ERROR, "{n} durable vector(s) are not " f"{info.dim}-d float16",
                                   bad, name))
    return out


def _check_persisted(store: Store, space: DenseSpace) -> list[Problem]:
    """The persisted index of ``space`` alone: readable, of the right size, covering a usable position."""
    name, dim = space.name, space.dim
    try:
        persisted = space.backend.open(space.target)
    except StoreError as exc:
        return [Problem("index_unreadable", ERROR, str(exc), name, path=str(store.index_dir))]
    if persisted is None:
        if len(store.catalog.item_ids(name)):
            return [Problem("index_not_saved", WARNING, f"space '{name}' has no saved index; readers rebuild it "
                            "from the catalog on every open", name)]
        return []
    return _position_problems(store, name, dim, persisted)


def _position_problems(store: Store, name: str, dim: int, persisted: VectorIndex) -> list[Problem]:
    head, floor, seq = catalog_head(store.catalog), store.catalog.log_floor(), persisted.covered_seq()
    if persisted.dim != dim:
        return [Problem("index_dim", ERROR, f"saved index of '{name}' is {persisted.dim}-d, the manifest "
                        f"says {dim}-d", name)]
    if seq > head:
        return [Problem("index_ahead", ERROR, f"saved index of '{name}' covers change {seq} but the catalog "
                        f"log ends at {head} (catalog restored from an older copy?)", name)]
    if seq < floor:
        return [Problem("index_stale", WARNING, f"saved index of '{name}' (change {seq}) is older than the "
                        f"kept log ({floor}); readers rebuild it on every open", name)]
    if seq < head:
        return [Problem("index_stale", WARNING, f"saved index of '{name}' lags the catalog by {head - seq} "
                        "change(s) (replayed on open)", name)]
    return []


def _check_dense(store: Store, name: str, dim: int, counts: dict[str, Any], max_checks: int) -> list[Problem]:
    """The persisted index, replayed like a reader replays it, against the catalog's vectors."""
    space = store.make_space(name, dim, writes=False)
    out = _check_persisted(store, space)
    space.open()  # what a reader gets: the persisted index plus the replayed log (or a rebuild)
    index = space.index
    if index is None:
        return out
    want, have = store.catalog.item_ids(name), index.ids()
    counts.setdefault("indexes", {})[name] = int(len(have))
    uniq, n = np.unique(have, return_counts=True)
    if (n > 1).any():
        out.append(ids_problem("index_duplicate", ERROR, "{n} id(s) are more than once in index '" + name + "'",
                               uniq[n > 1], name))
    missing, orphan = np.setdiff1d(want, uniq), np.setdiff1d(uniq, want)
    if len(missing):
        out.append(ids_problem("index_missing", ERROR, "{n} item(s) with a vector in the catalog are missing from "
                               f"index '{name}'", missing, name))
    if len(orphan):
        out.append(ids_problem("index_orphan", ERROR, "{n} id(s) in index '" + name + "' are not in the catalog",
                               orphan, name))
    return out + _check_vectors(store, name, index, np.intersect1d(want, uniq)[:max_checks])


def _check_vectors(store: Store, name: str, index: VectorIndex, ids: np.ndarray) -> list[Problem]:
    """Index vectors equal the catalog's durable copies (float16 widened to float32), where the index keeps copies."""
    bad: list[int] = []
    nonfinite: list[int] = []
    for start in range(0, len(ids), 5000):
        got_ids, vecs = store.catalog.vectors(name, ids[start : start + 5000].tolist())
        nonfinite += got_ids[~np.isfinite(vecs).all(axis=1)].tolist()
        held = index.stored_vectors(got_ids)
        if held is None:
            continue  # an index without exact copies: only the durable vectors are checked
        by_id = dict(zip(held[0].tolist(), held[1]))
        bad += [i for i, v in zip(got_ids.tolist(), vecs) if i in by_id and not np.allclose(by_id[i], v, atol=1e-3)]
    out = []
    if nonfinite:
        out.append(ids_problem("vector_corrupt", ERROR, "{n} durable vector(s) hold NaN or infinity", nonfinite, name))
    if bad:
        out.append(ids_problem("index_vector_mismatch", ERROR, "{n} vector(s) in index '" + name
                               + "' differ from the catalog's copy", bad, name))
    return out


def _text_ids(store: Store) -> np.ndarray:
    ids = [i for batch in store.catalog.iter_texts() for i, _ in batch]
    return np.asarray(ids, dtype=np.int64)


def _check_bm25(store: Store, counts: dict[str, Any]) -> list[Problem]:
    want = _text_ids(store)
    try:
        loaded = Bm25Index.load(store.index_dir, Space.BM25)
    except StoreError as exc:
        return [Problem("bm25_unreadable", ERROR, str(exc), Space.BM25)]
    if loaded is None:
        return [Problem("bm25_not_saved", WARNING, "no saved BM25 index; readers rebuild it on every open",
                        Space.BM25)] if len(want) else []
    index, seq = loaded
    counts.setdefault("indexes", {})[Space.BM25.value] = len(index)
    head = catalog_head(store.catalog)
    if seq != head:
        return [Problem("bm25_stale", WARNING, f"saved BM25 index covers change {seq}, the catalog is at {head} "
                        "(rebuilt on open)", Space.BM25)]
    have = index.ids()
    out = []
    if len(np.unique(have)) != len(have):
        out.append(Problem("index_duplicate", ERROR, "the BM25 index holds an id more than once", Space.BM25))
    missing, orphan = np.setdiff1d(want, have), np.setdiff1d(have, want)
    if len(missing):
        out.append(ids_problem("index_missing", ERROR, "{n} item(s) with text are missing from the BM25 index",
                               missing, Space.BM25))
    if len(orphan):
        out.append(ids_problem("index_orphan", ERROR, "{n} id(s) in the BM25 index are not items with text",
                               orphan, Space.BM25))
    return out


def _check_items(store: Store, spaces: set[str]) -> list[Problem]:
    """Each item has the durable vectors it needs; no duplicates; sources count their items."""
    have = {name: set(store.catalog.item_ids(name).tolist()) for name in spaces}
    missing: dict[str, list[int]] = {name: [] for name in spaces}
    per_source: Counter[int] = Counter()
    seen: set[int] = set()
    dups: list[int] = []
    for batch in store.catalog.item_summaries():
        for item in batch:
            per_source[item.source_id] += 1
            for name in spaces_for(has_text=bool(item.text), visual=item.visual, available=spaces):
                if item.id not in have[name]:
                    missing[name].append(item.id)
            key = hash((item.source_id, item.kind, json.dumps(item.locator, sort_keys=True), item.text))
            if key in seen:
                dups.append(item.id)
            seen.add(key)
    out = [
        ids_problem("vector_missing", ERROR, "{n} item(s) have no durable vector in space '" + name + "'", ids, name)
        for name, ids in sorted(missing.items()) if ids
    ]
    if dups:
        out.append(ids_problem("item_duplicate", ERROR, "{n} item(s) repeat another item of the same source", dups))
    orphan_vecs = store.catalog.orphan_vector_ids()
    if orphan_vecs:
        out.append(ids_problem("vector_orphan", ERROR, "{n} durable vector(s) belong to no item", orphan_vecs))
    wrong = [src.uri for src in store.catalog.source_counts() if src.item_count != per_source.get(src.id, 0)]
    if wrong:
        out.append(Problem("source_count", ERROR, f"{len(wrong)} source(s) record another item count than they have, "
                           f"e.g. {wrong[0]}", count=len(wrong), path=wrong[0]))
    return out


def _check_runs(store: Store, found: list[Problem]) -> list[Problem]:
    if any(p.code == "writer_active" for p in found):
        return []
    # a run that ended well after them ingested what they left and cleaned up after them
    running = store.catalog.unfinished_runs()
    if not running:
        return []
    return [Problem("run_interrupted", WARNING, f"{len(running)} ingest run(s) never finished (killed?); what they "
                    "committed is kept, the rest is ingested by the next run", count=len(running))]
