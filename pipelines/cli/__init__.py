"""The ``mmrag`` command line: argument parsing (``main``), one function per sub-command, the demo."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from pipelines.cli.exit_codes import CLOSED_PIPE
from pipelines.cli.main import build_parser
from pipelines.cli.main import main as _run

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv``, default the process's arguments) and return its exit code.

    Called without arguments it is the process's entry point (the ``mmrag`` script and
    ``python -m pipelines.cli``), which exits next: it then freezes the garbage collector's
    objects, so the interpreter's shutdown does not walk every object torch, transformers and
    open_clip made (about 1 s of CPU after a search). Called with ``argv`` it only runs.

    A reader that stops early (``mmrag search ... | head``) ends the command quietly with 141, as
    other tools in a pipe do, instead of a traceback.
    """
    try:
        code = _run(argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush of stdout must not fail too
        return CLOSED_PIPE
    if argv is None:
        gc.freeze()
    return code
