"""Checks at the Python API's boundary: every argument of the wrong type or form gets an error
that says what came and what was expected, before anything is read, written or loaded.

A single ``str``/``PathLike`` is always one path, never a sequence of characters.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retriever.errors import ArgumentError, InputNotFound, QueryError
from retriever.types import Modality

if TYPE_CHECKING:
    from PIL.Image import Image

    from retriever.catalog import SourceRecord

__all__ = [
    "existing_paths",
    "item_id_arg",
    "load_query_image",
    "matching_sources",
    "modality_list",
    "path_list",
    "positive_int",
    "query_text",
    "store_path",
    "where_filter",
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


def item_id_arg(value: Any) -> int:
    """An item id: an int >= 1, as hits and citations carry it (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"an item id must be an integer >= 1 (a hit's or citation's item_id), "
                            f"got {_describe(value)}")
    return value


def matching_sources(sources: Iterable[SourceRecord], raw: str, glob: bool) -> set[str]:
    """URIs of the sources that ``raw`` names: the file itself, everything under a directory, or,
    with ``glob``, a pattern matched against the sources' paths."""
    absolute = str(Path(raw).expanduser().absolute())
    prefix = absolute.rstrip(os.sep) + os.sep
    candidates = list(sources)
    out = {s.uri for s in candidates if s.uri == absolute or s.uri.startswith(prefix)}
    if glob:
        out.update(s.uri for s in candidates
                   if fnmatch.fnmatch(s.uri, raw) or fnmatch.fnmatch(s.display, raw) or fnmatch.fnmatch(s.uri, absolute))
    return out


def load_query_image(image: Any) -> Image:
    """A PIL RGB image from a path or an image object, with a clear error for bad input."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise QueryError(f"image must be a file path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise QueryError(f"query image not found: {image}")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (448, 448))
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise QueryError(f"query image {image} is not a readable image: {exc}") from exc
