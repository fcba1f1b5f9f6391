"""Repair a store from its catalog: what ``verify`` found, fixed without loading a model.

* every index (FAISS per dense space, BM25) is rebuilt from the catalog's durable
  vectors and texts and saved; the change log is then truncated;
* durable vectors of no item are deleted; sources get their true item count;
* a source whose items lack a vector they need (or hold a corrupt one) loses its
  items and is marked failed, so the next ingest encodes it again;
* a missing or unreadable thumbnail/preview is dropped from its item and the source
  is marked changed (content hash cleared), so the next ingest renders it again;
* orphan media files and stray index files are deleted; runs that never finished
  are marked interrupted.

Source files that changed or vanished are left to ``mmrag ingest`` (``--prune``).
The caller holds the store's write lock.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.maintenance.files import index_files_in_use, media_refs, readable_image
from retriever.maintenance.report import Problem, VerifyReport
from retriever.maintenance.verify import verify
from retriever.store import Store
from retriever.types import spaces_for

__all__ = ["RepairReport", "delete_orphan_media", "delete_stray_index_files", "repair", "tidy_after_run"]


@dataclass(frozen=True)
class RepairReport:
    store: str
    actions: tuple[str, ...]
    before: VerifyReport
    after: VerifyReport

    @property
    def ok(self) -> bool:
        return self.after.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "actions": list(self.actions),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def repair(store: Store, check_files: bool = True) -> RepairReport:
    """Verify, fix, rebuild every index from the catalog, verify again."""
    before = verify(store, check_files=check_files, holds_lock=True)
    actions: list[str] = []
    actions += _drop_orphan_vectors(store)
    actions += _fail_sources_missing_vectors(store, before)
    actions += _drop_bad_media(store)
    actions += _fix_counts(store)
    actions += _delete_orphan_files(store)
    actions += _close_runs(store)
    actions += rebuild_indexes(store)
    after = verify(store, check_files=check_files, holds_lock=True)
    return RepairReport(str(store.root), tuple(actions), before, after)


def rebuild_indexes(store: Store) -> list[str]:
    """Rebuild every space from the catalog (no re-encoding), save it and truncate the log."""
    actions = []
    for name in sorted(store.spaces()):
        space = store.space(name)
        if space is None:
            continue
        space.rebuild()
        space.save()
        actions.append(f"rebuilt index '{name}' from {len(space)} durable vector(s)")
    lexical = store.bm25()
    lexical.rebuild()  # even when the catalog head did not move
    lexical.save()
    actions.append(f"rebuilt the BM25 index from {len(lexical)} item text(s)")
    store.save(maintain=False)
    return actions


def _drop_orphan_vectors(store: Store) -> list[str]:
    n = store.catalog.delete_orphan_vectors()
    return [f"deleted {n} durable vector(s) of no item"] if n else []


def _fail_sources_missing_vectors(store: Store, report: VerifyReport) -> list[str]:
    """Sources whose items lack (or hold corrupt) vectors: drop the items, mark failed for re-ingest."""
    spaces = set(store.spaces())
    have = {name: set(store.catalog.item_ids(name).tolist()) for name in spaces}
    corrupt = {i for p in report.of("vector_corrupt") for i in _all_ids(store, p)}
    bad_sources: set[int] = set()
    for batch in store.catalog.item_summaries():
        for item in batch:
            need = spaces_for(has_text=bool(item.text), visual=item.visual, available=spaces)
            if item.id in corrupt or any(item.id not in have[n] for n in need):
                bad_sources.add(item.source_id)
    if not bad_sources:
        return []
    reason = "repair: its items lacked vectors (or held corrupt ones); ingest the file again to restore them"
    failed = store.catalog.fail_sources(bad_sources, reason)
    return [(f"removed the {failed.items} item(s) of {len(failed.uris)} source(s) with missing/corrupt vectors and "
             f"marked them failed for re-ingest: {', '.join(failed.uris[:5])}")]


def _all_ids(store: Store, problem: Problem) -> set[int]:
    """Every id a vector_corrupt problem refers to (the report lists only the first few)."""
    if problem.count <= len(problem.item_ids) or problem.space is None:
        return set(problem.item_ids)
    ids, vecs = store.catalog.vectors(problem.space, store.catalog.item_ids(problem.space).tolist())
    return set(ids[~np.isfinite(vecs).all(axis=1)].tolist()) | set(problem.item_ids)


def _drop_bad_media(store: Store) -> list[str]:
    """Clear references to missing/unreadable media; the source is re-rendered by the next ingest."""
    bad: dict[int, list[str]] = {}
    for rel, ids in media_refs(store).items():
        path = store.root / rel
        if readable_image(path) is not None or not path.resolve().is_relative_to(store.root):
            for iid in ids:
                bad.setdefault(iid, []).append(rel)
    if not bad:
        return []
    sources = store.catalog.drop_media(bad)
    for rels in bad.values():
        for rel in rels:
            path = store.root / rel
            if path.resolve().is_relative_to(store.root):
                path.unlink(missing_ok=True)
    return [(f"dropped {sum(map(len, bad.values()))} missing/unreadable thumbnail(s)/preview(s) of {len(bad)} "
             f"item(s); their {sources} source(s) are re-rendered by the next ingest")]


def _fix_counts(store: Store) -> list[str]:
    fixed = store.catalog.fix_item_counts()
    return [f"corrected the item count of {fixed} source(s)"] if fixed else []


def _delete_orphan_files(store: Store) -> list[str]:
    return delete_orphan_media(store) + delete_stray_index_files(store)


def delete_orphan_media(store: Store) -> list[str]:
    """Delete thumbnails and previews that no item refers to (the caller holds the write lock)."""
    refs = media_refs(store)
    media = 0
    for base in (store.thumb_dir, store.preview_dir):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if (path.is_file() or path.is_symlink()) and path.relative_to(store.root).as_posix() not in refs:
                path.unlink(missing_ok=True)
                media += 1
    return [f"deleted {media} orphan media file(s)"] if media else []


def delete_stray_index_files(store: Store) -> list[str]:
    """Delete files under ``indexes/`` that no index pointer refers to (the caller holds the write lock)."""
    if not store.index_dir.is_dir():
        return []
    keep = index_files_in_use(store)
    stray = 0
    for path in store.index_dir.iterdir():
        if path.name not in keep:
            _remove(path)
            stray += 1
    return [f"deleted {stray} stray index file(s)"] if stray else []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _close_runs(store: Store) -> list[str]:
    n = store.catalog.interrupt_running_runs()
    return [f"marked {n} unfinished run(s) interrupted"] if n else []


def tidy_after_run(store: Store, run_id: int | None) -> list[str]:
    """What the writer of a run that ended well cleans up (it holds the write lock, so no other
    writer is busy): index files no pointer refers to (left by an interrupted save), and, when an
    earlier run did not end well (killed, interrupted, failed: the runs that can leave files
    behind), media no item refers to; those runs are then marked as cleaned up, and the ones
    still marked running as interrupted."""
    actions = delete_stray_index_files(store)
    untidy = [run.id for run in store.catalog.runs_to_tidy(before=run_id)]
    if not untidy:
        return actions
    actions += delete_orphan_media(store)
    store.catalog.mark_runs_tidied(untidy)
    return actions + [f"cleaned up after {len(untidy)} earlier run(s) that did not finish well"]
