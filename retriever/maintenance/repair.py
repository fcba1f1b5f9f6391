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

from sqlalchemy import delete, func, select, update

from retriever.catalog.models import ChangeRow, ItemRow, RunRow, SourceRow, VectorRow, utcnow
from retriever.store import Store
from retriever.maintenance.verify import VerifyReport, expected_spaces, item_rows, verify
from retriever.maintenance.files import index_files_in_use, media_refs, readable_image

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
    lexical.seq = -1  # force a rebuild even when the catalog head did not move
    lexical.sync(force=True)
    lexical.save()
    actions.append(f"rebuilt the BM25 index from {len(lexical)} item text(s)")
    store.save(maintain=False)
    return actions


def _drop_orphan_vectors(store: Store) -> list[str]:
    with store.catalog.transaction() as s:
        n = s.execute(delete(VectorRow).where(VectorRow.item_id.not_in(select(ItemRow.id)))).rowcount
    return [f"deleted {n} durable vector(s) of no item"] if n else []


def _fail_sources_missing_vectors(store: Store, report: VerifyReport) -> list[str]:
    """Sources whose items lack (or hold corrupt) vectors: drop the items, mark failed for re-ingest."""
    spaces = set(store.spaces())
    have = {name: set(store.catalog.item_ids(name).tolist()) for name in spaces}
    corrupt = {i for p in report.of("vector_corrupt") for i in _all_ids(store, p)}
    bad_sources: set[int] = set()
    for rows in item_rows(store):
        for iid, sid, _kind, _loc, text, thumb, _prev in rows:
            need = expected_spaces(bool(text), thumb is not None, spaces)
            if iid in corrupt or any(iid not in have[n] for n in need):
                bad_sources.add(sid)
    if not bad_sources:
        return []
    reason = "repair: its items lacked vectors (or held corrupt ones); ingest the file again to restore them"
    with store.catalog.transaction() as s:
        uris = list(s.scalars(select(SourceRow.uri).where(SourceRow.id.in_(bad_sources))))
        item_ids = list(s.scalars(select(ItemRow.id).where(ItemRow.source_id.in_(bad_sources))))
        s.execute(delete(VectorRow).where(VectorRow.item_id.in_(item_ids)))
        s.execute(delete(ItemRow).where(ItemRow.id.in_(item_ids)))
        s.add_all(ChangeRow(op="del", item_id=i) for i in item_ids)
        s.execute(update(SourceRow).where(SourceRow.id.in_(bad_sources)).values(
            status="failed", error=reason, item_count=0, updated_at=utcnow()))
    return [(f"removed the {len(item_ids)} item(s) of {len(uris)} source(s) with missing/corrupt vectors and marked "
             f"them failed for re-ingest: {', '.join(sorted(uris)[:5])}")]


def _all_ids(store: Store, problem: Any) -> set[int]:
    """Every id a vector_corrupt problem refers to (the report lists only the first few)."""
    if problem.count <= len(problem.item_ids):
        return set(problem.item_ids)
    import numpy as np

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
    with store.catalog.transaction() as s:
        rows = s.scalars(select(ItemRow).where(ItemRow.id.in_(list(bad)))).all()
        for row in rows:
            if row.thumbnail in bad[row.id]:
                row.thumbnail = None
            if row.preview in bad[row.id]:
                row.preview = None
        sources = {row.source_id for row in rows}
        s.execute(update(SourceRow).where(SourceRow.id.in_(sources)).values(content_hash=None))
    for rels in bad.values():
        for rel in rels:
            path = store.root / rel
            if path.resolve().is_relative_to(store.root):
                path.unlink(missing_ok=True)
    return [(f"dropped {sum(map(len, bad.values()))} missing/unreadable thumbnail(s)/preview(s) of {len(bad)} "
             f"item(s); their {len(sources)} source(s) are re-rendered by the next ingest")]


def _fix_counts(store: Store) -> list[str]:
    with store.catalog.transaction() as s:
        actual = dict(s.execute(select(ItemRow.source_id, func.count()).group_by(ItemRow.source_id)).all())
        fixed = 0
        for row in s.scalars(select(SourceRow)):
            if (row.item_count or 0) != actual.get(row.id, 0):
                row.item_count = actual.get(row.id, 0)
                fixed += 1
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
    with store.catalog.transaction() as s:
        n = s.execute(update(RunRow).where(RunRow.status == "running").values(
            status="interrupted", finished_at=utcnow())).rowcount
    return [f"marked {n} unfinished run(s) interrupted"] if n else []


def tidy_after_run(store: Store, run_id: int | None) -> list[str]:
    """What the writer of a run that ended well cleans up (it holds the write lock, so no other
    writer is busy): index files no pointer refers to (left by an interrupted save), and, when an
    earlier run did not end well (killed, interrupted, failed: the runs that can leave files
    behind), media no item refers to; those runs are then marked as cleaned up, and the ones
    still marked running as interrupted."""
    actions = delete_stray_index_files(store)
    with store.catalog.session() as s:
        rows = s.execute(select(RunRow.id, RunRow.summary).where(RunRow.status != "ok")).all()
    untidy = [rid for rid, summary in rows
              if (run_id is None or rid < run_id) and not (summary or {}).get("cleaned_up")]
    if not untidy:
        return actions
    actions += delete_orphan_media(store)
    with store.catalog.transaction() as s:
        for row in s.scalars(select(RunRow).where(RunRow.id.in_(untidy))):
            if row.status == "running":
                row.status, row.finished_at = "interrupted", utcnow()
            row.summary = {**(row.summary or {}), "cleaned_up": True}
    return actions + [f"cleaned up after {len(untidy)} earlier run(s) that did not finish well"]

