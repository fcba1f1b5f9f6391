"""One exception tree for the whole engine.

Messages say what came and what was expected, so a user can act on them.
"""

from __future__ import annotations

__all__ = [
    "MmragError",
    "ConfigError",
    "ModelLoadError",
    "StoreError",
    "StoreMismatchError",
    "StoreLockedError",
    "IngestError",
    "UnsupportedInput",
    "LimitExceeded",
    "QueryError",
    "GenerationError",
    "ArgumentError",
    "InputNotFound",
]


class MmragError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(MmragError):
    """A setting, argument or spec string is invalid."""


class ModelLoadError(MmragError):
    """A model's weights could not be loaded; the message says what was tried."""


class StoreError(MmragError):
    """The store directory, catalog or an index is unusable."""


class StoreMismatchError(StoreError):
    """The store was built with other models/spaces than the ones requested."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class IngestError(MmragError):
    """A single input file could not be ingested. The run records it and goes on."""


class UnsupportedInput(IngestError):
    """No ingestor accepts this file (type unknown or not supported)."""


class LimitExceeded(IngestError):
    """An input exceeded a configured limit (pages, pixels, duration, time)."""


class ArgumentError(MmragError, TypeError):
    """An API argument has the wrong type (e.g. a number where a path was expected)."""


class InputNotFound(MmragError, FileNotFoundError):
    """An input path given to ingest does not exist."""


class QueryError(MmragError):
    """A search query is invalid (empty, unreadable image, bad filter)."""


class GenerationError(MmragError):
    """The LLM backend failed or answered something unusable."""
