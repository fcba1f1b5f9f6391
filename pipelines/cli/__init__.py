"""The ``mmrag`` command line: argument parsing (``main``), one function per sub-command, the demo."""

from pipelines.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
