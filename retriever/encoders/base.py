"""Encoder protocols: what the pipeline and the retriever need from a model.

Encoders are cheap to construct; weights load on first use. Every ``encode_*``
returns a float32 array of shape ``(n, dim)`` whose rows are L2-normalised, so
inner product is cosine similarity.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["TextEncoder", "ImageTextEncoder"]


@runtime_checkable
class TextEncoder(Protocol):
    """A model that embeds text (the sentence-transformers text space)."""

    @property
    def space(self) -> str:
        """The space its vectors go into (a ``retriever.types.Space`` value)."""
        ...

    @property
    def model_id(self) -> str:
        """Stable identity recorded in the store manifest (known without loading the model)."""
        ...

    @property
    def dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class ImageTextEncoder(TextEncoder, Protocol):
    """A joint image/text model (the CLIP space).

    ``preprocess`` turns one PIL image into the model's input tensor; it is
    thread-safe and runs in the pipeline's decode workers, so decoding and
    preprocessing overlap with ``encode_preprocessed`` on the main thread.
    """

    def preprocess(self, image: Any) -> Any: ...

    def encode_preprocessed(self, batch: Sequence[Any]) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Any]) -> np.ndarray: ...
