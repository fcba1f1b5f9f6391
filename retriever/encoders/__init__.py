"""Encoders: open_clip (image+text, the ``clip`` space) and sentence-transformers (``text``).

Importing this package loads no model and no deep-learning library; weights load on
first use.
"""

from __future__ import annotations

from retriever.config import ModelsConfig
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.encoders.clip import ClipEncoder
from retriever.encoders.device import DevicePlan, cpu_supports_bf16, resolve_device
from retriever.encoders.spec import CLIP_WEIGHTS_HINT, ClipSpec, parse_clip_spec
from retriever.encoders.text import SentenceTransformerEncoder

__all__ = [
    "CLIP_WEIGHTS_HINT",
    "ClipEncoder",
    "ClipSpec",
    "DevicePlan",
    "ImageTextEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "build_clip_encoder",
    "build_text_encoder",
    "cpu_supports_bf16",
    "parse_clip_spec",
    "resolve_device",
]


def build_clip_encoder(models_cfg: ModelsConfig) -> ImageTextEncoder | None:
    """The CLIP encoder for ``models.clip``, or None when it is ``none`` (no CLIP space)."""
    spec = parse_clip_spec(models_cfg.clip)
    if not spec.enabled:
        return None
    return ClipEncoder(spec, models_cfg)


def build_text_encoder(models_cfg: ModelsConfig) -> TextEncoder:
    """The sentence-transformers encoder for ``models.text``."""
    return SentenceTransformerEncoder(models_cfg.text, models_cfg)
