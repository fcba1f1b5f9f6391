"""The catalog repository: every read and write of the SQL catalog goes through here.

One transaction per source: a source's old items are deleted, its new items,
their vectors and the change-log entries are inserted, and the source row is
updated, all at once. Readers (SQLite WAL, PostgreSQL MVCC) therefore see a
source either before or after an ingest, never half-written.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote

import numpy as np
from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retriever.catalog.models import (
    Base,
    ChangeRow,
    ItemRow,
    MetaRow,
    RunRow,
    SourceRow,
    VectorRow,
    utcnow,
)
from retriever.errors import StoreError
from retriever.types import Locator, Modality

__all__ = ["Catalog", "SourceRecord", "ItemRecord", "NewItem", "SourceInfo", "encode_vector", "decode_vectors"]

VECTOR_DTYPE = np.dtype("<f2")


def encode_vector(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(blobs: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """float16 blobs -> float32 matrix (n, dim)."""
    if not blobs:
        return np.zeros((0, dim or 0), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).astype(np.float32)
    return arr.reshape(len(blobs), -1)


@dataclass(frozen=True)
class SourceInfo:
    """What the pipeline learned about a file before ingesting it."""

    uri: str
    display: str
    content_hash: str | None
    size: int | None
    mtime: float | None
    content_type: str | None = None
    family: str | None = None


@dataclass(frozen=True)
class SourceRecord:
    id: int
    uri: str
    display: str
    content_type: str | None
    family: str | None
    content_hash: str | None
    size: int | None
    mtime: float | None
    status: str
    error: str | None
    metadata: Mapping[str, Any]
    notes: Sequence[str]
    item_count: int


@dataclass(frozen=True)
class ItemRecord:
    id: int
    source_id: int
    source_uri: str
    source_display: str
    modality: Modality
    kind: str
    locator: Locator
    text: str | None
    thumbnail: str | None
    preview: str | None
    metadata: Mapping[str, Any]


@dataclass
class NewItem:
    """An item ready to be committed: its fields plus its vectors per space."""

    modality: str
    kind: str
    locator: Mapping[str, Any]
    text: str | None
    metadata: Mapping[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    thumbnail: str | None = None
    preview: str | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_read_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class Catalog:
    """Repository over the SQL catalog (SQLite by default, any SQLAlchemy URL)."""

    def __init__(self, url: str, *, create: bool = True, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        try:
            self.engine: SqlEngine = create_engine(url, future=True, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_read_pragmas if read_only else _sqlite_pragmas)
            if create and not read_only:
                Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open catalog {self.safe_url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # called with the store-relative media paths of deleted items, after their deletion committed
        self.on_media_deleted: Callable[[Sequence[str]], None] | None = None

    @classmethod
    def for_store(cls, store_dir: Path, url: str | None = None) -> "Catalog":
        if url:
            return cls(url)
        path = store_dir / "catalog.sqlite"
        if path.exists() and _read_only_fs(store_dir):
            # nothing can write there: open immutable, without the WAL's -shm/-wal files
            return cls(f"sqlite:///file:{quote(path.as_posix())}?mode=ro&immutable=1&uri=true", read_only=True)
        return cls(f"sqlite:///{path.as_posix()}")

    @property
    def safe_url(self) -> str:
        try:
            return self.engine.url.render_as_string(hide_password=True)
        except AttributeError:
            return self.url.split("@")[-1]

    def session(self) -> Session:
        return self._sessions()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction; a failed write (disk full, read-only, locked) raises StoreError."""
        try:
            with self.session() as s, s.begin():
                yield s
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot write to catalog {self.safe_url}: {cause}") from exc

    def close(self) -> None:
        self.engine.dispose()

    # ---- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> dict | None:
        with self.session() as s:
            row = s.get(MetaRow, key)
            return dict(row.value) if row else None

    def set_meta(self, key: str, value: Mapping[str, Any]) -> None:
        with self.transaction() as s:
            row = s.get(MetaRow, key)
            if row is None:
                s.add(MetaRow(key=key, value=dict(value)))
            else:
                row.value = dict(value)

    # ---- sources ------------------------------------------------------------
    def get_source(self, uri: str) -> SourceRecord | None:
        with self.session() as s:
            row = s.scalar(select(SourceRow).where(SourceRow.uri == uri))
            return _source_record(row) if row else None

    def sources(self, status: str | None = None) -> list[SourceRecord]:
        with self.session() as s:
            q = select(SourceRow).order_by(SourceRow.uri)
            if status:
                q = q.where(SourceRow.status == status)
            return [_source_record(r) for r in s.scalars(q)]

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
                _fill_source(src, info, status="ok", error=None, run_id=run_id)
                s.add(src)
                s.flush()
            else:
                old_media = self._delete_items(s, [src.id])
                _fill_source(src, info, status="ok", error=None, run_id=run_id)
            src.meta, src.notes, src.item_count = dict(metadata), list(notes), len(items)
            rows = [
                ItemRow(
                    source_id=src.id,
                    ordinal=i,
                    modality=it.modality,
                    kind=it.kind,
                    locator=dict(it.locator),
                    text=it.text,
                    meta=dict(it.metadata),
                )
                for i, it in enumerate(items)
            ]
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
                _fill_source(src, info, status="failed", error=reason, run_id=run_id)
            else:  # keep the old hash so the file is retried once it changes back or is fixed
                src.status, src.error, src.run_id, src.updated_at = "failed", reason, run_id, utcnow()

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

    def _delete_items(self, s: Session, source_ids: Sequence[int]) -> list[str]:
        """Delete the sources' items (logged); returns their media paths for removal after commit."""
        if not source_ids:
            return []
        rows = s.execute(
            select(ItemRow.id, ItemRow.thumbnail, ItemRow.preview).where(ItemRow.source_id.in_(source_ids))
        ).all()
        item_ids = [r[0] for r in rows]
        for chunk in _chunks(item_ids, 5000):
            s.execute(delete(VectorRow).where(VectorRow.item_id.in_(chunk)))
            s.execute(delete(ItemRow).where(ItemRow.id.in_(chunk)))
            s.add_all(ChangeRow(op="del", item_id=i) for i in chunk)
        return [path for r in rows for path in (r[1], r[2]) if path]

    def _media_deleted(self, paths: Sequence[str]) -> None:
        if paths and self.on_media_deleted is not None:
            self.on_media_deleted(paths)

    def source_uris_matching(self, pattern: str) -> set[str]:
        """Source URIs matching a shell glob (``*`` crosses directories)."""
        return {r.uri for r in self.sources() if fnmatch.fnmatch(r.uri, pattern) or fnmatch.fnmatch(r.display, pattern)}

    # ---- items and vectors --------------------------------------------------
    def items(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        out: dict[int, ItemRecord] = {}
        with self.session() as s:
            for chunk in _chunks(list(ids), 5000):
                q = select(ItemRow, SourceRow.uri, SourceRow.display).join(SourceRow).where(ItemRow.id.in_(chunk))
                for row, uri, display in s.execute(q):
                    out[row.id] = _item_record(row, uri, display)
        return out

    def items_of_source(self, uri: str) -> list[ItemRecord]:
        with self.session() as s:
            q = (
                select(ItemRow, SourceRow.uri, SourceRow.display)
                .join(SourceRow)
                .where(SourceRow.uri == uri)
                .order_by(ItemRow.ordinal)
            )
            return [_item_record(row, u, d) for row, u, d in s.execute(q)]

    def vectors(self, space: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of the given items that have a vector in ``space``."""
        got_ids: list[int] = []
        blobs: list[bytes] = []
        with self.session() as s:
            for chunk in _chunks(list(ids), 5000):
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
            for chunk in _chunks(list(ids), 5000):
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
                rows = [(int(i), t) for i, t in s.execute(q)]
            if not rows:
                return
            last = rows[-1][0]
            yield rows

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
            run = RunRow(status="running", summary={})
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

    def ping(self) -> None:
        try:
            with self.session() as s:
                s.execute(select(1))
        except OperationalError as exc:
            raise StoreError(f"catalog {self.safe_url} is not reachable: {exc}") from exc


def _fill_source(src: SourceRow, info: SourceInfo, *, status: str, error: str | None, run_id: int | None) -> None:
    src.display, src.content_hash, src.size, src.mtime = info.display, info.content_hash, info.size, info.mtime
    src.content_type, src.family = info.content_type, info.family
    src.status, src.error, src.run_id, src.updated_at = status, error, run_id, utcnow()


def _source_record(row: SourceRow) -> SourceRecord:
    return SourceRecord(
        id=row.id,
        uri=row.uri,
        display=row.display,
        content_type=row.content_type,
        family=row.family,
        content_hash=row.content_hash,
        size=row.size,
        mtime=row.mtime,
        status=row.status,
        error=row.error,
        metadata=dict(row.meta or {}),
        notes=list(row.notes or []),
        item_count=row.item_count or 0,
    )


def _item_record(row: ItemRow, uri: str, display: str) -> ItemRecord:
    return ItemRecord(
        id=int(row.id),
        source_id=int(row.source_id),
        source_uri=uri,
        source_display=display,
        modality=Modality(row.modality),
        kind=row.kind,
        locator=Locator.from_dict(row.locator),
        text=row.text,
        thumbnail=row.thumbnail,
        preview=row.preview,
        metadata=dict(row.meta or {}),
    )


def _chunks(seq: list, size: int) -> Iterator[list]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
