"""Image files (JPEG, PNG, GIF, WebP, BMP, TIFF) -> one RGB ``photo`` item each.

Decoding is the hot path of image ingestion, so it is built for speed and safety:

* the pixel limit (``ingest.max_image_pixels``) is checked from the header before any
  pixel is decoded; the header is parsed by the format plugin directly (not ``Image.open``),
  so the check is per call and PIL's global ``MAX_IMAGE_PIXELS`` is never mutated (a few
  plugins still consult it while decoding: that only matters for limits above PIL's own);
* JPEGs are decoded in draft mode (libjpeg DCT scaling by 1/2, 1/4 or 1/8) so the
  decoded image is only as large as the preview needs, then resized (antialiased
  bicubic with a 2x reducing gap, as ``Image.thumbnail``; Lanczos measured ~1.5x
  slower for no visible gain at these factors) to at most ``ingest.preview_px``;
* a full ``load()`` is forced so truncation is detected (``LOAD_TRUNCATED_IMAGES``
  is left alone);
* EXIF orientation is applied (the ``ImageOps.exif_transpose`` table, read from the
  header); palette/alpha/CMYK/16-bit/greyscale become RGB (alpha composited on white).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
)

from indexers.base import IngestContext
from indexers.sniff import HEAD_BYTES, expected_type, sniff_bytes
from retriever.errors import IngestError, LimitExceeded, MmragError
from retriever.types import Item, ItemKind, Locator, Modality

__all__ = ["ImageIngestor", "IMAGE_TYPES", "load_rgb", "to_rgb"]

_Factory = Callable[..., ImageFile.ImageFile]


def _webp_factory(fp: Any, filename: str) -> ImageFile.ImageFile:
    from PIL import WebPImagePlugin  # imported on use: needs PIL's optional _webp module

    return WebPImagePlugin.WebPImageFile(fp, filename)


# sniffed content type -> (PIL format name, header parser that skips Image.open's global bomb check)
_FORMATS: dict[str, tuple[str, _Factory]] = {
    "image/jpeg": ("JPEG", JpegImagePlugin.jpeg_factory),
    "image/png": ("PNG", PngImagePlugin.PngImageFile),
    "image/gif": ("GIF", GifImagePlugin.GifImageFile),
    "image/webp": ("WEBP", _webp_factory),
    "image/bmp": ("BMP", BmpImagePlugin.BmpImageFile),
    "image/tiff": ("TIFF", TiffImagePlugin.TiffImageFile),
}
IMAGE_TYPES = frozenset(_FORMATS)

_WHITE = (255, 255, 255)
_EXIF_IFD = 0x8769
_TAG_DATETIME, _TAG_DATETIME_ORIGINAL = 0x0132, 0x9003
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
# EXIF orientation -> the transpose that shows the image upright (the table ImageOps.exif_transpose
# uses; applied here from the header's tag because resizing drops TIFF-native orientation tags)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageIngestor:
    """One ``photo`` item per image file: its pixels (RGB, at most ``preview_px``) and metadata."""

    name = "image"
    modality = Modality.IMAGE
    content_types = IMAGE_TYPES

    def __init__(self, use_draft: bool = True) -> None:
        self.use_draft = use_draft  # False only to measure what JPEG draft mode saves

    def accepts(self, path: Path, content_type: str) -> bool:
        return content_type in self.content_types

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        path = Path(path)
        cfg = ctx.config.ingest
        image, meta = load_rgb(
            path, cfg.preview_px, cfg.max_image_pixels, cfg.max_file_bytes, use_draft=self.use_draft
        )
        ctx.source_metadata.update(meta)
        yield Item(
            modality=Modality.IMAGE,
            kind=ItemKind.PHOTO,
            locator=Locator(uri=str(path.resolve())),
            image=image,
            metadata=meta,
        )


def load_rgb(
    path: Path,
    preview_px: int = 1024,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    *,
    use_draft: bool = True,
) -> tuple[Image.Image, dict[str, Any]]:
    """Decode ``path`` to an RGB image of at most ``preview_px`` a side, plus its metadata.

    Raises ``IngestError`` (``LimitExceeded`` for limits) with a reason for every bad input.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IngestError(f"cannot read image file: {exc.strerror or exc}") from None
    if size == 0:
        raise IngestError("empty file (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise LimitExceeded(
            f"file is {size} bytes, over the limit of {max_bytes} bytes (ingest.max_file_bytes)"
        )
    try:
        with open(path, "rb") as fh:
            return _decode(fh, path, preview_px, max_pixels, use_draft)
    except MmragError:
        raise
    except OSError as exc:
        if exc.filename is not None:
            raise IngestError(f"cannot read image file: {exc.strerror or exc}") from None
        raise IngestError(f"cannot decode image: {exc}") from exc


def _decode(
    fh: Any, path: Path, preview_px: int, max_pixels: int | None, use_draft: bool
) -> tuple[Image.Image, dict[str, Any]]:
    content_type = sniff_bytes(fh.read(HEAD_BYTES), path.suffix.lower())
    if content_type not in _FORMATS:
        claimed = expected_type(path)
        where = f" (the extension {path.suffix} says {claimed})" if claimed else ""
        if content_type is None:
            raise IngestError(f"content matches no image format{where}")
        raise IngestError(f"content is {content_type}, not an image{where}")
    fmt, factory = _FORMATS[content_type]
    fh.seek(0)
    try:
        im = factory(fh, str(path))
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"image exceeds Pillow's decompression-bomb limit: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - every parser failure becomes one clear reason
        raise IngestError(f"corrupt {fmt} header: {_describe(exc)}") from None
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise LimitExceeded(
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels (ingest.max_image_pixels)"
        )
    try:
        if use_draft and fmt == "JPEG" and preview_px > 0:
            im.draft("RGB", _draft_request(im.size, preview_px))
        im.load()  # forces a full decode: truncation raises here
        meta = _metadata(im, fmt, width, height)  # after load: PNG keeps eXIf after the pixels
        out = _shrink(to_rgb(im), preview_px)
    except MmragError:
        raise
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"image exceeds Pillow's decompression-bomb limit: {exc}") from None
    except MemoryError:
        raise LimitExceeded(f"out of memory decoding a {width}x{height} {fmt} image") from None
    except Exception as exc:  # noqa: BLE001
        raise IngestError(f"truncated or corrupt {fmt}: {_describe(exc)}") from None
    orientation = meta.get("orientation", 1)
    if orientation in (5, 6, 7, 8):
        meta["width"], meta["height"] = height, width
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        return out.transpose(method), meta
    return (out.copy() if out is im else out), meta  # a plain Image, detached from the file


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _draft_request(size: tuple[int, int], preview_px: int) -> tuple[int, int]:
    """The size to ask libjpeg for so the decoded longest side stays >= ``preview_px``."""
    w, h = size
    longest = max(w, h)
    if longest <= preview_px:
        return w, h
    return max(1, -(-w * preview_px // longest)), max(1, -(-h * preview_px // longest))


def _shrink(im: Image.Image, preview_px: int) -> Image.Image:
    w, h = im.size
    longest = max(w, h)
    if preview_px <= 0 or longest <= preview_px:
        return im
    new = (max(1, round(w * preview_px / longest)), max(1, round(h * preview_px / longest)))
    return im.resize(new, Image.Resampling.BICUBIC, reducing_gap=2.0)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: alpha composited on white, 16-bit and float scaled to 8 bits."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode.startswith("I") or mode == "F":
        im = _wide_to_l(im)
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, _WHITE)
        background.paste(im, mask=im.getchannel("A"))
        return background
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise IngestError(f"unsupported pixel mode {mode}: {exc}") from None


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit L, scaled rather than clipped."""
    import numpy as np

    arr = np.asarray(im).astype(np.float64)
    if arr.size == 0:
        return Image.new("L", im.size)
    lo, hi = float(arr.min()), float(arr.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
        arr = arr / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255:
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")


def _metadata(im: ImageFile.ImageFile, fmt: str, width: int, height: int) -> dict[str, Any]:
    """Header facts: full-resolution size, format, and EXIF date/camera/orientation when present."""
    meta: dict[str, Any] = {"width": width, "height": height, "format": fmt}
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not fail an otherwise good photo
        return meta
    if not exif:
        return meta
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001
        sub = {}
    for key, value in (
        ("datetime", sub.get(_TAG_DATETIME_ORIGINAL) or exif.get(_TAG_DATETIME)),
        ("camera_make", exif.get(_TAG_MAKE)),
        ("camera_model", exif.get(_TAG_MODEL)),
    ):
        text = _exif_text(value)
        if text:
            meta[key] = text
    orientation = exif.get(_TAG_ORIENTATION)
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        meta["orientation"] = orientation
    return meta


def _exif_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").strip()
    return text or None
