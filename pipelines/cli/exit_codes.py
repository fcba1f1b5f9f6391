"""The exit codes of ``mmrag``; ``pipelines.cli.main`` says when each one is used."""

OK = 0
INCONSISTENT = 1  # verify/repair found the store inconsistent; also Python's code for an uncaught exception
USAGE = 2
STRICT = 3
INTERRUPTED = 130
CLOSED_PIPE = 141  # stdout's reader went away (128 + SIGPIPE, as a shell reports it)

__all__ = ["CLOSED_PIPE", "INCONSISTENT", "INTERRUPTED", "OK", "STRICT", "USAGE"]
