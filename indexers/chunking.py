"""Split text into overlapping chunks on paragraph and sentence boundaries.

Chunks are returned as ``(start, end)`` character offsets into the original
string, so every chunk can be located (and cited) exactly.
"""

from __future__ import annotations

import re

__all__ = ["chunk_spans"]

_PARA = re.compile(r"\n[ \t]*\n+")
_SENT = re.compile(r"(?<=[.!?;:])[\"')\]]*\s+|\n")
_SPACE = re.compile(r"\s+")


def _boundaries(text: str) -> list[int]:
    """Candidate cut points, best first within a window: paragraph > sentence > word."""
    cuts = {m.end() for m in _PARA.finditer(text)} | {m.end() for m in _SENT.finditer(text)}
    return sorted(cuts)


def chunk_spans(text: str, max_chars: int = 1000, overlap: int = 150) -> list[tuple[int, int]]:
    """Offsets of chunks of at most ``max_chars`` that overlap by about ``overlap``.

    A chunk ends at the last paragraph or sentence boundary inside the window
    (falling back to a word boundary, then a hard cut); the next chunk starts at
    a boundary about ``overlap`` characters before that end. Blank text gives [].
    """
    if max_chars <= 0 or overlap < 0 or overlap >= max_chars:
        raise ValueError(f"need 0 <= overlap < max_chars, got max_chars={max_chars} overlap={overlap}")
    n = len(text)
    start = _skip_space(text, 0)
    if start >= n:
        return []
    paras = {m.end() for m in _PARA.finditer(text)}
    cuts = _boundaries(text)
    spans: list[tuple[int, int]] = []
    while start < n:
        limit = start + max_chars
        if limit >= n:
            end = n
        else:
            inside = [c for c in cuts if start + max_chars // 3 < c <= limit]
            para_inside = [c for c in inside if c in paras]
            if para_inside and para_inside[-1] > start + max_chars // 2:
                end = para_inside[-1]
            elif inside:
                end = inside[-1]
            else:
                space = text.rfind(" ", start + max_chars // 3, limit)
                end = space + 1 if space > start else limit
        stripped_end = end
        while stripped_end > start and text[stripped_end - 1].isspace():
            stripped_end -= 1
        if stripped_end > start:
            spans.append((start, stripped_end))
        if end >= n:
            break
        nxt = _overlap_start(text, cuts, start, end, overlap)
        start = _skip_space(text, nxt)
    return spans


def _overlap_start(text: str, cuts: list[int], start: int, end: int, overlap: int) -> int:
    if overlap == 0:
        return end
    target = end - overlap
    candidates = [c for c in cuts if target <= c < end and c > start]
    if candidates:
        return candidates[0]
    space = text.find(" ", max(target, start + 1), end)
    return space + 1 if space != -1 else end


def _skip_space(text: str, i: int) -> int:
    m = _SPACE.match(text, i)
    return m.end() if m else i
