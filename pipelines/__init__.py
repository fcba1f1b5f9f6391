"""User-facing composition: the Python API (``Engine``), generation, CLI and server.

The public API is one import::

    from pipelines import Engine, Hit, Answer, IngestReport, Config, MmragError

Each name loads on first use: importing the package loads no model or heavy library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexers.ingest.commit import IngestReport
    from pipelines.engine import Engine
    from pipelines.rag.evidence import Answer
    from retriever.config import Config
    from retriever.errors import MmragError
    from retriever.types import Hit

__all__ = ["Answer", "Config", "Engine", "Hit", "IngestReport", "MmragError"]

_HOMES = {
    "Answer": "pipelines.rag.evidence",
    "Config": "retriever.config",
    "Engine": "pipelines.engine",
    "Hit": "retriever.types",
    "IngestReport": "indexers.ingest.commit",
    "MmragError": "retriever.errors",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}; the public API is {', '.join(__all__)}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
