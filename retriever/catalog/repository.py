"""The catalog repository: every read and write of the SQL catalog goes through here.

One transaction per source: a source's old items are deleted, its new items,
their vectors and the change-log entries are inserted, and the source row is
updated, all at once. Readers (SQLite WAL, PostgreSQL MVCC) therefore see a
source either before or after an ingest, never half-written. The connection lives in
``connection.CatalogBase``, the whole-catalog scans and fixes of maintenance in
``maintenance.MaintenanceQueries``; callers get the frozen records of ``records``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from retriever.catalog.api_keys import ApiKeyQueries
from retriever.catalog.maintenance import MaintenanceQueries
from retriever.catalog.models import ChangeRow, ItemRow, MetaRow, RunRow, SourceRow, VectorRow, utcnow
from retriever.catalog.records import (
    ItemRecord,
    NewItem,
    SourceInfo,
    SourceRecord,
    chunks,
    decode_vectors,
    encode_vector,
    item_record,
    source_record,
)
from retriever.types import RunStatus, SourceStatus

__all__ = ["Catalog", "SourceRecord", "ItemRecord", "NewItem", "SourceInfo", "encode_vector", "decode_vectors"]


class Catalog(MaintenanceQueries, ApiKeyQueries):
    """Repository over the SQL catalog (SQLite by default, any SQLAlchemy URL)."""

    # ---- sources ------------------------------------------------------------
    def get_source(self, uri: str) -> SourceRecord | None:
        with self.session() as s:
            row = s.scalar(select(SourceRow).where(SourceRow.uri == uri))
            return source_record(row) if row else None

    def source_with_hash(self, content_hash: str, content_type: str | None, other_than: str) -> SourceRecord | None:
        """The first ingested source (status ok) but ``other_than`` whose file has these bytes, read
        as ``content_type``."""
        with self.session() as s:
            row = s.scalar(select(SourceRow).where(
                SourceRow.content_hash == content_hash, SourceRow.content_type == content_type,
                SourceRow.status == SourceStatus.OK, SourceRow.uri != other_than).order_by(SourceRow.id).limit(1))
            return source_record(row) if row else None

    def sources(self, status: str | None = None) -> list[SourceRecord]:
        with self.session() as s:
            q = select(SourceRow).order_by(SourceRow.uri)
            if status:
                q = q.where(SourceRow.status == status)
            return [source_record(r) for r in s.scalars(q)]

    def commit_source(
        self,
        info: SourceInfo,
        items: Sequence[NewItem],
        *,
        metadata: Mapping[str, Any],
        notes: Sequence[str],
        run_id: int | None,
        write_files: Callable[[Sequence[int], Sequence[NewItem]], None] | None = None,
    ) -> list[int]:
        """Replace a source's items with ``items`` atomically; returns the new item ids.

        ``write_files(ids, items)`` runs after ids are assigned and before commit
        (thumbnails are named by item id); it may set ``thumbnail``/``preview``.
        """
        old_media: list[str] = []
        with self.transaction() as s:
            src = s.scalar(select(SourceRow).where(SourceRow.uri == info.uri))
            if src is None:
                src = SourceRow(uri=info.uri)
                _fill_source(src, info, status=SourceStatus.OK, error=None, run_id=run_id)
                s.add(src)
                s.flush()
            else:
                old_media = self._delete_items(s, [src.id])
                _fill_source(src, info, status=SourceStatus.OK, error=None, run_id=run_id)
            src.meta, src.notes, src.item_count = dict(metadata), list(notes), len(items)
            rows = _item_rows(src.id, items)
            s.add_all(rows)
            s.flush()
            ids = [r.id for r in rows]
            if write_files is not None:
                write_files(ids, items)
                for row, it in zip(rows, items):
                    row.thumbnail, row.preview = it.thumbnail, it.preview
            s.add_all(
                VectorRow(item_id=iid, space=space, data=encode_vector(vec))
                for iid, it in zip(ids, items)
                for space, vec in it.vectors.items()
            )
            s.add_all(ChangeRow(op="add", item_id=iid) for iid in ids)
        self._media_deleted(old_media)
        return ids

    def record_failure(self, info: SourceInfo, reason: str, run_id: int | None) -> None:
        """Mark a source failed. Items a previous version left are kept (nothing stored is lost)."""
        with self.transaction() as s:
            src = s.scalar(select(SourceRow).where(SourceRow.uri == info.uri))
            if src is None:
                src = SourceRow(uri=info.uri, item_count=0, meta={}, notes=[])
                s.add(src)
                _fill_source(src, info, status=SourceStatus.FAILED, error=reason, run_id=run_id)
            else:  # keep the old hash so the file is retried once it changes back or is fixed
                src.status, src.error, src.run_id, src.updated_at = SourceStatus.FAILED, reason, run_id, utcnow()

    def remove_sources(self, uris: Iterable[str]) -> int:
        """Delete sources and their items from the catalog (logged for the indexes)."""
        uris = list(uris)
        if not uris:
            return 0
        with self.transaction() as s:
            ids = list(s.scalars(select(SourceRow.id).where(SourceRow.uri.in_(uris))))
            media = self._delete_items(s, ids)
            s.execute(delete(SourceRow).where(SourceRow.id.in_(ids)))
        self._media_deleted(media)
        return len(ids)

    def source_hashes(self, uris: Iterable[str]) -> dict[str, str | None]:
        """The content hash of each of ``uris`` that is a source (None for a source without one)."""
        out: dict[str, str | None] = {}
        with self.session() as s:
            for chunk in chunks(sorted(set(uris)), 500):
                q = select(SourceRow.uri, SourceRow.content_hash).where(SourceRow.uri.in_(chunk))
                out.update((str(uri), h) for uri, h in s.execute(q))
        return out

    def source_uris_matching(self, pattern: str) -> set[str]:
        """Source URIs matching a shell glob (``*`` crosses directories)."""
        return {r.uri for r in self.sources() if fnmatch.fnmatch(r.uri, pattern) or fnmatch.fnmatch(r.display, pattern)}

    # ---- items and vectors --------------------------------------------------
    def items(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        out: dict[int, ItemRecord] = {}
        with self.session() as s:
            for chunk in chunks(list(ids), 5000):
                q = (select(ItemRow, SourceRow.uri, SourceRow.display, SourceRow.content_hash)
                     .join(SourceRow).where(ItemRow.id.in_(chunk)))
                for row, uri, display, content_hash in s.execute(q):
                    out[row.id] = item_record(row, uri, display, content_hash)
        return out

    def items_of_source(self, uri: str) -> list[ItemRecord]:
        with self.session() as s:
            q = (
                select(ItemRow, SourceRow.uri, SourceRow.display, SourceRow.content_hash)
                .join(SourceRow)
                .where(SourceRow.uri == uri)
                .order_by(ItemRow.ordinal)
            )
            return [item_record(row, u, d, h) for row, u, d, h in s.execute(q)]

    def vectors(self, space: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of the given items that have a vector in ``space``."""
        got_ids: list[int] = []
        blobs: list[bytes] = []
        with self.session() as s:
            for chunk in chunks(list(ids), 5000):
                q = select(VectorRow.item_id, VectorRow.data).where(
                    VectorRow.space == space, VectorRow.item_id.in_(chunk)
                )
                for iid, data in s.execute(q):
                    got_ids.append(iid)
                    blobs.append(data)
        return np.asarray(got_ids, dtype=np.int64), decode_vectors(blobs)

    def spaces_of(self, ids: Sequence[int], spaces: Sequence[str]) -> dict[str, set[int]]:
        """For each of ``spaces``, which of ``ids`` have a vector there (no vector data read)."""
        out: dict[str, set[int]] = {name: set() for name in spaces}
        with self.session() as s:
            for chunk in chunks(list(ids), 5000):
                q = select(VectorRow.item_id, VectorRow.space).where(
                    VectorRow.space.in_(list(spaces)), VectorRow.item_id.in_(chunk)
                )
                for iid, space in s.execute(q):
                    out[space].add(int(iid))
        return out

    def iter_vectors(self, space: str, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream all (ids, vectors) of a space in id order, ``batch`` rows at a time."""
        last = -1
        while True:
            with self.session() as s:
                q = (
                    select(VectorRow.item_id, VectorRow.data)
                    .where(VectorRow.space == space, VectorRow.item_id > last)
                    .order_by(VectorRow.item_id)
                    .limit(batch)
                )
                rows = s.execute(q).all()
            if not rows:
                return
            last = rows[-1][0]
            yield np.asarray([r[0] for r in rows], dtype=np.int64), decode_vectors([r[1] for r in rows])

    def iter_texts(self, batch: int = 10_000) -> Iterator[list[tuple[int, str]]]:
        """Stream (item id, text) of every item with text, in id order."""
        last = -1
        while True:
            with self.session() as s:
                q = (
                    select(ItemRow.id, ItemRow.text)
                    .where(ItemRow.text.is_not(None), ItemRow.id > last)
                    .order_by(ItemRow.id)
                    .limit(batch)
                )
                rows = [(int(i), str(t)) for i, t in s.execute(q)]
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def max_item_id(self) -> int:
        """The highest id of an item in the catalog (0 when it has none).

        Ids are never reused, so a smaller id that is not in the catalog belonged to an item since removed.
        """
        with self.session() as s:
            return int(s.scalar(select(func.max(ItemRow.id))) or 0)

    def item_ids(self, space: str | None = None) -> np.ndarray:
        with self.session() as s:
            if space is None:
                q = select(ItemRow.id).order_by(ItemRow.id)
            else:
                q = select(VectorRow.item_id).where(VectorRow.space == space).order_by(VectorRow.item_id)
            return np.asarray(list(s.scalars(q)), dtype=np.int64)

    # ---- change log ---------------------------------------------------------
    def max_seq(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.max(ChangeRow.seq))) or 0)

    def min_seq(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.min(ChangeRow.seq))) or 0)

    def changes_since(self, seq: int, upto: int | None = None) -> list[tuple[int, str, int]]:
        with self.session() as s:
            q = select(ChangeRow.seq, ChangeRow.op, ChangeRow.item_id).where(ChangeRow.seq > seq)
            if upto is not None:
                q = q.where(ChangeRow.seq <= upto)
            return [(int(a), b, int(c)) for a, b, c in s.execute(q.order_by(ChangeRow.seq))]

    def truncate_changes(self, upto: int) -> None:
        """Drop log entries every saved index has absorbed (``seq <= upto``).

        The floor is recorded in ``meta['log']`` so a reader whose in-memory index
        is older than the floor knows to reload the saved index instead of replaying.
        """
        with self.transaction() as s:
            s.execute(delete(ChangeRow).where(ChangeRow.seq <= upto))
            row = s.get(MetaRow, "log")
            floor = max(int(upto), int(row.value.get("floor", 0)) if row else 0)
            if row is None:
                s.add(MetaRow(key="log", value={"floor": floor, "max_seq": floor}))
            else:
                row.value = {**row.value, "floor": floor}

    def log_floor(self) -> int:
        meta = self.get_meta("log")
        return int(meta.get("floor", 0)) if meta else 0

    # ---- runs and stats -----------------------------------------------------
    def start_run(self) -> int:
        with self.transaction() as s:
            run = RunRow(status=RunStatus.RUNNING, summary={})
            s.add(run)
            s.flush()
            return int(run.id)

    def finish_run(self, run_id: int, status: str, summary: Mapping[str, Any]) -> None:
        with self.transaction() as s:
            run = s.get(RunRow, run_id)
            if run is not None:
                run.status, run.summary, run.finished_at = status, dict(summary), utcnow()

    def counts(self) -> dict[str, Any]:
        with self.session() as s:
            by_status = dict(s.execute(select(SourceRow.status, func.count()).group_by(SourceRow.status)).all())
            by_modality = dict(s.execute(select(ItemRow.modality, func.count()).group_by(ItemRow.modality)).all())
            by_space = dict(s.execute(select(VectorRow.space, func.count()).group_by(VectorRow.space)).all())
            runs = s.scalar(select(func.count()).select_from(RunRow)) or 0
        return {
            "sources": sum(by_status.values()),
            "sources_by_status": by_status,
            "items": sum(by_modality.values()),
            "items_by_modality": by_modality,
            "vectors_by_space": by_space,
            "runs": runs,
        }


def _item_rows(source_id: int, items: Sequence[NewItem]) -> list[ItemRow]:
    return [
        ItemRow(source_id=source_id, ordinal=i, modality=it.modality, kind=it.kind, locator=dict(it.locator),
                text=it.text, meta=dict(it.metadata))
        for i, it in enumerate(items)
    ]


def _fill_source(src: SourceRow, info: SourceInfo, *, status: str, error: str | None, run_id: int | None) -> None:
    src.display, src.content_hash, src.size, src.mtime = info.display, info.content_hash, info.size, info.mtime
    src.content_type, src.family = info.content_type, info.family
    src.status, src.error, src.run_id, src.updated_at = status, error, run_id, utcnow()
