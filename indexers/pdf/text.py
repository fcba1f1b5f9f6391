"""PDF page text with positions (pdfium), page geometry, and pypdf as the lenient fallback.

pdfium's text page gives the text in content order and, for any character range,
the rectangles it covers; we clean the text (generated CR/LF -> LF, line-end hyphen
markers joined, control characters from unmapped glyphs dropped, compatibility
forms such as ligatures NFKC-normalised) while keeping, for each output character,
the index of the pdfium character it came from. A chunk's bounding box is then the
union of pdfium's rectangles over its character range, turned into top-left-origin
points of the page as displayed (crop box, rotation applied).

All pdfium calls here must run under the caller's pdfium lock (pdfium is not
thread-safe); nothing in this module takes it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PageGeometry",
    "PageText",
    "clean_text",
    "page_geometry",
    "pypdf_page_text",
    "read_text_layer",
    "span_bbox",
    "span_boxes_from_lines",
    "union_boxes",
]

Box = tuple[float, float, float, float]

_HYPHEN_MARK = "\ufffe"  # pdfium: hyphen at a line end, the line break removed
_DROP = {"\x00", "\ufeff", "\uffff"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ALNUM = re.compile(r"[^\W_]")
_NON_BMP = re.compile(r"[\U00010000-\U0010ffff]")
_SPECIAL = re.compile(r"[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\U0010ffff]")  # everything but plain ASCII


@dataclass(frozen=True)
class PageGeometry:
    """Maps PDF user-space points to the displayed page: top-left origin, rotation applied."""

    left: float
    bottom: float
    right: float
    top: float
    rotation: int  # 0, 90, 180, 270 (clockwise, as /Rotate)

    @property
    def width(self) -> float:
        w, h = self.right - self.left, self.top - self.bottom
        return h if self.rotation in (90, 270) else w

    @property
    def height(self) -> float:
        w, h = self.right - self.left, self.top - self.bottom
        return w if self.rotation in (90, 270) else h

    def to_view(self, l: float, b: float, r: float, t: float) -> Box | None:
        """A user-space rectangle as ``(x0, top, x1, bottom)`` on the displayed page, clipped."""
        w, h = self.right - self.left, self.top - self.bottom
        pts = [self._point(x - self.left, y - self.bottom, w, h) for x in (l, r) for y in (b, t)]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        x0, x1 = max(0.0, min(xs)), min(self.width, max(xs))
        y0, y1 = max(0.0, min(ys)), min(self.height, max(ys))
        if x1 <= x0 or y1 <= y0:
            return None
        return (round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2))

    def clip(self, box: Sequence[float]) -> Box | None:
        """A displayed-page box clipped to the page (None when nothing is left)."""
        x0, y0 = max(0.0, box[0]), max(0.0, box[1])
        x1, y1 = min(self.width, box[2]), min(self.height, box[3])
        if x1 <= x0 or y1 <= y0:
            return None
        return (round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2))

    def _point(self, u: float, v: float, w: float, h: float) -> tuple[float, float]:
        if self.rotation == 90:
            return v, u
        if self.rotation == 180:
            return w - u, v
        if self.rotation == 270:
            return h - v, w - u
        return u, h - v


def page_geometry(page: Any) -> PageGeometry:
    """Geometry of a pypdfium2 page (media box intersected with crop box)."""
    l, b, r, t = page.get_bbox()
    rotation = int(page.get_rotation() or 0) % 360
    return PageGeometry(
        float(l), float(b), float(r), float(t), rotation if rotation in (0, 90, 180, 270) else 0
    )


@dataclass(frozen=True)
class PageText:
    """A page's cleaned text; ``src[i]`` is the pdfium char index of ``text[i]`` (None: no positions)."""

    text: str
    src: tuple[int, ...] | None = None

    @property
    def has_text(self) -> bool:
        return _ALNUM.search(self.text) is not None

    def alnum_count(self) -> int:
        return len(_ALNUM.findall(self.text))


def clean_text(raw: str) -> tuple[str, list[int]]:
    """Clean extracted text; returns it with, per output char, the index of its source char.

    pdfium marks a hyphen at a line end (the break removed) with U+FFFE. Plain runs
    are copied in bulk; only the special characters are looked at one by one.
    """
    out: list[str] = []
    src: list[int] = []
    pos = 0
    for m in _SPECIAL.finditer(raw):
        i = m.start()
        if i > pos:
            out.append(raw[pos:i])
            src.extend(range(pos, i))
        pos = i + 1
        ch = raw[i]
        if ch == "\r":
            if not raw.startswith("\n", i + 1):
                out.append("\n")
                src.append(i)
        elif ch == _HYPHEN_MARK:
            if _keeps_hyphen(out, raw, i):
                out.append("-")
                src.append(i)
        elif ch in _DROP or _CONTROL.match(ch):
            continue
        else:
            norm = ch if unicodedata.is_normalized("NFKC", ch) else unicodedata.normalize("NFKC", ch)
            out.append(norm)
            src.extend([i] * len(norm))
    if pos < len(raw):
        out.append(raw[pos:])
        src.extend(range(pos, len(raw)))
    return "".join(out), src


def _keeps_hyphen(out: list[str], raw: str, i: int) -> bool:
    """A line-end hyphen is joined away ("im-portant") unless it links capitals or
    digits ("FAA-approved", "2020-17221"), where it is part of the token."""
    before = out[-1][-1:] if out else ""
    after = raw[i + 1] if i + 1 < len(raw) else ""
    return before.isupper() or before.isdigit() or after.isupper() or after.isdigit()


def read_text_layer(textpage: Any) -> PageText:
    """The text of a pypdfium2 text page, cleaned, with pdfium char indices per character."""
    import pypdfium2.raw as pdfium_c

    n_chars = textpage.count_chars()
    if n_chars <= 0:
        return PageText("", ())
    raw = textpage.get_text_range()
    text, src_text = clean_text(raw)
    if len(raw) == n_chars and not _NON_BMP.search(raw):  # the usual case: text index == char index
        return PageText(text, tuple(src_text))
    # pdfium inserted/excluded chars, or surrogate pairs: translate text index -> char index
    units = _utf16_offsets(raw)
    char_of = [pdfium_c.FPDFText_GetCharIndexFromTextIndex(textpage, units[j]) for j in range(len(raw))]
    src = tuple(_nearest_valid(char_of, j) for j in src_text)
    return PageText(text, src)


def _utf16_offsets(raw: str) -> list[int]:
    """UTF-16 unit offset of each character of ``raw``, plus the total at the end."""
    offs = [0] * (len(raw) + 1)
    acc = 0
    for j, ch in enumerate(raw):
        offs[j] = acc
        acc += 2 if ord(ch) > 0xFFFF else 1
    offs[-1] = acc
    return offs


def _nearest_valid(char_of: Sequence[int], j: int) -> int:
    """pdfium char index for text index j; inserted chars (-1) borrow a neighbour's."""
    if char_of[j] >= 0:
        return char_of[j]
    for k in range(1, 8):
        for cand in (j - k, j + k):
            if 0 <= cand < len(char_of) and char_of[cand] >= 0:
                return char_of[cand]
    return -1


def span_bbox(textpage: Any, page_text: PageText, start: int, end: int, geom: PageGeometry) -> Box | None:
    """Bounding box on the displayed page of ``page_text.text[start:end]`` (None if unknown)."""
    if not page_text.src or end <= start:
        return None
    idx = [c for c in page_text.src[start:end] if c >= 0]
    if not idx:
        return None
    first, last = min(idx), max(idx)
    n = textpage.count_rects(first, last - first + 1)
    if n <= 0:
        return None
    rects = [textpage.get_rect(j) for j in range(n)]
    # union in user space, then one transform: rotations are multiples of 90 degrees
    return geom.to_view(
        min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects), max(r[3] for r in rects)
    )


def span_boxes_from_lines(
    spans: Sequence[tuple[int, int]],
    line_spans: Sequence[tuple[int, int, Box]],
    scale: float,
    geom: PageGeometry,
) -> list[Box | None]:
    """Per text span, the union of the (pixel) boxes of the lines it overlaps, in page points."""
    out: list[Box | None] = []
    for s, e in spans:
        box = union_boxes([b for ls, le, b in line_spans if ls < e and le > s])
        out.append(None if box is None else geom.clip([v * scale for v in box]))
    return out


def union_boxes(boxes: Sequence[Box]) -> Box | None:
    if not boxes:
        return None
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def pypdf_page_text(reader: Any, index: int) -> str:
    """Text of one page via pypdf (lenient fallback; no positions)."""
    text = reader.pages[index].extract_text() or ""
    return clean_text(text)[0]
