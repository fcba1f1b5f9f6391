"""open_clip image+text encoder (the joint ``clip`` space).

Construction is cheap; the model loads on first use, once, under a lock, through the
converted-weights cache (``clip_load``). Loading a pretrained tag looks in the local caches
first and only goes to the network when the hub answers a quick probe, so an offline machine
fails in seconds with a message that says how to point at local weights (``clip_source``).

A call with one text or image is a query: it runs on ``models.query_threads`` torch threads in
``models.query_precision`` (the same precision unless set; another one loads its own copy of
the model, on first use). Any other call is a batch, in ``models.precision``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retriever.config import ModelsConfig
from retriever.encoders.clip_load import LoadedClip, load_clip
from retriever.encoders.clip_source import REGISTRY_LOCK, register_model_config
from retriever.encoders.device import DevicePlan, ModelCopies, query_threads
from retriever.encoders.spec import ClipSpec, parse_clip_spec, read_config_json
from retriever.errors import ConfigError
from retriever.types import Space

__all__ = ["REGISTRY_LOCK", "ClipEncoder", "register_model_config"]


class ClipEncoder:
    """ImageTextEncoder over an open_clip model; outputs float32 L2-normalised rows."""

    space: str = Space.CLIP

    def __init__(self, spec: str | ClipSpec, models_cfg: ModelsConfig | None = None) -> None:
        self.spec = parse_clip_spec(spec) if isinstance(spec, str) else spec
        if not self.spec.enabled:
            raise ConfigError("CLIP spec 'none' has no model; build_clip_encoder() returns None for it")
        self._cfg = models_cfg or ModelsConfig()
        self._copies: ModelCopies[LoadedClip] = ModelCopies(self._cfg, lambda plan: load_clip(self.spec, plan, self._cfg))
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = self.spec.model_id
        return self._model_id

    @property
    def _state(self) -> LoadedClip | None:
        """A loaded copy of the model (any precision), or None before the first use."""
        return self._copies.first

    @property
    def _states(self) -> dict[str, LoadedClip]:
        return self._copies.states

    @property
    def dim(self) -> int:
        """Embedding size; read from the model config when not loaded yet (no weights needed)."""
        state = self._state
        if state is not None:
            return state.dim
        if self.spec.kind == "config":
            assert self.spec.config is not None
            return int(read_config_json(self.spec.config)["embed_dim"])
        import open_clip

        cfg = open_clip.get_model_config(self.spec.model_name)
        return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else self._load().dim

    @property
    def device_plan(self) -> DevicePlan:
        """Where and in which precision batches run (loads the model)."""
        return self._load().plan

    @property
    def context_length(self) -> int:
        return int((self._state or self._load()).tokenizer.context_length)

    def preprocess(self, image: Any) -> Any:
        """PIL image -> the model's input tensor (thread-safe; runs in decode workers)."""
        _check_image(image)
        return (self._state or self._load()).transform(image)

    def encode_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        state = self._load(query=len(batch) == 1)

        def encode(chunk: Sequence[Any]) -> Any:
            import torch

            x = torch.stack(list(chunk)).to(device=state.plan.device, dtype=state.plan.dtype)
            return state.model.encode_image(x)

        return self._batched(state, batch, encode)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        state = self._load(query=len(images) == 1)
        for image in images:
            _check_image(image)
        return self.encode_preprocessed([state.transform(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; the tokenizer truncates anything past the context length."""
        _check_texts(texts)
        state = self._load(query=len(texts) == 1)
        return self._batched(
            state, texts, lambda chunk: state.encode_text(state.tokenizer(list(chunk)).to(state.plan.device))
        )

    def _batched(
        self, state: LoadedClip, items: Sequence[Any], encode: Callable[[Sequence[Any]], Any]
    ) -> np.ndarray:
        """``encode`` over ``items`` in batches of ``models.batch_size``: one unit vector per item."""
        if len(items) == 0:
            return np.zeros((0, state.dim), dtype=np.float32)
        import torch

        size = self._cfg.batch_size
        with _threads_for(self._cfg, len(items)), torch.inference_mode():
            out = [_normalise(encode(items[start : start + size])) for start in range(0, len(items), size)]
        return np.concatenate(out, axis=0)

    def _load(self, query: bool = False) -> LoadedClip:
        """The model for batches, or for one query (``models.query_precision``), loaded on first use."""
        return self._copies.get(query)

    def __repr__(self) -> str:
        return f"ClipEncoder({self.spec.raw!r}, loaded={sorted(self._states)})"


def _threads_for(models_cfg: ModelsConfig, n: int) -> Any:
    return query_threads(models_cfg) if n == 1 else contextlib.nullcontext()


def _check_image(image: Any) -> None:
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"ClipEncoder.preprocess expects a PIL.Image.Image, got {type(image).__name__}")


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("encode_texts expects a sequence of strings, got one str; wrap it in a list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode_texts: item {i} is {type(t).__name__}, expected str")


def _normalise(features: Any) -> np.ndarray:
    import torch

    feats = features.float()
    feats = torch.nn.functional.normalize(feats, dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
