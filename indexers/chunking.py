"""Split text into chunks on paragraph and sentence boundaries, evenly.

Chunks are returned as ``(start, end)`` character offsets into the original
string, so every chunk can be located (and cited) exactly.

A text that needs ``n`` chunks of at most ``max_chars`` is cut into ``n`` chunks of about equal
size rather than ``n - 1`` full ones and a short remainder: a 1,700-character abstract with
``max_chars=1600`` becomes two halves, not 1,600 characters and a 100-character scrap. The scrap
is a poor search result on its own, and a full-size chunk can run past the window of the text
model (all-MiniLM-L6-v2 reads 256 word pieces, about 1,150 characters of English), so even cuts
keep more of every chunk inside it at the same number of chunks (docs/tuning.md).
"""

from __future__ import annotations

import math
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

    Each chunk aims at an even share of what is left (``_share``), and ends at the last paragraph
    or sentence boundary inside that window (falling back to a word boundary, then a hard cut); the
    next chunk starts at a boundary about ``overlap`` characters before that end. Blank text gives [].
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
        size = _share(n - start, max_chars, overlap)
        limit = start + size
        if limit >= n:
            end = n
        else:
            inside = [c for c in cuts if start + size // 3 < c <= limit]
            para_inside = [c for c in inside if c in paras]
            if para_inside and para_inside[-1] > start + size // 2:
                end = para_inside[-1]
            elif inside:
                end = inside[-1]
            else:
                space = text.rfind(" ", start + size // 3, limit)
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


def _share(remaining: int, max_chars: int, overlap: int) -> int:
    """The window of the next chunk: an even share of ``remaining`` characters over the fewest chunks
    of at most ``max_chars`` that cover them (each after the first repeats ``overlap``), plus an
    eighth for reaching a sentence end; never more than ``max_chars``."""
    if remaining <= max_chars:
        return max_chars
    pieces = math.ceil((remaining - overlap) / (max_chars - overlap))
    even = math.ceil((remaining - overlap) / pieces) + overlap
    return min(max_chars, even + even // 8)


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
