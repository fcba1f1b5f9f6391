"""Checks at the Python API's boundary: every argument of the wrong type or form gets an error
that says what came and what was expected, before anything is read, written or loaded.

A single ``str``/``PathLike`` is always one path, never a sequence of characters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from retriever.errors import ArgumentError, InputNotFound, QueryError
from retriever.types import Modality

__all__ = [
    "path_list",
    "existing_paths",
    "store_path",
    "query_text",
    "modality_list",
    "where_filter",
    "positive_int",
]

PathArg = str | os.PathLike[str]


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


def path_list(paths: PathArg | Sequence[PathArg], what: str) -> list[PathArg]:
    """``paths`` as a list: one path (``str``/``PathLike``) or a sequence of them."""
    if isinstance(paths, (str, os.PathLike)):
        items: list[Any] = [paths]
    elif isinstance(paths, (bytes, bytearray, Mapping)) or not isinstance(paths, Sequence | set | frozenset | tuple):
        raise ArgumentError(f"{what} expects a path or a list of paths (str or os.PathLike), got {_describe(paths)}")
    else:
        items = list(paths)
    if not items:
        raise ArgumentError(f"{what} expects at least one path, got an empty {type(paths).__name__}")
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise ArgumentError(f"{what} expects paths as str or os.PathLike, got {_describe(item)} in {_describe(paths)}")
        if not os.fspath(item):
            raise ArgumentError(f"{what} got an empty path")
        _check_unicode(os.fspath(item), f"{what} path")
    return items


def existing_paths(paths: PathArg | Sequence[PathArg], what: str) -> list[PathArg]:
    """``path_list`` plus: every path exists (a missing input is an error, not a skipped file)."""
    items = path_list(paths, what)
    missing = [os.fspath(p) for p in items if not os.path.lexists(Path(p).expanduser())]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputNotFound(f"{what}: no such file or directory: {shown}")
    return items


def store_path(store: Any) -> str | None:
    """The store argument of ``Engine.open``: None (the default store) or one path."""
    if store is None:
        return None
    if not isinstance(store, (str, os.PathLike)) or not os.fspath(store):
        raise ArgumentError(f"Engine.open expects the store as a directory path (str or os.PathLike) or None, "
                            f"got {_describe(store)}")
    return os.fspath(store)


def _check_unicode(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise QueryError(f"{what} is not valid Unicode text (lone surrogate at position {exc.start})") from None


def query_text(text: Any) -> str | None:
    """A search/ask text: None or a str of valid Unicode."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise QueryError(f"query text must be a str, got {_describe(text)}")
    _check_unicode(text, "query text")
    return text


def modality_list(modalities: Any) -> tuple[Modality, ...] | None:
    """None, one modality name or a sequence of them (``text|image|pdf|audio|video``)."""
    if modalities is None:
        return None
    if isinstance(modalities, (str, Modality)):
        modalities = [modalities]
    elif isinstance(modalities, Mapping) or not isinstance(modalities, Sequence | set | frozenset | tuple):
        raise QueryError(f"modalities must be a modality name or a list of them "
                         f"({'|'.join(m.value for m in Modality)}), got {_describe(modalities)}")
    out = []
    for m in modalities:
        if not isinstance(m, (str, Modality)):
            raise QueryError(f"modalities must be names ({'|'.join(x.value for x in Modality)}), got {_describe(m)}")
        out.append(Modality.parse(m))
    return tuple(out) or None


def where_filter(where: Any) -> dict[str, Any]:
    """None or a mapping of filter key -> value."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise QueryError(f"where must be a mapping such as {{'source': '*/2024/*', 'kind': 'chunk'}}, "
                         f"got {_describe(where)}")
    for key in where:
        if not isinstance(key, str):
            raise QueryError(f"where keys must be str, got {_describe(key)}")
    return dict(where)


def positive_int(value: Any, name: str) -> int | None:
    """None or an int >= 1 (bools are refused: ``k=True`` is a mistake, not 1)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueryError(f"{name} must be an integer >= 1, got {_describe(value)}")
    if value < 1:
        raise QueryError(f"{name} must be >= 1, got {value}")
    return value
