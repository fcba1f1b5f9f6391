"""Per-item work done in the decode workers: model input tensors and JPEG renditions.

Running this in the workers (PIL releases the GIL while resizing and encoding)
keeps the main thread free for model inference.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

from PIL import Image

from retriever.config import IngestConfig
from retriever.encoders.base import ImageTextEncoder
from retriever.types import Item, Locator, Modality

__all__ = ["PreparedItem", "prepare_item", "jpeg_bytes"]


@dataclass(frozen=True, eq=False)
class PreparedItem:
    """An item without its pixels: what the encoders and the catalog need."""

    modality: Modality
    kind: str
    locator: Locator
    text: str | None
    metadata: Mapping[str, Any]
    clip_input: Any  # preprocessed tensor for the CLIP image tower, or None
    thumbnail: bytes | None
    preview: bytes | None

    @property
    def visual(self) -> bool:
        return self.thumbnail is not None


def jpeg_bytes(image: Image.Image, max_px: int, quality: int = 85) -> bytes:
    """A JPEG of ``image`` no larger than ``max_px`` on its longest side."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    if max(img.size) > max_px:
        img = img.copy()
        img.thumbnail((max_px, max_px), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def prepare_item(item: Item, clip: ImageTextEncoder | None, cfg: IngestConfig) -> PreparedItem:
    """Preprocess a visual item for CLIP and render its thumbnail (and preview)."""
    clip_input = thumb = preview = None
    if item.image is not None:
        image = item.image if item.image.mode == "RGB" else item.image.convert("RGB")
        clip_input = clip.preprocess(image) if clip is not None else None
        thumb = jpeg_bytes(image, cfg.thumbnail_px, quality=80)
        # photos are their own full-size evidence; derived images (pages, figures, frames) get a preview
        if item.kind != "photo":
            preview = jpeg_bytes(image, cfg.preview_px, quality=88)
    return PreparedItem(
        item.modality, item.kind, item.locator, item.text, dict(item.metadata), clip_input, thumb, preview
    )
