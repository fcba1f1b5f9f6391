"""The streaming ingest pipeline.

discover -> hash -> skip unchanged / replace changed -> ingest -> prepare
(decode workers) -> batch -> encode (main thread) -> commit catalog -> sync indexes.

Workers turn files into ``PreparedItem`` messages on a bounded queue, so decoding
and preprocessing overlap with inference and memory stays bounded. A source is
committed in one transaction once all its items are encoded; a file that fails
at any point is recorded as failed with its reason and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from indexers.base import IngestContext
from indexers.discover import Found, discover
from indexers.prepare import PreparedItem, prepare_item
from indexers.registry import Registry
from indexers.sniff import family
from retriever.catalog import NewItem, SourceInfo
from retriever.config import Config
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.errors import IngestError, LimitExceeded
from retriever.store import Store
from retriever.types import CLIP_SPACES, SPACE_CLIP, SPACE_CLIP_TEXTS, SPACE_TEXT

__all__ = ["IngestPipeline", "IngestReport", "hash_file"]


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "blake2b:" + h.hexdigest()


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


# ---- messages from workers to the main thread ---------------------------------
@dataclass(frozen=True)
class _ItemMsg:
    key: int
    item: PreparedItem


@dataclass(frozen=True)
class _DoneMsg:
    key: int
    info: SourceInfo
    metadata: dict
    notes: list
    updated: bool


@dataclass(frozen=True)
class _FailMsg:
    key: int
    path: str
    info: SourceInfo | None
    reason: str


@dataclass(frozen=True)
class _UnchangedMsg:
    key: int


@dataclass
class _Pending:
    """A source being assembled: its encoded items and whether its worker finished."""

    items: list[NewItem] = field(default_factory=list)
    files: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    waiting: int = 0  # items queued for encoding
    done: _DoneMsg | None = None


_STOP = object()


class IngestPipeline:
    """Feeds files into a store. One instance per run; the caller holds the write lock."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clip: ImageTextEncoder | None,
        text: TextEncoder,
        config: Config,
        progress: Callable[[str, int, int], None] | None = None,
        transcriber: Any = None,
    ) -> None:
        self.store, self.registry, self.clip, self.text, self.config = store, registry, clip, text, config
        self.progress = progress
        self.transcriber = transcriber
        self.batch_size = config.models.batch_size
        self._cancel = threading.Event()

    # ---- public ---------------------------------------------------------------
    def run(self, paths: Sequence[str | os.PathLike[str]], prune: bool = False) -> IngestReport:
        t0 = time.perf_counter()
        report = IngestReport()
        self._register_spaces()
        report.run_id = self.store.catalog.start_run()
        cfg = self.config.ingest
        found = list(discover(paths, cfg.include, cfg.exclude, cfg.follow_symlinks, self.registry.is_candidate))
        files = [f for f in found if f.reason is None]
        report.skipped = [(str(f.path), f.reason) for f in found if f.reason is not None]
        try:
            self._consume(files, report)
            if prune:
                report.removed = self.prune(paths, [f.path for f in found])
        except BaseException:
            # save what was committed, but never let a second failure (disk still full) hide the first
            with contextlib.suppress(Exception):
                self._finish(report, "failed", t0)
            raise
        self._finish(report, "ok", t0)
        return report

    def _finish(self, report: IngestReport, status: str, t0: float) -> None:
        self.store.save()
        report.seconds = time.perf_counter() - t0
        self.store.catalog.finish_run(report.run_id, status, report.to_dict())

    def prune(self, roots: Sequence[str | os.PathLike[str]], seen: Sequence[Path]) -> int:
        """Remove sources under ``roots`` whose files no longer exist."""
        prefixes = [str(Path(r).expanduser().absolute()) for r in roots]
        gone = [
            s.uri
            for s in self.store.catalog.sources()
            if any(s.uri == p or s.uri.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)
            and not os.path.exists(s.uri)
        ]
        return self.store.catalog.remove_sources(gone)

    # ---- set-up ---------------------------------------------------------------
    def _register_spaces(self) -> None:
        if self.clip is not None:
            for space in CLIP_SPACES if self.config.models.clip_texts else (SPACE_CLIP,):
                self.store.register_space(space, self.clip.model_id, self.clip.dim)
        self.store.register_space(SPACE_TEXT, self.text.model_id, self.text.dim)

    # ---- workers --------------------------------------------------------------
    def _producer(self, files: Sequence[Found], out: "queue.Queue[Any]") -> Callable[[], None]:
        """A worker body; all workers made by one call share one iterator over ``files``."""
        lock = threading.Lock()
        it = iter(enumerate(files))

        def work() -> None:
            while True:
                with lock:
                    nxt = next(it, None)
                if nxt is None or self._cancel.is_set():
                    out.put(_STOP)
                    return
                key, found = nxt
                self._process_file(key, found, out)

        return work

    def _process_file(self, key: int, found: Found, out: "queue.Queue[Any]") -> None:
        path, info = found.path, None
        try:
            info = self._source_info(found)
            prev = self.store.catalog.get_source(info.uri)
            if prev is not None and prev.status == "ok" and prev.content_hash == info.content_hash:
                out.put(_UnchangedMsg(key))
                return
            ingestor, ctype = self.registry.resolve(path)
            info = replace(info, content_type=ctype, family=family(ctype))
            ctx = self._context()
            for item in ingestor.ingest(path, ctx):
                if self._cancel.is_set():
                    return
                if item.locator.uri != info.uri:
                    item = replace(item, locator=item.locator.with_uri(info.uri))
                out.put(_ItemMsg(key, prepare_item(item, self.clip, self.config.ingest)))
            updated = prev is not None and prev.status == "ok"
            out.put(_DoneMsg(key, info, dict(ctx.source_metadata), list(ctx.notes), updated))
        except IngestError as exc:
            out.put(_FailMsg(key, str(path), info, str(exc) or type(exc).__name__))
        except MemoryError:
            out.put(_FailMsg(key, str(path), info, "out of memory while ingesting this file"))
        except Exception as exc:  # one bad file never stops a batch
            out.put(_FailMsg(key, str(path), info, f"{type(exc).__name__}: {exc}"))

    def _source_info(self, found: Found) -> SourceInfo:
        path = found.path
        try:
            st = path.stat()
        except OSError as exc:
            raise IngestError(f"cannot read file: {exc.strerror or exc}") from exc
        if st.st_size > self.config.ingest.max_file_bytes:
            raise LimitExceeded(f"file is {st.st_size} bytes, above the limit of {self.config.ingest.max_file_bytes}")
        try:
            digest = hash_file(path)
        except OSError as exc:
            raise IngestError(f"cannot read file: {exc.strerror or exc}") from exc
        try:
            display = path.relative_to(found.root).as_posix()
        except ValueError:
            display = path.name
        return SourceInfo(str(path), display, digest, st.st_size, st.st_mtime)

    def _context(self) -> IngestContext:
        embed = (lambda images: self.clip.encode_images(images)) if self.clip is not None else None
        return IngestContext(config=self.config, embed_images=embed, transcriber=self.transcriber)

    # ---- main thread: batch, encode, commit ---------------------------------------
    def _consume(self, files: Sequence[Found], report: IngestReport) -> None:
        if not files:
            return
        n_workers = max(1, min(self.config.ingest.workers or (os.cpu_count() or 1), len(files)))
        out: "queue.Queue[Any]" = queue.Queue(maxsize=max(16, 2 * self.batch_size))
        work = self._producer(files, out)
        threads = [threading.Thread(target=work, daemon=True) for _ in range(n_workers)]
        for t in threads:
            t.start()
        state = _RunState(self, report, len(files))
        stopped = 0
        try:
            while stopped < n_workers:
                try:
                    msg = out.get(timeout=0.05)
                except queue.Empty:
                    state.flush()  # idle: encode what we have rather than wait for a full batch
                    continue
                if msg is _STOP:
                    stopped += 1
                else:
                    state.handle(msg)
            state.flush()
        except BaseException:
            self._cancel.set()  # a failed commit (disk full...) ends the run: stop the workers
            while stopped < n_workers:
                if out.get() is _STOP:
                    stopped += 1
            raise
        finally:
            for t in threads:
                t.join()


class _RunState:
    """Book-keeping of one run on the main thread."""

    def __init__(self, pipe: IngestPipeline, report: IngestReport, total: int) -> None:
        self.pipe, self.report, self.total = pipe, report, total
        self.pending: dict[int, _Pending] = {}
        self.batch: list[tuple[int, PreparedItem]] = []
        self.finished = 0
        self.since_save = 0

    def handle(self, msg: Any) -> None:
        if isinstance(msg, _ItemMsg):
            p = self.pending.setdefault(msg.key, _Pending())
            p.waiting += 1
            self.batch.append((msg.key, msg.item))
            if len(self.batch) >= self.pipe.batch_size:
                self.flush()
        elif isinstance(msg, _DoneMsg):
            self.pending.setdefault(msg.key, _Pending()).done = msg
            self._commit_ready()
        elif isinstance(msg, _FailMsg):
            self.pending.pop(msg.key, None)
            self.batch = [(k, it) for k, it in self.batch if k != msg.key]
            info = msg.info or SourceInfo(msg.path, Path(msg.path).name, None, None, None)
            self.pipe.store.catalog.record_failure(info, msg.reason, self.report.run_id)
            self.report.failed.append((msg.path, msg.reason))
            self._tick(msg.path)
        elif isinstance(msg, _UnchangedMsg):
            self.report.unchanged += 1
            self._tick("")

    def flush(self) -> None:
        if self.batch:
            batch, self.batch = self.batch, []
            vectors = encode_items(
                [it for _, it in batch], self.pipe.clip, self.pipe.text, self.pipe.config.models.clip_texts
            )
            for (key, it), vecs in zip(batch, vectors):
                p = self.pending.get(key)
                if p is None:
                    continue
                p.items.append(
                    NewItem(it.modality.value, it.kind, it.locator.to_dict(), it.text, it.metadata, vecs)
                )
                p.files.append((it.thumbnail, it.preview))
                p.waiting -= 1
        self._commit_ready()

    def _commit_ready(self) -> None:
        ready = [k for k, p in self.pending.items() if p.done is not None and p.waiting == 0]
        for key in ready:
            self._commit(self.pending.pop(key))
        if ready:
            self.pipe.store.sync(lexical=False)
            if self.since_save >= self.pipe.config.index.save_every_items:
                for space in self.pipe.store.dense.values():
                    space.save()
                self.since_save = 0

    def _commit(self, p: _Pending) -> None:
        done = p.done
        assert done is not None
        store = self.pipe.store

        def write_files(ids: Sequence[int], items: Sequence[NewItem]) -> None:
            for iid, it, (thumb, preview) in zip(ids, items, p.files):
                it.thumbnail = _write_media(store, "thumb", iid, thumb)
                it.preview = _write_media(store, "preview", iid, preview)

        store.catalog.commit_source(
            done.info, p.items, metadata=done.metadata, notes=done.notes, run_id=self.report.run_id,
            write_files=write_files,
        )
        if done.updated:
            self.report.updated += 1
        else:
            self.report.added += 1
        self.report.items += len(p.items)
        self.since_save += len(p.items)
        self._tick(done.info.uri)

    def _tick(self, label: str) -> None:
        self.finished += 1
        if self.pipe.progress is not None:
            self.pipe.progress(label, self.finished, self.total)


def _write_media(store: Store, kind: str, item_id: int, data: bytes | None) -> str | None:
    return None if data is None else store.write_media(kind, item_id, data)


def encode_items(
    items: Sequence[PreparedItem], clip: ImageTextEncoder | None, text: TextEncoder, clip_texts: bool = True
) -> list[dict[str, np.ndarray]]:
    """Vectors per space for each item: CLIP (image tower for visual items, text tower for
    text items), and the text space for items with text."""
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    if clip is not None:
        vis = [i for i, it in enumerate(items) if it.clip_input is not None]
        txt = [i for i, it in enumerate(items) if it.clip_input is None and it.text] if clip_texts else []
        if vis:
            for i, v in zip(vis, clip.encode_preprocessed([items[i].clip_input for i in vis])):
                out[i][SPACE_CLIP] = v
        if txt:
            for i, v in zip(txt, clip.encode_texts([items[i].text for i in txt])):
                out[i][SPACE_CLIP_TEXTS] = v
    with_text = [i for i, it in enumerate(items) if it.text]
    if with_text:
        for i, v in zip(with_text, text.encode_texts([items[i].text for i in with_text])):
            out[i][SPACE_TEXT] = v
    return out

