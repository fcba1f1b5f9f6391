"""One ingest run for the crash torture, with SIGKILL injected at a named point.

    python -m pipelines.testing.ingest_worker STORE PATH... [--set KEY=VALUE]... [--kill POINT:N] [--log FILE]

Fault points (the N-th time the point is reached, the process SIGKILLs itself):
  encode        before a batch is encoded
  in_commit     inside a source's catalog transaction, after its ids and media files exist
  committed     right after a source's transaction committed (before the indexes sync)
  save_index    right after one atomic file write of a FAISS save (index file, then pointer)
  save_partial  halfway through writing a FAISS index temp file
  save_bm25     right after one atomic file write of a BM25 save (ids, then pointer)
  truncate      before the change log is truncated
  delay         after N milliseconds, wherever the run is

The hooks are installed in this process only, by wrapping functions; the engine itself
carries no fault-injection code. ``--log`` appends ``uri<TAB>id,id,...`` for every
committed source, so the parent can check that nothing committed is ever lost.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

__all__ = ["POINTS", "Trigger", "install", "main"]

POINTS = ("encode", "in_commit", "committed", "save_index", "save_partial", "save_bm25", "truncate", "delay")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Trigger:
    """Counts arrivals at one point and kills the process at the N-th."""

    def __init__(self, point: str | None, n: int) -> None:
        self.point, self.n, self.seen = point, n, 0
        self._lock = threading.Lock()

    def hit(self, point: str) -> bool:
        if point != self.point:
            return False
        with self._lock:
            self.seen += 1
            return self.seen == self.n

    def maybe_die(self, point: str) -> None:
        if self.hit(point):
            die()


def install(trigger: Trigger, log_path: str | None) -> None:
    """Wrap the pipeline's functions with the fault points (and the commit log)."""
    import indexers.ingest.pipeline as pipeline
    import retriever.index.bm25 as lexical
    import retriever.index.faiss_index as faiss_store

    encode = pipeline.encode_items

    def encode_items(*args: Any, **kw: Any) -> Any:
        trigger.maybe_die("encode")
        return encode(*args, **kw)

    pipeline.encode_items = encode_items
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log_path else None
    _wrap_catalog(trigger, log_fd)
    write_index, write_bm25 = faiss_store.atomic_write_bytes, lexical.atomic_write_bytes
    faiss_store.atomic_write_bytes = _wrapped_write(write_index, trigger, "save_index", partial=True)
    lexical.atomic_write_bytes = _wrapped_write(write_bm25, trigger, "save_bm25", partial=False)


def _wrap_catalog(trigger: Trigger, log_fd: int | None) -> None:
    """The commit points (and the commit log) around ``Catalog.commit_source``; the truncate point."""
    from retriever.catalog.repository import Catalog

    commit = Catalog.commit_source

    def commit_source(
        self: Catalog, info: Any, items: Any, *, write_files: Callable[..., None] | None = None, **kw: Any
    ) -> Any:
        def files(ids: Any, its: Any) -> None:
            if write_files is not None:
                write_files(ids, its)
            trigger.maybe_die("in_commit")

        ids = commit(self, info, items, write_files=files, **kw)
        if log_fd is not None:
            os.write(log_fd, f"{info.uri}\t{','.join(map(str, ids))}\n".encode("utf-8", "surrogateescape"))
        trigger.maybe_die("committed")
        return ids

    truncate = Catalog.truncate_changes

    def truncate_changes(self: Catalog, upto: int) -> None:
        trigger.maybe_die("truncate")
        truncate(self, upto)

    Catalog.commit_source = commit_source  # type: ignore[method-assign]
    Catalog.truncate_changes = truncate_changes  # type: ignore[method-assign]


def _wrapped_write(
    write: Callable[..., None], trigger: Trigger, point: str, partial: bool
) -> Callable[..., None]:
    """``atomic_write_bytes`` with a fault point after each write (and, with ``partial``, one halfway
    through writing a FAISS index file)."""

    def atomic_write_bytes(path: Path, data: bytes) -> None:
        if partial and path.suffix == ".faiss" and trigger.hit("save_partial"):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            with open(tmp, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
            die()
        write(path, data)
        trigger.maybe_die(point)

    return atomic_write_bytes


def _trigger(ap: argparse.ArgumentParser, kill: str | None) -> Trigger:
    if not kill:
        return Trigger(None, 0)
    point, _, count = kill.partition(":")
    if point not in POINTS:
        ap.error(f"unknown fault point {point!r}; expected one of {', '.join(POINTS)}")
    return Trigger(point, int(count or 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("store")
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--kill", default=None, metavar="POINT:N")
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    trigger = _trigger(ap, args.kill)
    install(trigger, args.log)
    from pipelines.engine import Engine

    overrides = dict(pair.split("=", 1) for pair in args.set)
    with Engine.open(args.store, overrides=overrides) as eng:
        if trigger.point == "delay":  # N ms into the ingest (models load on first use, inside it)
            threading.Timer(trigger.n / 1000.0, die).start()
        report = eng.ingest(args.paths)
    print(f"added={report.added} updated={report.updated} unchanged={report.unchanged} "
          f"failed={len(report.failed)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
