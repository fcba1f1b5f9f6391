"""Copies: one result per passage, photo or page, however many files hold it.

Two items are copies when they are the same evidence in two places:

* text items (chunks, transcript windows) of one modality and kind with the same text, case,
  whitespace and Unicode compatibility forms (ligatures) aside, at least ``MIN_COPY_CHARS`` long
  (a short phrase such as a spoken "thank you" repeats without being a copy);
* visual items (photos, page renders, figures, keyframes) of one kind at the same place (page,
  figure, time) in files with the same bytes (the source's content hash).

Two keyframes under one transcript window share its text but are two moments: a visual item is
never a copy by its text. ``Retriever`` keeps the best-ranked of each group and lists the others
in its hit's ``copies`` (``search.collapse_copies``).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Hashable, Mapping, Sequence

from retriever.catalog import ItemRecord

__all__ = ["MIN_COPY_CHARS", "collapse_copies", "copy_citations", "copy_key"]

MIN_COPY_CHARS = 40


def copy_key(rec: ItemRecord) -> Hashable | None:
    """What ``rec`` shares with its copies; None when it can have none."""
    if rec.thumbnail is not None:  # visual: the same place in the same bytes
        if not rec.source_hash:
            return None
        where = {k: v for k, v in rec.locator.to_dict().items() if k != "uri"}
        return ("file", rec.source_hash, rec.kind, json.dumps(where, sort_keys=True))
    if not rec.text:
        return None
    norm = " ".join(unicodedata.normalize("NFKC", rec.text).split()).casefold()
    return ("text", rec.modality.value, rec.kind, norm) if len(norm) >= MIN_COPY_CHARS else None


def collapse_copies(
    ranked: Sequence[tuple[int, float]], keys: Mapping[int, Hashable | None], seen: dict[Hashable, int],
) -> tuple[list[tuple[int, float]], dict[int, list[int]]]:
    """``ranked`` without the items whose key (``keys``; None: unique) an earlier item has, and for
    each kept item the ids of its copies. ``seen`` (key -> kept id) carries over between calls, so a
    list can be read in windows."""
    kept: list[tuple[int, float]] = []
    copies: dict[int, list[int]] = {}
    for item_id, score in ranked:
        key = keys.get(item_id)
        if key is not None and key in seen:
            copies.setdefault(seen[key], []).append(item_id)
            continue
        if key is not None:
            seen[key] = item_id
        kept.append((item_id, score))
    return kept, copies


def copy_citations(rec: ItemRecord, copies: Sequence[ItemRecord]) -> tuple[str, ...]:
    """Where each copy of ``rec`` is: its citation, by its full path where its name alone (relative
    to the folder it was ingested from) would not tell it from ``rec`` or from another copy."""
    names = [rec.source_display] + [c.source_display for c in copies]
    return tuple(c.locator.render(c.source_uri if names.count(c.source_display) > 1 else c.source_display)
                 for c in copies)
