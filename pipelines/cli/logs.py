"""What the command line writes on stderr besides errors: logs and progress.

``setup_logging(verbosity)`` sends log records to stderr through one handler.
mmrag's own loggers show warnings; libraries show errors only, so the usual
chatter (bm25s's debug lines, open_clip's "No pretrained weights loaded",
pypdf's notes on repaired PDFs, sentence-transformers' model loading) stays out,
and the progress bars of transformers, huggingface_hub and tqdm ("Loading
weights") are off. ``-v`` shows INFO of everything (and the bars), ``-vv`` DEBUG.

Progress goes to stderr too, never stdout: a bar on a terminal, else a line every
``$MMRAG_PROGRESS_SECONDS`` seconds (default 5), e.g.
``ingest: 120/340 files, 2,310 items, 3 failed, 41 s``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from retriever.config.env import progress_seconds

__all__ = [
    "LineProgress",
    "counter_lines",
    "counter_progress",
    "ingest_progress",
    "progress_interval",
    "setup_logging",
]

_OWN = ("indexers", "retriever", "pipelines", "bench")
_PROGRESS_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _LevelFilter(logging.Filter):
    """Passes mmrag's records from ``own`` up and the others from ``libraries`` up, whatever level a
    library gives its logger (bm25s sets its own to DEBUG when imported)."""

    def __init__(self, own: int, libraries: int) -> None:
        super().__init__()
        self.own, self.libraries = own, libraries

    def filter(self, record: logging.LogRecord) -> bool:
        mine = record.name.split(".", 1)[0] in _OWN
        return record.levelno >= (self.own if mine else self.libraries)


def setup_logging(verbosity: int = 0) -> None:
    """Quiet by default; ``verbosity`` 1 shows INFO, 2 or more DEBUG (see the module docstring)."""
    own = (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
    libraries = (logging.ERROR, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_LevelFilter(own, libraries))
    root.addHandler(handler)  # a root handler also makes any later logging.basicConfig() a no-op
    root.setLevel(libraries)
    for name in _OWN:
        logging.getLogger(name).setLevel(own)
    logging.captureWarnings(True)  # warnings.warn from libraries become records of "py.warnings"
    _quiet_huggingface(libraries, bars=verbosity > 0)


def _quiet_huggingface(level: int, bars: bool) -> None:
    """transformers and huggingface_hub keep their own handlers and bars: use their switches."""
    name = logging.getLevelName(level).lower()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", name)
    os.environ.setdefault("HF_HUB_VERBOSITY", name)
    if not bars:
        for key, value in _PROGRESS_ENV.items():
            os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # already imported: the variables above came too late
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity(level)
        (tf_logging.enable_progress_bar if bars else tf_logging.disable_progress_bar)()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if bars else disable_progress_bars)()


def progress_interval() -> float:
    """Seconds between progress lines when stderr is not a terminal (``$MMRAG_PROGRESS_SECONDS``)."""
    return progress_seconds()


class LineProgress:
    """Prints the latest progress line on stderr every ``interval`` seconds, the first after one
    interval: when the caller reports a change, and (while ``ticking()``) when nothing changes for
    a while, such as while a model loads."""

    def __init__(self, interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = progress_interval() if interval is None else interval
        self.clock = clock
        self._last = clock()
        self._line: Callable[[], str] | None = None
        self._lock = threading.Lock()

    def update(self, line: Callable[[], str]) -> bool:
        """Make ``line()`` the latest line and print it if an interval has passed; True if printed."""
        with self._lock:
            self._line = line
            return self._print_if_due()

    def tick(self) -> bool:
        """Print the latest line again if an interval has passed since the last one."""
        with self._lock:
            return self._print_if_due()

    def _print_if_due(self) -> bool:
        now = self.clock()
        if self._line is None or now - self._last < self.interval:
            return False
        self._last = now
        print(self._line(), file=sys.stderr, flush=True)
        return True

    @contextlib.contextmanager
    def ticking(self) -> Iterator[LineProgress]:
        """Tick from a background thread while the block runs."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(max(self.interval, 1.0)):
                self.tick()

        thread = threading.Thread(target=run, daemon=True, name="mmrag-progress")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=2.0)


class _IngestLines:
    """Ingest progress as periodic lines (stderr is a pipe or a file)."""

    def __init__(self, lines: LineProgress) -> None:
        self.lines = lines

    def __call__(self, label: str, done: int, total: int) -> None:
        """Per finished file; ``ingest_state`` has the detail."""

    def ingest_state(self, state: Any) -> None:
        at = self.lines.clock()
        self.lines.update(lambda: replace(state, seconds=state.seconds + self.lines.clock() - at).line())


class _IngestBar:
    """Ingest progress as a bar on a terminal: files found, then files done with items and failures."""

    def __init__(self, bar: Any, task: Any) -> None:
        self.bar, self.task = bar, task

    def __call__(self, label: str, done: int, total: int) -> None:
        """Per finished file; ``ingest_state`` has the detail."""

    def ingest_state(self, state: Any) -> None:
        if state.phase == "discovering":
            text = f"finding files: {state.found:,}"
        elif state.phase == "finishing":
            text = "saving the indexes"
        else:
            busy = state.note or (Path(state.label).name[-40:] if state.label else "")
            text = f"{state.items:,} items, {state.failed:,} failed  {busy}"
        self.bar.update(self.task, completed=state.done, total=state.total, description=text)


@contextlib.contextmanager
def ingest_progress() -> Iterator[Any]:
    """A progress callback for ``Engine.ingest`` that shows on stderr (see ``indexers.ingest.progress``)."""
    if not sys.stderr.isatty():
        with LineProgress().ticking() as lines:
            yield _IngestLines(lines)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=Console(stderr=True), transient=True,
    ) as bar:
        yield _IngestBar(bar, bar.add_task("starting", total=None))


def counter_progress(label: str, total: int, lines: LineProgress) -> Callable[[int], None]:
    """``advance(n)`` that reports e.g. ``eval queries: 120/300, 41 s`` through ``lines``."""
    t0, done = lines.clock(), [0]

    def line() -> str:
        return f"{label}: {done[0]:,}/{total:,}, {lines.clock() - t0:,.0f} s"

    def advance(n: int = 1) -> None:
        done[0] += n
        lines.update(line)

    lines.update(line)
    return advance


@contextlib.contextmanager
def counter_lines(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """``counter_progress`` printing every few seconds on stderr while the block runs."""
    with LineProgress().ticking() as lines:
        yield counter_progress(label, total, lines)
