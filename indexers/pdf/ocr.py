"""Offline OCR for pages and pictures that carry no text layer.

The only engine wired in is RapidOCR (``rapidocr-onnxruntime``): its detection and
recognition ONNX models ship inside the PyPI wheel, so it works without a model hub.
``ocr_engine("auto")`` returns it when importable and ``None`` otherwise; the model
is loaded on the first call, once per process, and calls are serialised (the
ONNX sessions already use every core).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from retriever.errors import ConfigError

__all__ = ["OcrEngine", "OcrLine", "RapidOcrEngine", "lines_to_text", "ocr_engine", "ocr_unavailable_reason"]

ENGINES = ("rapidocr",)


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its text, box ``(x0, top, x1, bottom)`` in image pixels, confidence."""

    text: str
    box: tuple[float, float, float, float]
    score: float


class OcrEngine(Protocol):
    name: str

    def __call__(self, image: Any) -> list[OcrLine]:
        """Recognise the text lines of a PIL image, in reading order."""
        ...


class RapidOcrEngine:
    """RapidOCR (PP-OCR det+rec models in ONNX, bundled in the wheel)."""

    name = "rapidocr"

    def __init__(self, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._model: Callable[..., Any] | None = None
        self._lock = threading.Lock()

    def _load(self) -> Callable[..., Any]:
        if self._model is None:
            from rapidocr_onnxruntime import RapidOCR

            self._model = RapidOCR()
        return self._model

    def __call__(self, image: Any) -> list[OcrLine]:
        import numpy as np

        arr = np.asarray(image.convert("RGB"))
        with self._lock:
            result, _ = self._load()(arr)
        lines = []
        for quad, text, score in result or []:
            text = str(text).strip()
            if not text or float(score) < self.min_score:
                continue
            xs = [float(p[0]) for p in quad]
            ys = [float(p[1]) for p in quad]
            lines.append(OcrLine(text, (min(xs), min(ys), max(xs), max(ys)), float(score)))
        return _reading_order(lines)


def _reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Top-to-bottom, then left-to-right among lines that share a baseline band."""
    lines = sorted(lines, key=lambda ln: (ln.box[1], ln.box[0]))
    rows: list[list[OcrLine]] = []
    for line in lines:
        mid = (line.box[1] + line.box[3]) / 2
        if rows and rows[-1][0].box[1] <= mid <= rows[-1][0].box[3]:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.box[0])]


_ENGINE: RapidOcrEngine | None = None
_ENGINE_LOCK = threading.Lock()


def _rapidocr_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


def ocr_engine(setting: str) -> OcrEngine | None:
    """The OCR engine for a config value: ``auto`` (if installed), ``off``, or an engine name."""
    global _ENGINE
    setting = (setting or "off").strip().lower()
    if setting in {"off", "none", "false", "no"}:
        return None
    if setting not in {"auto", *ENGINES}:
        raise ConfigError(f"pdf.ocr: unknown OCR engine {setting!r}; expected auto, off or one of {ENGINES}")
    if not _rapidocr_importable():
        if setting == "auto":
            return None
        raise ConfigError(
            "pdf.ocr=rapidocr but rapidocr-onnxruntime is not installed (pip install rapidocr-onnxruntime)"
        )
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = RapidOcrEngine()
        return _ENGINE


def ocr_unavailable_reason(setting: str) -> str:
    """Why ``ocr_engine(setting)`` gave None, for the source's notes."""
    if (setting or "off").strip().lower() in {"off", "none", "false", "no"}:
        return "OCR is off (pdf.ocr=off)"
    return "OCR is not installed (pip install rapidocr-onnxruntime)"


def lines_to_text(
    lines: Sequence[OcrLine],
) -> tuple[str, list[tuple[int, int, tuple[float, float, float, float]]]]:
    """Join lines into text (blank line where the vertical gap says a new paragraph starts).

    Returns the text and, per line, its ``(start, end)`` offsets in that text with its box.
    """
    parts: list[str] = []
    spans: list[tuple[int, int, tuple[float, float, float, float]]] = []
    pos = 0
    prev: OcrLine | None = None
    for line in lines:
        if prev is not None:
            height = max(1.0, prev.box[3] - prev.box[1])
            sep = "\n\n" if line.box[1] - prev.box[3] > 0.8 * height else "\n"
            if line.box[1] < prev.box[3] and line.box[0] > prev.box[2]:
                sep = " "  # same row, further right
            parts.append(sep)
            pos += len(sep)
        parts.append(line.text)
        spans.append((pos, pos + len(line.text), line.box))
        pos += len(line.text)
        prev = line
    return "".join(parts), spans
