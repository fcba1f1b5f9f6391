"""User-facing composition: the Python API (``Engine``), generation, CLI and server."""

from __future__ import annotations

from typing import Any

__all__ = ["Engine"]


def __getattr__(name: str) -> Any:  # lazy: importing the package loads no models or heavy libraries
    if name == "Engine":
        from pipelines.engine import Engine

        return Engine
    raise AttributeError(name)
