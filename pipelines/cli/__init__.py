"""The ``mmrag`` command line: argument parsing (``main``), one function per sub-command, the demo."""

from __future__ import annotations

import gc
from collections.abc import Sequence

from pipelines.cli.main import build_parser
from pipelines.cli.main import main as _run

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv``, default the process's arguments) and return its exit code.

    Called without arguments it is the process's entry point (the ``mmrag`` script and
    ``python -m pipelines.cli``), which exits next: it then freezes the garbage collector's
    objects, so the interpreter's shutdown does not walk every object torch, transformers and
    open_clip made (about 1 s of CPU after a search). Called with ``argv`` it only runs.
    """
    code = _run(argv)
    if argv is None:
        gc.freeze()
    return code
