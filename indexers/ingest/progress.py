"""Progress of an ingest run, as the pipeline reports it to its caller.

A progress callback is called as ``callback(label, done, total)`` once per finished
file (added, updated, unchanged or failed), ``total`` being the number of files to
ingest. A callback that also has a method ``ingest_state(state)`` receives an
``IngestProgress`` on every change, from the first file discovered to the final
index save (at most every ``min_interval`` seconds, phase changes always), so a
display can show discovery, items and failures as they happen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

__all__ = ["DISCOVERING", "FINISHING", "INGESTING", "IngestProgress", "ProgressCallback", "ProgressTracker"]

DISCOVERING, INGESTING, FINISHING = "discovering", "ingesting", "finishing"

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IngestProgress:
    """A snapshot of a run: ``found`` files to ingest so far, ``done`` of them finished."""

    phase: str = DISCOVERING
    found: int = 0
    done: int = 0
    items: int = 0
    failed: int = 0
    seconds: float = 0.0
    label: str = ""
    note: str = ""  # what the run is busy with besides files, e.g. "loading models"

    @property
    def total(self) -> int | None:
        """The number of files to ingest, once discovery has finished."""
        return None if self.phase == DISCOVERING else self.found

    def line(self) -> str:
        """One line for a log, e.g. ``ingest: 120/340 files, 2,310 items, 3 failed, 41 s``."""
        elapsed = f"{self.seconds:,.0f} s"
        if self.phase == DISCOVERING:
            return f"ingest: finding files, {self.found:,} so far, {elapsed}"
        files = f"{self.done:,}/{self.found:,} files"
        counts = f"{files}, {self.items:,} items, {self.failed:,} failed, {elapsed}"
        busy = "saving the indexes" if self.phase == FINISHING else self.note
        return f"ingest: {counts}" + (f", {busy}" if busy else "")


class ProgressTracker:
    """Counts what a run did and tells the caller's progress callback (see the module docstring)."""

    def __init__(self, callback: ProgressCallback | None, min_interval: float = 0.1) -> None:
        self.callback = callback
        self.on_state: Callable[[IngestProgress], Any] | None = getattr(callback, "ingest_state", None)
        self.min_interval = min_interval
        self.state = IngestProgress()
        self._t0 = time.monotonic()
        self._sent = 0.0

    def found(self, label: str) -> None:
        """Discovery found one more file to ingest."""
        self._update(False, found=self.state.found + 1, label=label)

    def start(self, total: int) -> None:
        """Discovery is over: ``total`` files to ingest."""
        self._update(True, phase=INGESTING, found=total, label="")

    def file_done(self, label: str, items: int = 0, failed: bool = False) -> None:
        """One file finished (``items`` committed for it, or ``failed``)."""
        s = self.state
        self._update(False, done=s.done + 1, items=s.items + items, failed=s.failed + failed, label=label)
        if self.callback is not None:
            self.callback(label, self.state.done, self.state.found)

    def note(self, text: str) -> None:
        """What the run is busy with besides files ("" when done with it)."""
        self._update(True, note=text)

    def finishing(self) -> None:
        """Every file is done; the indexes are being saved."""
        self._update(True, phase=FINISHING, label="")

    def _update(self, always: bool, **changes: Any) -> None:
        now = time.monotonic()
        self.state = replace(self.state, seconds=now - self._t0, **changes)
        if self.on_state is not None and (always or now - self._sent >= self.min_interval):
            self._sent = now
            self.on_state(self.state)
