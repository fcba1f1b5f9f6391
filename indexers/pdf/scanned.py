"""Scanned PDF pages: text from OCR where the text layer is missing.

A page with no text layer, or one nearly empty over a page-size image, is drawn
at ``pdf.ocr_dpi`` and read by the configured OCR engine (``indexers.pdf.ocr``);
its lines become chunk items with boxes, marked ``ocr``. Without an engine, or
when OCR finds nothing, a note on the source says so and the page keeps its
render only. A blank page is noted, never OCR'd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from indexers.pdf.document import PDFIUM_LOCK, Budget, NoteLog
from indexers.pdf.figures import FigureRef, Render, is_blank, render_page
from indexers.pdf.items import chunk_items
from indexers.pdf.ocr import OcrEngine, lines_to_text, ocr_engine, ocr_unavailable_reason
from indexers.pdf.text import PageGeometry, PageText, span_boxes_from_lines
from retriever.config import PdfConfig
from retriever.errors import ConfigError
from retriever.types import Item

__all__ = ["SCAN_COVERAGE", "SPARSE_TEXT_CHARS", "ScannedPages", "scan_reason"]

SPARSE_TEXT_CHARS = 20  # fewer letters/digits than this over a page-size image: treat as scanned
SCAN_COVERAGE = 0.5  # share of the page an image must cover for that


def scan_reason(layer: PageText, refs: Sequence[FigureRef]) -> str | None:
    """Why the page looks scanned (for the source's notes); None when its text layer will do."""
    letters = layer.alnum_count()
    if letters == 0:
        return "no text layer"
    coverage = max((r.coverage for r in refs), default=0.0)
    if letters < SPARSE_TEXT_CHARS and coverage >= SCAN_COVERAGE:
        return f"text layer nearly empty ({letters} letters/digits) over a page-size image"
    return None


class ScannedPages:
    """OCR of one file's scanned pages; the engine is resolved on the first page that needs it.

    ``split`` cuts a page's text into chunk spans; ``pages`` lists the pages OCR gave text for.
    """

    def __init__(
        self,
        uri: str,
        cfg: PdfConfig,
        notes: NoteLog,
        budget: Budget,
        split: Callable[[str], list[tuple[int, int]]],
    ) -> None:
        self.uri, self.cfg, self.notes, self.budget, self.split = uri, cfg, notes, budget, split
        self.pages: list[int] = []
        self._engine: OcrEngine | None = None
        self._resolved = False

    def items(
        self,
        page: Any,
        geom: PageGeometry,
        pno: int,
        layer: PageText,
        refs: Sequence[FigureRef],
        render: Render | None,
        first: int,
    ) -> list[Item]:
        """OCR chunk items for page ``pno`` if it looks scanned (numbered from ``first``), else []."""
        what = scan_reason(layer, refs)
        if what is None:
            return []
        if render is not None and is_blank(render.image):
            self.notes.add(f"page {pno}: {what} (blank page)")
            return []
        engine = self.engine()
        if engine is None:
            self.notes.add(f"page {pno}: {what}; {ocr_unavailable_reason(self.cfg.ocr)}")
            return []
        self.budget.check(f"OCR of page {pno}")
        items = self._read(page, geom, pno, engine, first)
        found = "text from OCR" if items else "OCR found no text"
        self.notes.add(f"page {pno}: {what}; {found} ({engine.name})")
        if items:
            self.pages.append(pno)
        return items

    def engine(self) -> OcrEngine | None:
        """The configured OCR engine (None: off, not installed, or misconfigured, with a note)."""
        if not self._resolved:
            self._resolved = True
            try:
                self._engine = ocr_engine(self.cfg.ocr)
            except ConfigError as exc:
                self.notes.add(f"OCR skipped: {exc}")
        return self._engine

    def _read(self, page: Any, geom: PageGeometry, pno: int, engine: OcrEngine, first: int) -> list[Item]:
        try:
            with PDFIUM_LOCK:
                render = render_page(page, geom, self.cfg.ocr_dpi, self.cfg.max_render_pixels)
            lines = engine(render.image)
        except Exception as exc:  # noqa: BLE001 - OCR failing leaves the page image-only
            self.notes.add(f"page {pno}: OCR failed ({type(exc).__name__}: {exc})")
            return []
        text, line_spans = lines_to_text(lines)
        spans = self.split(text)
        boxes = span_boxes_from_lines(spans, line_spans, 72.0 / render.dpi, geom)
        return chunk_items(self.uri, pno, text, spans, boxes, first, ocr=True, ocr_engine=engine.name)
