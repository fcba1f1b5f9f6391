"""The streaming ingest pipeline.

discover -> hash -> skip unchanged / replace changed -> ingest -> prepare
(decode workers) -> batch -> encode (main thread) -> commit catalog -> sync indexes.

Workers turn files into ``PreparedItem`` messages on a bounded queue, so decoding
and preprocessing overlap with inference and memory stays bounded. A source is
committed in one transaction once all its items are encoded; a file that fails
at any point is recorded as failed with its reason and the run goes on.

Ctrl-C stops a run within about a second: workers stop taking files, a commit in
progress completes, the run is recorded as interrupted and ``KeyboardInterrupt`` is
raised (see ``indexers.ingest.interrupt``). What was committed stays; the next run ingests
the rest. A run that ends well cleans up after earlier runs that did not.

Two executors run the decode and encode stages: ``local`` (threads in this process, below) and
``ray`` (Ray Data tasks and encoder actors on a cluster, ``indexers.ingest.ray_executor``). Both
feed the same ``Committer`` (``indexers.ingest.commit``) in this process, which holds the write
lock; discovery, the run record and the interrupt handling are this module's in either case.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from indexers.ingest.commit import Committer, IngestReport
from indexers.ingest.discover import Found, discover, real_dirs
from indexers.ingest.encode import encode_items
from indexers.ingest.interrupt import Interrupt
from indexers.ingest.prepare import PreparedItem
from indexers.ingest.progress import ProgressCallback, ProgressTracker
from indexers.registry import Registry
from indexers.ingest.workers import STOP, FailMsg, FileWorkers, ItemMsg, hash_file
from retriever.catalog import NewItem
from retriever.config import Config
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.errors import ArgumentError
from retriever.store import Store
from retriever.types import RunStatus, Space, store_spaces

if TYPE_CHECKING:
    from indexers.av.transcribe import SpeechToText

__all__ = ["EXECUTORS", "IngestPipeline", "IngestReport", "encode_items", "hash_file"]

EXECUTORS = ("local", "ray")

_log = logging.getLogger(__name__)
_USED_ENCODERS: weakref.WeakSet[Any] = weakref.WeakSet()  # encoders that have encoded once (weights loaded)


class IngestPipeline:
    """Feeds files into a store. One instance per run; the caller holds the write lock.

    ``progress`` is described in ``indexers.ingest.progress``. ``transcriber`` is the speech
    model that audio and video files share (None: the process-wide one for the config).
    ``executor`` is ``local`` or ``ray`` (default ``ingest.executor``); ``ray_address`` the Ray
    cluster to run on (default ``ingest.ray_address``; empty: a local cluster started for the run).
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        clip: ImageTextEncoder | None,
        text: TextEncoder,
        config: Config,
        progress: ProgressCallback | None = None,
        transcriber: SpeechToText | None = None,
        *,
        executor: str | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.store, self.registry, self.clip, self.text, self.config = store, registry, clip, text, config
        self.executor = config.ingest.executor if executor is None else executor
        if self.executor not in EXECUTORS:
            raise ArgumentError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        self.ray_address = config.ingest.ray_address if ray_address is None else ray_address
        self.tracker = ProgressTracker(progress)
        self.transcriber = transcriber
        self.batch_size = config.models.batch_size
        self.interrupt = Interrupt()
        self.within: tuple[str, ...] | None = None

    # ---- public ---------------------------------------------------------------
    def run(
        self, paths: Sequence[str | os.PathLike[str]], prune: bool = False, *,
        within: Sequence[str | os.PathLike[str]] | None = None,
    ) -> IngestReport:
        """Ingest ``paths``; with ``within``, only files that resolve inside those directories."""
        t0 = time.perf_counter()
        self.within = None if within is None else real_dirs(within)
        self._register_spaces()
        run_id = self.store.catalog.start_run()
        report = IngestReport(run_id=run_id)
        with self.interrupt.installed():
            try:
                self._run(paths, prune, report)
                with self.interrupt.critical(raise_after=False):  # the work is done: finish it
                    self._finish(report, run_id, RunStatus.OK, t0)
                    self._tidy(run_id)
            except KeyboardInterrupt:
                # nothing is lost: readers replay the change log past the last index save
                self._end(report, run_id, RunStatus.INTERRUPTED, t0, save=False)
                raise
            except BaseException:
                self._end(report, run_id, RunStatus.FAILED, t0, save=True)
                raise
        return report

    def _run(self, paths: Sequence[str | os.PathLike[str]], prune: bool, report: IngestReport) -> None:
        """Discover, ingest and (with ``prune``) remove the sources whose files are gone."""
        found = self._discover(paths)
        files = [f for f in found if f.reason is None]
        report.skipped = [(str(f.path), f.reason) for f in found if f.reason is not None]
        self.tracker.start(len(files))
        self._consume(files, report)
        if prune:
            with self.interrupt.critical():
                report.removed = self.prune(paths, [f.path for f in found])
        self.tracker.finishing()

    def _finish(self, report: IngestReport, run_id: int, status: RunStatus, t0: float) -> None:
        self.store.save()
        report.seconds = time.perf_counter() - t0
        self.store.catalog.finish_run(run_id, status, report.to_dict())

    def _end(self, report: IngestReport, run_id: int, status: RunStatus, t0: float, save: bool) -> None:
        """Record a run that did not end well; a second failure (disk still full) never hides the first."""
        if save:
            with contextlib.suppress(Exception):
                self.store.save()
        report.seconds = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            self.store.catalog.finish_run(run_id, status, report.to_dict())

    def _tidy(self, run_id: int) -> None:
        """Close earlier unfinished runs and delete what failed writes left (we hold the write lock)."""
        from retriever.maintenance.repair import tidy_after_run

        try:
            for action in tidy_after_run(self.store, run_id):
                _log.info("%s", action)
        except Exception as exc:  # the run itself succeeded; `mmrag repair` cleans up as well
            _log.warning("could not clean up after earlier runs of %s: %s", self.store.root, exc)

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
        for space in store_spaces(clip=self.clip is not None, clip_texts=self.config.models.clip_texts):
            model = self.text if space == Space.TEXT else self.clip
            assert model is not None  # store_spaces names CLIP's spaces only when there is a CLIP model
            self.store.register_space(space, model.model_id, model.dim)

    def _discover(self, paths: Sequence[str | os.PathLike[str]]) -> list[Found]:
        cfg = self.config.ingest
        found = []
        for f in discover(paths, cfg.include, cfg.exclude, cfg.follow_symlinks, self.registry.is_candidate,
                          within=self.within, skip_dirs=(self.store.root,)):
            found.append(f)
            if f.reason is None:
                self.tracker.found(str(f.path))
        return found

    # ---- the executors ----------------------------------------------------------------
    def _consume(self, files: Sequence[Found], report: IngestReport) -> None:
        if not files:
            return
        committer = Committer(self.store, self.config, self.tracker, self.interrupt, report)
        if self.executor == "ray":
            from indexers.ingest.ray_executor import RayExecutor

            RayExecutor(self.registry, self.config, self.ray_address, models=(self.clip, self.text)).run(
                files, committer, self.within, self.interrupt)
        else:
            self._consume_local(files, committer)

    # ---- in process: decode threads, batch + encode + commit on the main thread -----------
    def _consume_local(self, files: Sequence[Found], committer: Committer) -> None:
        n_workers = max(1, min(self.config.ingest.workers or (os.cpu_count() or 1), len(files)))
        out: queue.Queue[Any] = queue.Queue(maxsize=max(16, 2 * self.batch_size))
        workers = FileWorkers(self.store, self.registry, self.clip, self.config, self.transcriber,
                              self.interrupt.stop, self.within)
        threads = workers.start(files, out, n_workers)
        state = _Batches(self, committer)
        try:
            self._drain(out, n_workers, state)
        except KeyboardInterrupt:
            self._stop_workers(out, threads, wait_s=1.0)  # a worker deep in one file is left to end alone
            raise
        except BaseException:
            self._stop_workers(out, threads, wait_s=None)  # a failed commit (disk full...) ends the run
            raise
        for t in threads:
            t.join()

    @staticmethod
    def _drain(out: queue.Queue[Any], n_workers: int, state: _Batches) -> None:
        stopped = 0
        while stopped < n_workers:
            try:
                msg = out.get(timeout=0.05)
            except queue.Empty:
                state.flush()  # idle: encode what we have rather than wait for a full batch
                continue
            if msg is STOP:
                stopped += 1
            else:
                state.handle(msg)
        state.flush()

    def _stop_workers(
        self, out: queue.Queue[Any], threads: list[threading.Thread], wait_s: float | None
    ) -> None:
        """Set the stop flag and wait for the workers (at most ``wait_s`` seconds), draining the queue."""
        self.interrupt.stop.set()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while any(t.is_alive() for t in threads):
            if deadline is not None and time.monotonic() >= deadline:
                return
            with contextlib.suppress(queue.Empty):
                while True:
                    out.get_nowait()
            for t in threads:
                t.join(timeout=0.02)


class _Batches:
    """The in-process executor's main thread: items in batches, encoded, handed to the committer."""

    def __init__(self, pipe: IngestPipeline, committer: Committer) -> None:
        self.pipe, self.committer = pipe, committer
        self.batch: list[tuple[int, PreparedItem]] = []

    def handle(self, msg: Any) -> None:
        if isinstance(msg, ItemMsg):
            self.batch.append((msg.key, msg.item))
            if len(self.batch) >= self.pipe.batch_size:
                self.flush()
        else:
            if isinstance(msg, FailMsg):
                self.batch = [(k, it) for k, it in self.batch if k != msg.key]
            self.committer.handle(msg)

    def flush(self) -> None:
        if self.batch:
            batch, self.batch = self.batch, []
            cold = _unused_encoders(self.pipe.clip, self.pipe.text)
            if cold:
                self.pipe.tracker.note("loading models")  # weights load on an encoder's first use
            vectors = encode_items(
                [it for _, it in batch], self.pipe.clip, self.pipe.text, self.pipe.config.models.clip_texts
            )
            if cold:
                _USED_ENCODERS.update(cold)
                self.pipe.tracker.note("")
            for (key, it), vecs in zip(batch, vectors):
                new = NewItem(it.modality.value, it.kind, it.locator.to_dict(), it.text, it.metadata, vecs)
                self.committer.add(key, new, (it.thumbnail, it.preview))
        self.committer.commit_ready()


def _unused_encoders(*encoders: Any) -> list[Any]:
    """The encoders that have not encoded yet in this process (their weights load on first use)."""
    out = []
    for encoder in encoders:
        with contextlib.suppress(TypeError):  # WeakSet membership of an object that cannot be weakly referenced
            if encoder is not None and encoder not in _USED_ENCODERS:
                out.append(encoder)
    return out
