"""Batched encoding of prepared items: their vectors per space.

Shared by the in-process executor (its main thread) and the Ray executor (its encoder actors),
so one item gets the same vectors whichever of them encoded it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from indexers.ingest.prepare import PreparedItem
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.types import Space, spaces_for, store_spaces

__all__ = ["encode_items"]


def encode_items(
    items: Sequence[PreparedItem], clip: ImageTextEncoder | None, text: TextEncoder, clip_texts: bool = True
) -> list[dict[str, np.ndarray]]:
    """Vectors per space for each item: CLIP (image tower for visual items, text tower for
    text items), and the text space for items with text."""
    out: list[dict[str, np.ndarray]] = [{} for _ in items]
    available = store_spaces(clip=clip is not None, clip_texts=clip_texts)
    wanted = [spaces_for(has_text=bool(it.text), visual=it.clip_input is not None, available=available)
              for it in items]
    if clip is not None:
        vis = [i for i, w in enumerate(wanted) if Space.CLIP in w]
        txt = [i for i, w in enumerate(wanted) if Space.CLIP_TEXTS in w]
        if vis:
            for i, v in zip(vis, clip.encode_preprocessed([items[i].clip_input for i in vis])):
                out[i][Space.CLIP] = v
        if txt:
            for i, v in zip(txt, clip.encode_texts(_texts_at(items, txt))):
                out[i][Space.CLIP_TEXTS] = v
    with_text = [i for i, w in enumerate(wanted) if Space.TEXT in w]
    if with_text:
        for i, v in zip(with_text, text.encode_texts(_texts_at(items, with_text))):
            out[i][Space.TEXT] = v
    return out


def _texts_at(items: Sequence[PreparedItem], indices: Sequence[int]) -> list[str]:
    """The texts of the items at ``indices``, each of which was chosen for having one."""
    texts = []
    for i in indices:
        text = items[i].text
        if not text:
            raise ValueError(f"item {i} ({items[i].kind} of {items[i].locator.uri}) has no text to encode")
        texts.append(text)
    return texts
