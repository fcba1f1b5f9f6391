"""The query files of ``POST /search/image`` and ``POST /search/audio``: size-limited and sniffed; an
image is decoded like an ingested one, an audio clip is kept in a temporary file for the speech model."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from pipelines.server.errors import BadUpload, UploadTooLarge
from pipelines.server.limits import shown
from retriever.errors import IngestError

__all__ = ["audio_upload", "read_upload", "upload_name"]

IMAGE_FORMATS = "a JPEG, PNG, GIF, WebP, BMP or TIFF image"
AUDIO_FORMATS = "an audio clip (WAV, FLAC, MP3, Ogg, M4A, WebM) or a video with sound"
NAME_CHARS = 255


def upload_name(upload: UploadFile) -> str:
    """The uploaded file's name, cut to 255 characters (it is echoed in the response)."""
    return (upload.filename or "upload")[:NAME_CHARS]


def _checked_bytes(upload: UploadFile, max_bytes: int, field: str, families: tuple[str, ...], what: str,
                   expected: str) -> tuple[bytes, str]:
    """The upload's bytes and a safe file suffix, when its content sniffs as one of ``families``."""
    from indexers.sniff import sniff_bytes

    data = upload.file.read(max_bytes + 1)
    name = shown(upload_name(upload))
    declared = shown(upload.content_type) if upload.content_type else "no content type"
    if len(data) > max_bytes:
        raise UploadTooLarge(f"uploaded {field} {name} is over the limit of {max_bytes} bytes")
    if not data:
        raise BadUpload(f"uploaded file {name} is empty (0 bytes); expected {expected} in field {field!r}")
    suffix = Path(upload_name(upload)).suffix.lower()
    sniffed = sniff_bytes(data[:4096], suffix)
    if sniffed is None or not sniffed.startswith(families):
        came = sniffed or "content of no known format"
        raise BadUpload(f"uploaded file {name} ({declared}, {len(data)} bytes) is {came}, not {what}; "
                        f"expected {expected} in field {field!r}")
    return data, (suffix if suffix.isascii() and len(suffix) <= 8 else "")


@contextmanager
def _temporary(data: bytes, suffix: str) -> Iterator[Path]:
    fd, tmp = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_upload(upload: UploadFile, engine: Any, max_bytes: int) -> Any:
    """Decode an uploaded query image with the ingest decoder (sniffed type, pixel limit, EXIF)."""
    from indexers.images import load_rgb

    data, suffix = _checked_bytes(upload, max_bytes, "image", ("image/",), "an image", IMAGE_FORMATS)
    cfg = engine.config.ingest
    try:
        with _temporary(data, suffix) as path:
            image, _meta = load_rgb(path, cfg.preview_px, cfg.max_image_pixels, max_bytes)
    except IngestError as exc:
        raise BadUpload(f"uploaded file {shown(upload_name(upload))} ({len(data)} bytes) is not a usable image: "
                        f"{exc}; expected {IMAGE_FORMATS}") from None
    return image


@contextmanager
def audio_upload(upload: UploadFile, max_bytes: int, max_seconds: float) -> Iterator[Path]:
    """The uploaded query clip in a temporary file (removed afterwards), once its content sniffs as
    audio or video and it lasts at most ``max_seconds``: the speech model reads all of it."""
    from indexers.av.decode import probe

    data, suffix = _checked_bytes(upload, max_bytes, "audio", ("audio/", "video/"), "a sound clip",
                                  AUDIO_FORMATS)
    name = shown(upload_name(upload))
    with _temporary(data, suffix) as path:
        try:
            info = probe(path)
        except IngestError as exc:
            raise BadUpload(f"uploaded file {name} ({len(data)} bytes) is not a usable clip: {exc}; "
                            f"expected {AUDIO_FORMATS}") from None
        if info.audio is None:
            raise BadUpload(f"uploaded file {name} has no sound track; expected {AUDIO_FORMATS}")
        if info.duration is not None and info.duration > max_seconds:
            raise BadUpload(f"uploaded clip {name} lasts {info.duration:.0f} s; an audio query may last at most "
                            f"{max_seconds:g} s")
        yield path
