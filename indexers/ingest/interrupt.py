"""Ctrl-C during an ingest: stop promptly, but never in the middle of a commit.

While ``Interrupt.installed()`` is active (in the main thread, over Python's default
SIGINT handler only), a SIGINT sets ``stop`` at once, so the decode workers take no
new file and drop the one they are on, and raises ``KeyboardInterrupt`` in the main
thread, except inside a ``critical()`` section (a catalog commit with its index
update), which runs to its end and raises it on exit. A second SIGINT raises at once
wherever the main thread is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

__all__ = ["Interrupt"]


class Interrupt:
    """The stop event of one run and its SIGINT handling."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # the workers' stop flag (also set when the run fails)
        self.requested = False  # a SIGINT arrived
        self._critical = 0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT as described in the module docstring while the block runs."""
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield  # another thread, or a handler someone else installed: leave SIGINT alone
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextlib.contextmanager
    def critical(self, raise_after: bool = True) -> Iterator[None]:
        """A section a first Ctrl-C does not cut short; the interrupt is raised when it ends
        (with ``raise_after`` false, not at all: the section was the last of the work)."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if raise_after and self.requested and self._critical == 0:
            raise KeyboardInterrupt

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        again = self.requested
        self.requested = True
        self.stop.set()
        if again or self._critical == 0:
            raise KeyboardInterrupt
