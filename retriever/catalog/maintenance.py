"""The catalog queries of ``verify`` and ``repair``, and the one-time format upgrades.

A mixin of ``Catalog``: whole-catalog scans (every item, every vector's size, orphans) and
the fixes that repair applies in one transaction each. Callers get frozen records.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from retriever.catalog.connection import CatalogBase
from retriever.catalog.models import ItemRow, RunRow, SourceRow, VectorRow, utcnow
from retriever.catalog.records import FailedSources, ItemSummary, RunRecord, SourceCount
from retriever.types import RunStatus, SourceStatus

__all__ = ["MaintenanceQueries"]


def _rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE touched (``Session.execute`` is typed as returning a plain ``Result``)."""
    return int(cast(CursorResult[Any], result).rowcount)


class MaintenanceQueries(CatalogBase):
    """Scans and fixes over the whole catalog."""

    # ---- scans ----------------------------------------------------------------------
    def item_summaries(self, batch: int = 5000) -> Iterator[list[ItemSummary]]:
        """Every item (without metadata or vectors) in id order, ``batch`` at a time."""
        cols = (ItemRow.id, ItemRow.source_id, ItemRow.kind, ItemRow.locator, ItemRow.text, ItemRow.thumbnail,
                ItemRow.preview)
        last = -1
        while True:
            with self.session() as s:
                rows = s.execute(select(*cols).where(ItemRow.id > last).order_by(ItemRow.id).limit(batch)).all()
            if not rows:
                return
            last = int(rows[-1][0])
            yield [ItemSummary(int(r[0]), int(r[1]), r[2], dict(r[3] or {}), r[4], r[5], r[6]) for r in rows]

    def wrong_size_vectors(self, space: str, dim: int) -> list[int]:
        """Items whose durable vector in ``space`` is not ``dim`` float16 values."""
        with self.session() as s:
            q = select(VectorRow.item_id).where(VectorRow.space == space, func.length(VectorRow.data) != dim * 2)
            return [int(i) for i in s.scalars(q)]

    def orphan_vector_ids(self) -> list[int]:
        """Item ids of durable vectors whose item is gone."""
        with self.session() as s:
            q = select(VectorRow.item_id).where(VectorRow.item_id.not_in(select(ItemRow.id)))
            return [int(i) for i in s.scalars(q)]

    def source_counts(self) -> list[SourceCount]:
        """Every source with the item count it records."""
        with self.session() as s:
            rows = s.execute(select(SourceRow.id, SourceRow.uri, SourceRow.item_count)).all()
        return [SourceCount(int(i), uri, int(n or 0)) for i, uri, n in rows]

    def unfinished_runs(self) -> list[int]:
        """Runs still marked running that no run after them ended well (killed, not yet tidied up)."""
        with self.session() as s:
            last_ok = s.scalar(select(func.max(RunRow.id)).where(RunRow.status == RunStatus.OK)) or 0
            q = select(RunRow.id).where(RunRow.status == RunStatus.RUNNING, RunRow.id > last_ok)
            return [int(i) for i in s.scalars(q)]

    def runs_to_tidy(self, before: int | None) -> list[RunRecord]:
        """Runs before ``before`` (all when None) that did not end well and were not cleaned up after."""
        with self.session() as s:
            rows = s.execute(select(RunRow.id, RunRow.status, RunRow.summary).where(RunRow.status != RunStatus.OK))
            runs = [RunRecord(int(i), status, dict(summary or {})) for i, status, summary in rows]
        return [r for r in runs if (before is None or r.id < before) and not r.summary.get("cleaned_up")]

    # ---- fixes ----------------------------------------------------------------------
    def delete_orphan_vectors(self) -> int:
        with self.transaction() as s:
            return _rowcount(s.execute(delete(VectorRow).where(VectorRow.item_id.not_in(select(ItemRow.id)))))

    def fail_sources(self, source_ids: Collection[int], reason: str) -> FailedSources:
        """Delete the sources' items (logged for the indexes) and mark them failed with ``reason``.

        Their media files become orphans (``repair`` deletes those); the next ingest redoes the sources.
        """
        ids = list(source_ids)
        with self.transaction() as s:
            uris = tuple(sorted(s.scalars(select(SourceRow.uri).where(SourceRow.id.in_(ids)))))
            n_items = int(s.scalar(select(func.count()).select_from(ItemRow).where(ItemRow.source_id.in_(ids))) or 0)
            self._delete_items(s, ids)
            s.execute(update(SourceRow).where(SourceRow.id.in_(ids)).values(
                status=SourceStatus.FAILED, error=reason, item_count=0, updated_at=utcnow()))
        return FailedSources(uris, n_items)

    def drop_media(self, refs: Mapping[int, Collection[str]]) -> int:
        """Clear the given thumbnail/preview paths from their items and mark their sources changed
        (content hash cleared, so the next ingest renders them again); returns how many sources."""
        with self.transaction() as s:
            rows = s.scalars(select(ItemRow).where(ItemRow.id.in_(list(refs)))).all()
            for row in rows:
                if row.thumbnail in refs[row.id]:
                    row.thumbnail = None
                if row.preview in refs[row.id]:
                    row.preview = None
            sources = {row.source_id for row in rows}
            s.execute(update(SourceRow).where(SourceRow.id.in_(sources)).values(content_hash=None))
        return len(sources)

    def fix_item_counts(self) -> int:
        """Give every source its true item count; returns how many were wrong."""
        with self.transaction() as s:
            q = select(ItemRow.source_id, func.count()).group_by(ItemRow.source_id)
            actual = {int(sid): int(n) for sid, n in s.execute(q)}
            fixed = 0
            for row in s.scalars(select(SourceRow)):
                if (row.item_count or 0) != actual.get(row.id, 0):
                    row.item_count = actual.get(row.id, 0)
                    fixed += 1
        return fixed

    def interrupt_running_runs(self) -> int:
        """Mark every run still marked running as interrupted; returns how many."""
        with self.transaction() as s:
            return _rowcount(s.execute(update(RunRow).where(RunRow.status == RunStatus.RUNNING).values(
                status=RunStatus.INTERRUPTED, finished_at=utcnow())))

    def mark_runs_tidied(self, run_ids: Collection[int]) -> None:
        """Record that what the runs left behind was cleaned up (those still running become interrupted)."""
        with self.transaction() as s:
            for row in s.scalars(select(RunRow).where(RunRow.id.in_(list(run_ids)))):
                if row.status == RunStatus.RUNNING:
                    row.status, row.finished_at = RunStatus.INTERRUPTED, utcnow()
                row.summary = {**(row.summary or {}), "cleaned_up": True}

    # ---- format upgrades ----------------------------------------------------------------
    def move_text_item_vectors(self, from_space: str, to_space: str) -> int:
        """Move the ``from_space`` vectors of items without a thumbnail (text items) to ``to_space``."""
        with self.transaction() as s:
            return _move_vectors(s, from_space, to_space)


def _move_vectors(s: Session, from_space: str, to_space: str) -> int:
    text_items = select(ItemRow.id).where(ItemRow.thumbnail.is_(None))
    stmt = update(VectorRow).where(VectorRow.space == from_space, VectorRow.item_id.in_(text_items))
    return _rowcount(s.execute(stmt.values(space=to_space)))
