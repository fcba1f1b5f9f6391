"""PDFs: opening (passwords, limits), page text with positions, renders, figures, OCR, the ingestor."""
