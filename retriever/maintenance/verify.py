"""Check a store's catalog against its indexes and files, and repair what can be repaired.

``verify(store)`` reads only. It compares what any reader would get when it opens
the store (each saved index plus the change log replayed onto it) with the catalog,
the source of truth; checks the durable vectors, thumbnails and previews; and looks
for files nothing refers to. ``repair(store)`` (the caller holds the write lock)
rebuilds every index from the catalog's durable vectors (no model is loaded), removes
what it cannot fix so that the next ingest redoes it, deletes orphan files, and
verifies again.

Severity: an ``error`` means the store is inconsistent (a reader could miss or
mis-rank items); a ``warning`` is something to tidy up or to re-ingest (a stale cache,
an orphan file, a source file changed since it was ingested).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
from sqlalchemy import func, select

from retriever.catalog.models import ItemRow, RunRow, SourceRow, VectorRow
from retriever.errors import StoreError
from retriever.index.bm25 import Bm25Index
from retriever.index.spaces import DenseSpace, catalog_head
from retriever.store import Store
from retriever.index.faiss_index import FaissStore, load_pointer
from retriever.types import SPACE_BM25, SPACE_CLIP, SPACE_CLIP_TEXTS, SPACE_TEXT

__all__ = ["ERROR", "WARNING", "Problem", "VerifyReport", "expected_spaces", "ids_problem", "item_rows", "verify"]

ERROR, WARNING = "error", "warning"
_SHOW_IDS = 20  # ids listed per problem (the count is always exact)
_EXACT_KINDS = ("flat", "hnsw")  # index kinds whose stored vectors are exact float32 copies


@dataclass(frozen=True)
class Problem:
    """One finding: a stable ``code``, its severity and a message a person can act on."""

    code: str
    severity: str
    message: str
    space: str | None = None
    item_ids: tuple[int, ...] = ()
    count: int = 1
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"code": self.code, "severity": self.severity, "message": self.message, "count": self.count}
        if self.space:
            out["space"] = self.space
        if self.item_ids:
            out["item_ids"] = list(self.item_ids)
        if self.path:
            out["path"] = self.path
        return out


@dataclass(frozen=True)
class VerifyReport:
    store: str
    problems: tuple[Problem, ...]
    counts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not any(p.severity == ERROR for p in self.problems)

    @property
    def clean(self) -> bool:
        return not self.problems

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def of(self, code: str) -> list[Problem]:
        return [p for p in self.problems if p.code == code]

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "clean": self.clean,
            "errors": sum(p.severity == ERROR for p in self.problems),
            "warnings": sum(p.severity == WARNING for p in self.problems),
            "counts": dict(self.counts),
            "problems": [p.to_dict() for p in self.problems],
        }


def ids_problem(code: str, severity: str, message: str, ids: Any, space: str | None = None) -> Problem:
    ids = sorted(int(i) for i in ids)
    return Problem(code, severity, message.format(n=len(ids)), space, tuple(ids[:_SHOW_IDS]), len(ids))


def expected_spaces(has_text: bool, visual: bool, spaces: set[str]) -> set[str]:
    """The dense spaces an item belongs in (the rule ``indexers.ingest.pipeline.encode_items`` follows)."""
    out = set()
    if SPACE_TEXT in spaces and has_text:
        out.add(SPACE_TEXT)
    if SPACE_CLIP in spaces and visual:
        out.add(SPACE_CLIP)
    if SPACE_CLIP_TEXTS in spaces and has_text and not visual:
        out.add(SPACE_CLIP_TEXTS)
    return out


def item_rows(store: Store, batch: int = 5000) -> Iterator[list[tuple]]:
    """(id, source_id, kind, locator, text, thumbnail, preview) of every item, in id order."""
    cols = (ItemRow.id, ItemRow.source_id, ItemRow.kind, ItemRow.locator, ItemRow.text, ItemRow.thumbnail,
            ItemRow.preview)
    last = -1
    while True:
        with store.catalog.session() as s:
            rows = s.execute(select(*cols).where(ItemRow.id > last).order_by(ItemRow.id).limit(batch)).all()
        if not rows:
            return
        last = rows[-1][0]
        yield [tuple(r) for r in rows]


def verify(
    store: Store, check_files: bool = True, hash_all: bool = False, max_vector_checks: int = 50_000,
    holds_lock: bool = False,
) -> VerifyReport:
    """Check catalog <-> indexes <-> files; see the module docstring for what is checked.

    ``holds_lock``: the caller is the writer (repair), so a held write lock is its own.
    """
    problems: list[Problem] = []
    counts: dict[str, Any] = dict(store.catalog.counts())
    counts["head"] = catalog_head(store.catalog)
    if not holds_lock and _writer_active(store):
        problems.append(Problem("writer_active", WARNING, f"an ingest is writing to {store.root}; findings may be transient"))
    spaces = store.spaces()
    problems += _check_manifest(store, set(spaces), counts)
    for name, info in sorted(spaces.items()):
        problems += _check_dense(store, name, info.dim, counts, max_vector_checks)
    problems += _check_bm25(store, counts)
    problems += _check_items(store, set(spaces))
    problems += _check_runs(store, problems)
    from retriever.maintenance.files import check_index_files, check_media, check_sources

    problems += check_media(store)
    problems += check_index_files(store)
    if check_files:
        problems += check_sources(store, hash_all)
    return VerifyReport(str(store.root), tuple(problems), counts)


def _writer_active(store: Store) -> bool:
    import portalocker

    path = store.root / "write.lock"
    if not path.exists():
        return False
    try:
        with open(path, "rb") as fh:
            portalocker.lock(fh, portalocker.LOCK_SH | portalocker.LOCK_NB)
            portalocker.unlock(fh)
        return False
    except portalocker.LockException:
        return True
    except OSError:
        return False


def _check_manifest(store: Store, spaces: set[str], counts: Mapping[str, Any]) -> list[Problem]:
    out = []
    with_vectors = set(counts.get("vectors_by_space", {}))
    if counts.get("items") and not store.manifest_path.exists():
        out.append(Problem("manifest_missing", ERROR, f"{store.manifest_path} is missing but the catalog has items",
                           path=str(store.manifest_path)))
    for name in sorted(with_vectors - spaces):
        out.append(Problem("space_unknown", ERROR, f"the catalog has vectors in space '{name}', which the manifest "
                           "does not list", space=name))
    for name, info in store.spaces().items():
        with store.catalog.session() as s:
            bad = list(s.scalars(select(VectorRow.item_id).where(
                VectorRow.space == name, func.length(VectorRow.data) != info.dim * 2)))
        if bad:
            out.append(ids_problem("vector_corrupt", ERROR, "{n} durable vector(s) are not " f"{info.dim}-d float16",
                                    bad, name))
    return out


def _check_dense(store: Store, name: str, dim: int, counts: dict[str, Any], max_checks: int) -> list[Problem]:
    """The saved index, replayed like a reader replays it, against the catalog's vectors."""
    out: list[Problem] = []
    head, floor = catalog_head(store.catalog), store.catalog.log_floor()
    try:
        loaded = FaissStore.load(store.index_dir, name, store.config.index)
    except StoreError as exc:
        loaded = None
        out.append(Problem("index_unreadable", ERROR, str(exc), name, path=str(store.index_dir)))
    want = store.catalog.item_ids(name)
    if loaded is None and not out and len(want):
        out.append(Problem("index_not_saved", WARNING, f"space '{name}' has no saved index; readers rebuild it "
                           "from the catalog on every open", name))
    if loaded is not None:
        seq = loaded[1]
        if loaded[0].dim != dim:
            out.append(Problem("index_dim", ERROR, f"saved index of '{name}' is {loaded[0].dim}-d, the manifest "
                               f"says {dim}-d", name))
        elif seq > head:
            out.append(Problem("index_ahead", ERROR, f"saved index of '{name}' covers change {seq} but the catalog "
                               f"log ends at {head} (catalog restored from an older copy?)", name))
        elif seq < floor:
            out.append(Problem("index_stale", WARNING, f"saved index of '{name}' (change {seq}) is older than the "
                               f"kept log ({floor}); readers rebuild it on every open", name))
        elif seq < head:
            out.append(Problem("index_stale", WARNING, f"saved index of '{name}' lags the catalog by {head - seq} "
                               "change(s) (replayed on open)", name))
    space = DenseSpace(name, dim, store.index_dir, store.catalog, store.config.index)
    space.open()  # what a reader gets: the saved index plus the replayed log (or a rebuild)
    assert space.index is not None
    have = space.index.ids()
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
    if space.index.kind.lower() in _EXACT_KINDS:
        out += _check_vectors(store, space, np.intersect1d(want, uniq)[:max_checks])
    return out


def _check_vectors(store: Store, space: DenseSpace, ids: np.ndarray) -> list[Problem]:
    """Index vectors equal the catalog's durable copies (float16 widened to float32)."""
    bad: list[int] = []
    nonfinite: list[int] = []
    index = space.index._index  # the IndexIDMap2 (reconstruct by id)
    for start in range(0, len(ids), 5000):
        got_ids, vecs = store.catalog.vectors(space.name, ids[start : start + 5000].tolist())
        nonfinite += got_ids[~np.isfinite(vecs).all(axis=1)].tolist()
        for iid, vec in zip(got_ids.tolist(), vecs):
            if not np.allclose(index.reconstruct(int(iid)), vec, atol=1e-3):
                bad.append(iid)
    out = []
    if nonfinite:
        out.append(ids_problem("vector_corrupt", ERROR, "{n} durable vector(s) hold NaN or infinity",
                                nonfinite, space.name))
    if bad:
        out.append(ids_problem("index_vector_mismatch", ERROR, "{n} vector(s) in index '" + space.name
                                + "' differ from the catalog's copy", bad, space.name))
    return out


def _text_ids(store: Store) -> np.ndarray:
    ids = [i for batch in store.catalog.iter_texts() for i, _ in batch]
    return np.asarray(ids, dtype=np.int64)


def _check_bm25(store: Store, counts: dict[str, Any]) -> list[Problem]:
    head = catalog_head(store.catalog)
    want = _text_ids(store)
    try:
        pointer = load_pointer(store.index_dir, SPACE_BM25)
    except StoreError as exc:
        return [Problem("bm25_unreadable", ERROR, str(exc), SPACE_BM25)]
    if pointer is None:
        return [Problem("bm25_not_saved", WARNING, "no saved BM25 index; readers rebuild it on every open",
                        SPACE_BM25)] if len(want) else []
    loaded = Bm25Index.load(store.index_dir, SPACE_BM25)
    if loaded is None:
        return [Problem("bm25_unreadable", ERROR, f"saved BM25 index {store.index_dir / str(pointer.get('dir'))} is "
                        "unreadable; run `mmrag repair`", SPACE_BM25)]
    index, seq = loaded
    counts.setdefault("indexes", {})[SPACE_BM25] = len(index)
    if seq != head:
        return [Problem("bm25_stale", WARNING, f"saved BM25 index covers change {seq}, the catalog is at {head} "
                        "(rebuilt on open)", SPACE_BM25)]
    have = index._ids
    out = []
    if len(np.unique(have)) != len(have):
        out.append(Problem("index_duplicate", ERROR, "the BM25 index holds an id more than once", SPACE_BM25))
    missing, orphan = np.setdiff1d(want, have), np.setdiff1d(have, want)
    if len(missing):
        out.append(ids_problem("index_missing", ERROR, "{n} item(s) with text are missing from the BM25 index",
                                missing, SPACE_BM25))
    if len(orphan):
        out.append(ids_problem("index_orphan", ERROR, "{n} id(s) in the BM25 index are not items with text",
                                orphan, SPACE_BM25))
    return out


def _check_items(store: Store, spaces: set[str]) -> list[Problem]:
    """Each item has the durable vectors it needs; no duplicates; sources count their items."""
    have = {name: set(store.catalog.item_ids(name).tolist()) for name in spaces}
    missing: dict[str, list[int]] = {name: [] for name in spaces}
    per_source: Counter[int] = Counter()
    seen: dict[int, int] = {}
    dups: list[int] = []
    for rows in item_rows(store):
        for iid, sid, kind, loc, text, thumb, _prev in rows:
            per_source[sid] += 1
            for name in expected_spaces(bool(text), thumb is not None, spaces):
                if iid not in have[name]:
                    missing[name].append(iid)
            key = hash((sid, kind, json.dumps(loc, sort_keys=True), text))
            if key in seen:
                dups.append(iid)
            seen[key] = iid
    out = [
        ids_problem("vector_missing", ERROR, "{n} item(s) have no durable vector in space '" + name + "'", ids, name)
        for name, ids in sorted(missing.items()) if ids
    ]
    if dups:
        out.append(ids_problem("item_duplicate", ERROR, "{n} item(s) repeat another item of the same source", dups))
    with store.catalog.session() as s:
        orphan_vecs = list(s.scalars(select(VectorRow.item_id).where(VectorRow.item_id.not_in(select(ItemRow.id)))))
        sources = s.execute(select(SourceRow.id, SourceRow.uri, SourceRow.item_count)).all()
    if orphan_vecs:
        out.append(ids_problem("vector_orphan", ERROR, "{n} durable vector(s) belong to no item", orphan_vecs))
    wrong = [uri for sid, uri, n in sources if (n or 0) != per_source.get(sid, 0)]
    if wrong:
        out.append(Problem("source_count", ERROR, f"{len(wrong)} source(s) record another item count than they have, "
                           f"e.g. {wrong[0]}", count=len(wrong), path=wrong[0]))
    return out


def _check_runs(store: Store, found: list[Problem]) -> list[Problem]:
    if any(p.code == "writer_active" for p in found):
        return []
    with store.catalog.session() as s:
        last_ok = s.scalar(select(func.max(RunRow.id)).where(RunRow.status == "ok")) or 0
        # a run that ended well after them ingested what they left and cleaned up after them
        running = list(s.scalars(select(RunRow.id).where(RunRow.status == "running", RunRow.id > last_ok)))
    if not running:
        return []
    return [Problem("run_interrupted", WARNING, f"{len(running)} ingest run(s) never finished (killed?); what they "
                    "committed is kept, the rest is ingested by the next run", count=len(running))]
