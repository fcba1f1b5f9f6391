"""The evidence items of a PDF page: text chunks, the page render, embedded figures.

Every item's locator is the page (1-based) of the file's URI; a chunk adds its
character offsets in the page text and, where positions are known, its box; a
figure adds its box. The builders only assemble items: extracting text, rendering
and decoding happen in ``indexers.pdf.text`` and ``indexers.pdf.figures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from indexers.pdf.figures import FigureRef, Render
from indexers.pdf.text import Box, PageGeometry
from retriever.types import Item, ItemKind, Locator, Modality

__all__ = ["chunk_items", "figure_item", "page_item"]


def chunk_items(
    uri: str,
    pno: int,
    text: str,
    spans: Sequence[tuple[int, int]],
    boxes: Sequence[Box | None] | None = None,
    first: int = 0,
    **meta: Any,
) -> list[Item]:
    """One ``chunk`` item per ``(start, end)`` span of the page text; ``boxes`` per span (None: no
    positions). Chunks are numbered from ``first``; ``meta`` is added to each one's metadata."""
    if boxes is None:
        boxes = [None] * len(spans)
    elif len(boxes) != len(spans):
        raise ValueError(f"page {pno}: {len(boxes)} boxes for {len(spans)} chunks")
    return [
        Item(
            Modality.PDF,
            "chunk",
            Locator(uri, page=pno, char_start=s, char_end=e, bbox=box),
            text=text[s:e],
            metadata={"chunk": first + k, **meta},
        )
        for k, ((s, e), box) in enumerate(zip(spans, boxes))
    ]


def page_item(uri: str, pno: int, geom: PageGeometry, render: Render) -> Item:
    """The page as a picture, with its size in points and the resolution it was drawn at."""
    return Item(
        Modality.PDF,
        ItemKind.PAGE,
        Locator(uri, page=pno),
        image=render.image,
        metadata={
            "width_pt": round(geom.width, 2),
            "height_pt": round(geom.height, 2),
            "dpi": round(render.dpi, 2),
        },
    )


def figure_item(uri: str, pno: int, ref: FigureRef, image: Any) -> Item:
    """An embedded picture, located by its box on the page."""
    return Item(
        Modality.PDF,
        ItemKind.FIGURE,
        Locator(uri, page=pno, bbox=ref.bbox),
        image=image,
        metadata={
            "figure": ref.index,
            "width_px": ref.width_px,
            "height_px": ref.height_px,
            "filters": list(ref.filters),
        },
    )
