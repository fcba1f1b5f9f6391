"""The query image of ``POST /search/image``: size-limited, sniffed and decoded like an ingested image."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from pipelines.server.errors import BadUpload, UploadTooLarge
from pipelines.server.limits import shown
from retriever.errors import IngestError

__all__ = ["read_upload", "upload_name"]

IMAGE_FORMATS = "a JPEG, PNG, GIF, WebP, BMP or TIFF image"
NAME_CHARS = 255


def upload_name(upload: UploadFile) -> str:
    """The uploaded file's name, cut to 255 characters (it is echoed in the response)."""
    return (upload.filename or "upload")[:NAME_CHARS]


def read_upload(upload: UploadFile, engine: Any, max_bytes: int) -> Any:
    """Decode an uploaded query image with the ingest decoder (sniffed type, pixel limit, EXIF)."""
    from indexers.images import load_rgb
    from indexers.sniff import sniff_bytes

    data = upload.file.read(max_bytes + 1)
    name = shown(upload_name(upload))
    declared = shown(upload.content_type) if upload.content_type else "no content type"
    if len(data) > max_bytes:
        raise UploadTooLarge(f"uploaded image {name} is over the limit of {max_bytes} bytes")
    if not data:
        raise BadUpload(f"uploaded file {name} is empty (0 bytes); expected {IMAGE_FORMATS} in field 'image'")
    suffix = Path(upload_name(upload)).suffix.lower()
    sniffed = sniff_bytes(data[:4096], suffix)
    if sniffed is None or not sniffed.startswith("image/"):
        came = sniffed or "content of no known format"
        raise BadUpload(f"uploaded file {name} ({declared}, {len(data)} bytes) is {came}, not an image; "
                        f"expected {IMAGE_FORMATS} in field 'image'")
    cfg = engine.config.ingest
    fd, tmp = tempfile.mkstemp(suffix=suffix if suffix.isascii() and len(suffix) <= 8 else "")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        image, _meta = load_rgb(Path(tmp), cfg.preview_px, cfg.max_image_pixels, max_bytes)
    except IngestError as exc:
        raise BadUpload(f"uploaded file {name} ({declared}, {len(data)} bytes) is not a usable image: {exc}; "
                        f"expected {IMAGE_FORMATS}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return image
