"""What an ingest run commits, whichever executor decoded and encoded its items.

``Committer`` assembles each source from its encoded items and its end message (a ``DoneMsg``
that says how many items the file gave), and commits it in one catalog transaction (items,
vectors, media files, change log) once everything has arrived; a failed file is recorded with
its reason. A file with the same bytes as another (``CopyMsg``) is committed with that one's
items, vectors and thumbnails, once that one is in the catalog. It runs in the thread that holds
the write lock (the in-process executor's main thread, the Ray executor's driver), so both
executors share one commit path and the same crash guarantees: a commit runs inside the run's
``critical()`` section, the indexes follow the change log, and they are saved every
``index.save_every_items`` items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexers.ingest.interrupt import Interrupt
from indexers.ingest.progress import ProgressTracker
from indexers.ingest.workers import CopyMsg, DoneMsg, FailMsg, UnchangedMsg
from retriever.catalog import NewItem, SourceInfo, SourceRecord
from retriever.config import Config
from retriever.store import Store
from retriever.types import SourceStatus

__all__ = ["Committer", "IngestReport", "Media", "copied_items"]

Media = tuple[bytes | None, bytes | None]  # an item's thumbnail and preview JPEGs


@dataclass
class IngestReport:
    """What a run did. ``failed`` and ``skipped`` hold (path, reason) pairs."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    items: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    run_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "items": self.items,
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "run_id": self.run_id,
        }


@dataclass
class _Pending:
    """A source being assembled: its encoded items by their place in the file and, once its file is
    read, its end message."""

    items: dict[int, tuple[NewItem, Media]] = field(default_factory=dict)
    done: DoneMsg | None = None

    @property
    def complete(self) -> bool:
        return self.done is not None and len(self.items) >= self.done.items


class Committer:
    """Book-keeping of one run: sources by file key, commits, failures and the report."""

    def __init__(
        self, store: Store, config: Config, tracker: ProgressTracker, interrupt: Interrupt, report: IngestReport
    ) -> None:
        self.store, self.config, self.tracker, self.interrupt, self.report = store, config, tracker, interrupt, report
        self.pending: dict[int, _Pending] = {}
        self.closed: set[int] = set()  # keys committed or failed: late items of a failed file are dropped
        self.since_save = 0
        self.settled: dict[int, str | None] = {}  # key -> None (committed) or why it failed
        self.waiting: dict[int, list[CopyMsg]] = {}  # key -> copies of that file, until it is settled
        self.due: list[CopyMsg] = []  # copies whose file has been settled

    def wants(self, key: int) -> bool:
        """Whether items of file ``key`` are still of use (it has neither failed nor been committed)."""
        return key not in self.closed

    def add(self, key: int, item: NewItem, media: Media, place: int | None = None) -> None:
        """One encoded item of file ``key``: the ``place``-th the file gave (default: the next one).
        Items are committed in that order, with their source (see ``commit_ready``); an item that
        arrives twice at one place (a task Ray ran again) counts once."""
        if key in self.closed:
            return
        p = self.pending.setdefault(key, _Pending())
        p.items.setdefault(len(p.items) if place is None else place, (item, media))

    def handle(self, msg: Any) -> None:
        """A file's end: ``DoneMsg`` (commits what is ready), ``FailMsg`` or ``UnchangedMsg``."""
        if isinstance(msg, DoneMsg):
            if msg.key not in self.closed:
                self.pending.setdefault(msg.key, _Pending()).done = msg
                self.commit_ready()
        elif isinstance(msg, FailMsg):
            self.fail(msg)
        elif isinstance(msg, UnchangedMsg):
            self.report.unchanged += 1
            self.tracker.file_done("")
        elif isinstance(msg, CopyMsg):
            self.copy(msg)

    def copy(self, msg: CopyMsg) -> None:
        """Commit file ``msg.key`` as a copy of the source or file with its bytes; a copy of a file of
        this run waits until that file is committed (or fails: the copy fails with its reason)."""
        if msg.key in self.closed:
            return
        if msg.twin_key is not None:
            if msg.twin_key not in self.settled:
                self.waiting.setdefault(msg.twin_key, []).append(msg)
                return
            failure = self.settled[msg.twin_key]
            if failure is not None:
                self.fail(FailMsg(msg.key, msg.info.uri, msg.info, failure))
                return
        copied = copied_items(self.store, msg.info)
        if isinstance(copied, str):
            self.fail(FailMsg(msg.key, msg.info.uri, msg.info, copied))
            return
        twin, items = copied
        done = DoneMsg(msg.key, msg.info, dict(twin.metadata), list(twin.notes), msg.updated, len(items))
        self.pending[msg.key] = _Pending(dict(enumerate(items)), done)
        self.commit_ready()

    def _settle(self, key: int, failure: str | None) -> None:
        self.settled[key] = failure
        self.due += self.waiting.pop(key, [])

    def _copy_due(self) -> None:
        while self.due:
            self.copy(self.due.pop(0))

    def fail(self, msg: FailMsg) -> None:
        """Record file ``msg.key`` as failed; items it gave are dropped (a previous version's stay)."""
        if msg.key in self.closed:
            return
        self.closed.add(msg.key)
        self.pending.pop(msg.key, None)
        info = msg.info or SourceInfo(msg.path, Path(msg.path).name, None, None, None)
        with self.interrupt.critical():
            self.store.catalog.record_failure(info, msg.reason, self.report.run_id)
            self.report.failed.append((msg.path, msg.reason))
            self.tracker.file_done(msg.path, failed=True)
        self._settle(msg.key, msg.reason)  # its copies fail alike: the same bytes
        self._copy_due()

    def commit_ready(self) -> None:
        """Commit every source whose items have all arrived, then bring the indexes up to date."""
        ready = [k for k, p in self.pending.items() if p.complete]
        if not ready:
            return
        with self.interrupt.critical():  # a first Ctrl-C waits for these commits and the index update
            for key in ready:
                self.closed.add(key)
                self._commit(self.pending.pop(key))
            self.store.sync(lexical=False)
            if self.since_save >= self.config.index.save_every_items:
                for space in self.store.dense.values():
                    space.save()
                self.since_save = 0
        self._copy_due()

    def incomplete(self) -> list[int]:
        """Keys of the files still being assembled."""
        return list(self.pending)

    def _commit(self, p: _Pending) -> None:
        done = p.done
        assert done is not None
        store = self.store
        ordered = [p.items[place] for place in sorted(p.items)]
        items = [item for item, _ in ordered]

        def write_files(ids: Sequence[int], new: Sequence[NewItem]) -> None:
            for iid, it, (_, (thumb, preview)) in zip(ids, new, ordered):
                it.thumbnail = _write_media(store, "thumb", iid, thumb)
                it.preview = _write_media(store, "preview", iid, preview)

        store.catalog.commit_source(
            done.info, items, metadata=done.metadata, notes=done.notes, run_id=self.report.run_id,
            write_files=write_files,
        )
        if done.updated:
            self.report.updated += 1
        else:
            self.report.added += 1
        self.report.items += len(items)
        self.since_save += len(items)
        self.tracker.file_done(done.info.uri, items=len(items))
        self._settle(done.key, None)


def _write_media(store: Store, kind: str, item_id: int, data: bytes | None) -> str | None:
    return None if data is None else store.write_media(kind, item_id, data)


def copied_items(store: Store, info: SourceInfo) -> tuple[SourceRecord, list[tuple[NewItem, Media]]] | str:
    """The items of a source with the bytes of ``info``'s file (its content hash) as items of that
    file: records, vectors and thumbnails as stored; why not, when there is none or it cannot be read.
    The source is looked up now, not when the file was hashed: one ingested since may have changed."""
    catalog = store.catalog
    twin = (catalog.source_with_hash(info.content_hash, info.content_type, other_than=info.uri)
            if info.content_hash else None)
    if twin is None:
        return "the source with the same bytes was changed or removed during this run; ingest the file again"
    twin_uri = twin.uri
    records = catalog.items_of_source(twin_uri)
    vectors: dict[int, dict[str, np.ndarray]] = {r.id: {} for r in records}
    for space in store.spaces():
        got, vecs = catalog.vectors(space, [r.id for r in records])
        for item_id, vec in zip(got, vecs):
            vectors[int(item_id)][space] = vec
    out: list[tuple[NewItem, Media]] = []
    for rec in records:
        media: list[bytes | None] = []
        for rel in (rec.thumbnail, rec.preview):
            path = store.resolve_media(rel)
            try:
                media.append(None if path is None else Path(path).read_bytes())
            except OSError as exc:
                return (f"cannot copy the items of {twin_uri}, which has the same bytes: its stored "
                        f"{rel} cannot be read ({exc.strerror or exc}); `mmrag verify` checks the store")
        locator = {**rec.locator.to_dict(), "uri": info.uri}
        item = NewItem(rec.modality.value, rec.kind, locator, rec.text, dict(rec.metadata), vectors[rec.id])
        out.append((item, (media[0], media[1])))
    return twin, out
