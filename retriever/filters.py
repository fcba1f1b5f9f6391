"""Search filters: what a hit must match (``passes``) and the part a filtering index applies
inside its own search (``index_filter``).

``modalities`` is the query's modality list (None: any); ``where`` maps ``source`` (an
``fnmatch`` glob on the source's path or display name), ``kind``, ``modality`` or a metadata key
to the value wanted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from retriever.catalog import ItemRecord
from retriever.index.base import IndexFilter
from retriever.types import Modality

__all__ = ["index_filter", "passes"]


def index_filter(modalities: Sequence[Modality] | None, where: Mapping[str, Any]) -> IndexFilter:
    """The part of the filters a filtering index can apply inside its search."""
    wanted = {m.value for m in modalities} if modalities else None
    if "modality" in where:
        one = {Modality.parse(where["modality"]).value}
        wanted = one if wanted is None else wanted & one
    if wanted is not None and not wanted:
        wanted = {"-"}  # the filters contradict each other: nothing passes
    kind, source = where.get("kind"), where.get("source")
    return IndexFilter(tuple(sorted(wanted or ())), (kind,) if isinstance(kind, str) else (),
                       source if isinstance(source, str) else None)


def passes(rec: ItemRecord, modalities: Sequence[Modality] | None, where: Mapping[str, Any]) -> bool:
    """Whether item ``rec`` matches every filter."""
    if modalities and rec.modality not in modalities:
        return False
    for key, want in where.items():
        if key == "source":
            if not (fnmatch.fnmatch(rec.source_uri, want) or fnmatch.fnmatch(rec.source_display, want)):
                return False
        elif key == "kind":
            if rec.kind != want:
                return False
        elif key == "modality":
            if rec.modality.value != want:
                return False
        elif rec.metadata.get(key) != want:
            return False
    return True
