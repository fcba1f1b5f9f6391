"""PDF throughput on the shared eval PDFs: text extraction and page rendering, pages/s.

Run from the repository root::

    python bench/pdf_pages.py [--rounds 3] [--dpi 72] [--dir ../shared/eval/pdf]

Measures, each as the best of ``--rounds`` passes over every page of every PDF:

* text: pdfium text layer -> cleaned text with char indices -> chunks -> chunk boxes
  (what the ingestor does per page, without rendering);
* pypdf text: ``page.extract_text()`` (the fallback), for comparison;
* render: ``render_page`` at the default DPI, to an RGB PIL image (what the ingestor yields);
* pdfium raw render: ``page.render`` at the same scale, bitmap only (no PIL copy) -
  the ceiling the render path is compared against;
* ingest: ``PdfIngestor`` end to end with OCR off (text + renders + figures).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexers.base import IngestContext
from indexers.chunking import chunk_spans
from indexers.pdf.ingestor import PdfIngestor
from indexers.pdf.figures import render_page
from indexers.pdf.text import page_geometry, read_text_layer, span_bbox
from retriever.config import Config, eval_data_dir

PASSWORDS = {"docling__2206.01062_pg3.pdf": "1234"}


def _open(path: Path):
    import pypdfium2 as pdfium

    return pdfium.PdfDocument(str(path), password=PASSWORDS.get(path.name))


def text_pass(paths: list[Path]) -> int:
    pages = 0
    for path in paths:
        doc = _open(path)
        for page in doc:
            geom = page_geometry(page)
            tp = page.get_textpage()
            layer = read_text_layer(tp)
            for s, e in chunk_spans(layer.text, 1000, 150):
                span_bbox(tp, layer, s, e, geom)
            tp.close()
            page.close()
            pages += 1
        doc.close()
    return pages


def pypdf_pass(paths: list[Path]) -> int:
    import pypdf

    pages = 0
    for path in paths:
        reader = pypdf.PdfReader(str(path), strict=False)
        try:
            if reader.is_encrypted:
                reader.decrypt(PASSWORDS.get(path.name, ""))
            texts = [page.extract_text() for page in reader.pages]
        except pypdf.errors.DependencyError:  # AES without the cryptography package: not counted
            continue
        pages += len(texts)
    return pages


def render_pass(paths: list[Path], dpi: float, raw: bool) -> int:
    pages = 0
    for path in paths:
        doc = _open(path)
        for page in doc:
            geom = page_geometry(page)
            if raw:
                page.render(scale=dpi / 72.0).close()
            else:
                render_page(page, geom, dpi, 40_000_000)
            page.close()
            pages += 1
        doc.close()
    return pages


def ingest_pass(paths: list[Path], dpi: float) -> int:
    cfg = Config().with_overrides({"pdf.ocr": "off", "pdf.render_dpi": dpi, "pdf.passwords": ("1234",)})
    pages = 0
    for path in paths:
        ctx = IngestContext(config=cfg)
        for _ in PdfIngestor().ingest(path, ctx):
            pass
        pages += ctx.source_metadata["pages"]
    return pages


def best_rate(fn: Callable[[], int], rounds: int) -> tuple[float, int]:
    best = 0.0
    pages = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        pages = fn()
        best = max(best, pages / (time.perf_counter() - t0))
    return best, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=eval_data_dir() / "pdf")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dpi", type=float, default=float(Config().pdf.render_dpi))
    args = parser.parse_args()
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    paths = sorted(args.dir.glob("*.pdf"))
    if not paths:
        sys.exit(f"no PDFs in {args.dir}")
    results = {
        "text (pdfium, chunks + boxes)": best_rate(lambda: text_pass(paths), args.rounds),
        "text (pypdf extract_text)": best_rate(lambda: pypdf_pass(paths), args.rounds),
        f"render {args.dpi:g} dpi -> RGB PIL": best_rate(
            lambda: render_pass(paths, args.dpi, False), args.rounds
        ),
        f"pdfium raw render {args.dpi:g} dpi": best_rate(
            lambda: render_pass(paths, args.dpi, True), args.rounds
        ),
        "ingest end to end (OCR off)": best_rate(lambda: ingest_pass(paths, args.dpi), args.rounds),
    }
    print(f"{len(paths)} PDFs from {args.dir}, best of {args.rounds} rounds")
    for name, (rate, pages) in results.items():
        print(f"  {name:34s} {rate:8.1f} pages/s  ({pages} pages)")
    render = results[f"render {args.dpi:g} dpi -> RGB PIL"][0]
    raw = results[f"pdfium raw render {args.dpi:g} dpi"][0]
    print(f"  render / pdfium raw render: {render / raw:.2f}")


if __name__ == "__main__":
    main()
