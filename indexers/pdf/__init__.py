"""PDFs: ``document`` opens them (pdfium first, pypdf as the fallback; passwords, limits,
metadata), ``text`` reads page text with positions, ``figures`` renders pages and decodes
embedded pictures, ``ocr`` and ``scanned`` read the pages that have no text layer, ``items``
builds the evidence items, and ``ingestor`` (``PdfIngestor``) runs them page by page. pdfium is
not thread-safe: every call into it holds ``document.PDFIUM_LOCK``."""
