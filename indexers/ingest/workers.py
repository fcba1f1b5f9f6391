"""The decode workers of the ingest pipeline.

Each worker takes the next file, hashes it, reports it unchanged, as a copy of a file with the
same bytes (``Twins``: its items are copied, not decoded again) or ingests it and prepares its
items (model input tensors, thumbnails), and puts messages for the main thread on a bounded
queue. Workers check the run's stop flag before each file and each item, and never block on a
full queue once it is set.

``source_info`` (hash and limits), ``decode_file`` (ingestor, context, prepared items) and
``failure_reason`` are the per-file steps; the Ray executor's driver and decode tasks run the
same ones, so a file gives the same items and the same failure reason on either executor.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from indexers.base import IngestContext
from indexers.ingest.discover import OUTSIDE, Found, is_inside
from indexers.ingest.prepare import PreparedItem, prepare_item
from indexers.registry import Registry
from indexers.sniff import family
from retriever.types import SourceStatus
from retriever.catalog import SourceInfo
from retriever.config import Config
from retriever.encoders.base import ImageTextEncoder
from retriever.errors import IngestError, LimitExceeded
from retriever.store import Store

if TYPE_CHECKING:
    from indexers.av.transcribe import SpeechToText

__all__ = [
    "STOP", "CopyMsg", "DoneMsg", "FailMsg", "FileWorkers", "ItemMsg", "Twins", "UnchangedMsg", "decode_file",
    "failure_reason", "hash_file", "source_info",
]


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "blake2b:" + h.hexdigest()


# ---- messages from workers to the main thread ---------------------------------
@dataclass(frozen=True)
class ItemMsg:
    key: int
    item: PreparedItem


@dataclass(frozen=True)
class DoneMsg:
    key: int
    info: SourceInfo
    metadata: dict
    notes: list
    updated: bool
    items: int  # how many items the file gave (its source is complete once all are encoded)


@dataclass(frozen=True)
class FailMsg:
    key: int
    path: str
    info: SourceInfo | None
    reason: str


@dataclass(frozen=True)
class UnchangedMsg:
    key: int


@dataclass(frozen=True)
class CopyMsg:
    """File ``key`` has the same bytes as a source in the catalog or, ``twin_key``, as a file earlier
    in this run: its items are copied from a source with those bytes, not decoded and encoded again."""

    key: int
    info: SourceInfo
    updated: bool
    twin_key: int | None = None


class Twins:
    """Which files of a run are copies of another file (the same bytes, read as the same content
    type); thread-safe."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store, self.registry = store, registry
        self._first: dict[tuple[str, str], int] = {}  # (content hash, type) -> the run's first such file
        self._lock = threading.Lock()

    def copy_of(self, key: int, path: Path, info: SourceInfo, updated: bool) -> CopyMsg | None:
        """A ``CopyMsg`` when file ``key`` (``path``, ``info``) is a copy; None when it is the first
        with its bytes. The file is checked as a decode would check it first (``Registry.resolve``:
        content against its name, a supported type; its ``IngestError`` is raised), and is a copy
        only of a source read as the same content type (the same bytes as ``.md`` and ``.txt`` chunk
        differently)."""
        digest = info.content_hash
        if not digest:
            return None
        _, ctype = self.registry.resolve(path)
        info = replace(info, content_type=ctype, family=family(ctype))
        if self.store.catalog.source_with_hash(digest, ctype, other_than=info.uri) is not None:
            return CopyMsg(key, info, updated)
        with self._lock:
            first = self._first.setdefault((digest, ctype), key)
        return None if first == key else CopyMsg(key, info, updated, twin_key=first)


STOP = object()  # a worker has ended


class FileWorkers:
    """Threads that turn files into messages; all of them share one iterator over the files."""

    def __init__(
        self, store: Store, registry: Registry, clip: ImageTextEncoder | None, config: Config,
        transcriber: SpeechToText | None, stop: threading.Event, within: tuple[str, ...] | None = None,
    ) -> None:
        self.store, self.registry, self.clip, self.config = store, registry, clip, config
        self.transcriber, self.stop, self.within = transcriber, stop, within
        self.twins = Twins(store, registry)

    def start(self, files: Sequence[Found], out: queue.Queue[Any], n: int) -> list[threading.Thread]:
        lock = threading.Lock()
        it = iter(enumerate(files))

        def work() -> None:
            while not self.stop.is_set():
                with lock:
                    nxt = next(it, None)
                if nxt is None:
                    break
                self._process_file(nxt[0], nxt[1], out)
            if not self._put(out, STOP):  # the main thread counts these, unless the run is stopping
                with contextlib.suppress(queue.Full):
                    out.put_nowait(STOP)

        threads = [threading.Thread(target=work, daemon=True, name=f"mmrag-ingest-{i}") for i in range(n)]
        for t in threads:
            t.start()
        return threads

    def _put(self, out: queue.Queue[Any], msg: Any) -> bool:
        """Queue ``msg``; False (dropped) once the run is stopping."""
        while not self.stop.is_set():
            try:
                out.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _process_file(self, key: int, found: Found, out: queue.Queue[Any]) -> None:
        path, info = found.path, None
        try:
            info = self.source_info(found)
            prev = self.store.catalog.get_source(info.uri)
            if prev is not None and prev.status == SourceStatus.OK and prev.content_hash == info.content_hash:
                self._put(out, UnchangedMsg(key))
                return
            updated = prev is not None and prev.status == SourceStatus.OK
            copy = self.twins.copy_of(key, path, info, updated)
            if copy is not None:
                self._put(out, copy)
                return
            info, ctx, items = decode_file(path, info, self.registry, self.clip, self.config, self.transcriber)
            count = 0
            for item in items:
                if self.stop.is_set() or not self._put(out, ItemMsg(key, item)):
                    return
                count += 1
            self._put(out, DoneMsg(key, info, dict(ctx.source_metadata), list(ctx.notes), updated, count))
        except Exception as exc:  # one bad file never stops a batch (MemoryError included)
            self._put(out, FailMsg(key, str(path), info, failure_reason(exc)))

    def source_info(self, found: Found) -> SourceInfo:
        """``source_info`` of ``found`` under this run's confinement and size limit."""
        return source_info(found, self.within, self.config.ingest.max_file_bytes)



def source_info(found: Found, within: tuple[str, ...] | None, max_bytes: int) -> SourceInfo:
    """What the catalog records of a discovered file (path, display name, content hash, size,
    mtime); ``IngestError`` when it cannot be read, is over ``max_bytes``, or now resolves
    outside the run's allowed directories (``within``)."""
    path = found.path
    if within is not None and not is_inside(path, within):  # moved since it was discovered
        raise IngestError(OUTSIDE)
    try:
        st = path.stat()
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror or exc}") from exc
    if st.st_size > max_bytes:
        raise LimitExceeded(f"file is {st.st_size} bytes, above the limit of {max_bytes}")
    try:
        digest = hash_file(path)
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        display = path.relative_to(found.root).as_posix()
    except ValueError:
        display = path.name
    return SourceInfo(str(path), display, digest, st.st_size, st.st_mtime)


def decode_file(
    path: Path, info: SourceInfo, registry: Registry, clip: ImageTextEncoder | None, config: Config,
    transcriber: SpeechToText | None,
) -> tuple[SourceInfo, IngestContext, Iterator[PreparedItem]]:
    """Pick the ingestor of ``path``; its source info (with content type and family), the context
    that collects its metadata and notes as it goes, and its items, prepared, as they come."""
    ingestor, ctype = registry.resolve(path)
    info = replace(info, content_type=ctype, family=family(ctype))
    embed = (lambda images: clip.encode_images(images)) if clip is not None else None
    ctx = IngestContext(config=config, embed_images=embed, transcriber=transcriber)

    def items() -> Iterator[PreparedItem]:
        for item in ingestor.ingest(path, ctx):
            if item.locator.uri != info.uri:
                item = replace(item, locator=item.locator.with_uri(info.uri))
            yield prepare_item(item, clip, config.ingest)

    return info, ctx, items()


def failure_reason(exc: BaseException) -> str:
    """The reason a file failed, as the catalog and the run's summary record it."""
    if isinstance(exc, IngestError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory while ingesting this file"
    return f"{type(exc).__name__}: {exc}"
