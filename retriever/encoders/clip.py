"""open_clip image+text encoder (the joint ``clip`` space).

Construction is cheap; the model loads on first use, once, under a lock. Loading a
pretrained tag looks in the local caches first and only goes to the network when the
hub answers a quick probe, so an offline machine fails in seconds with a message that
says how to point at local weights (never a minute of retries).
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.config import ModelsConfig
from retriever.encoders.device import DevicePlan, configure_threads, resolve_device
from retriever.encoders.spec import (
    CLIP_WEIGHTS_HINT,
    ClipSpec,
    hub_offline_reason,
    parse_clip_spec,
    read_config_json,
)
from retriever.errors import ConfigError, ModelLoadError
from retriever.types import Space

__all__ = ["REGISTRY_LOCK", "ClipEncoder", "register_model_config"]

REGISTRY_LOCK = threading.RLock()  # open_clip's config registry is a process-global dict


@dataclass(frozen=True)
class _Loaded:
    model: Any
    transform: Any
    tokenizer: Any
    plan: DevicePlan
    dim: int
    encode_text: Any  # tokens -> features: the model's own, or the trimmed causal path below


class ClipEncoder:
    """ImageTextEncoder over an open_clip model; outputs float32 L2-normalised rows."""

    space: str = Space.CLIP

    def __init__(self, spec: str | ClipSpec, models_cfg: ModelsConfig | None = None) -> None:
        self.spec = parse_clip_spec(spec) if isinstance(spec, str) else spec
        if not self.spec.enabled:
            raise ConfigError("CLIP spec 'none' has no model; build_clip_encoder() returns None for it")
        self._cfg = models_cfg or ModelsConfig()
        self._lock = threading.Lock()
        self._state: _Loaded | None = None
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = self.spec.model_id
        return self._model_id

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
        return self._load().plan

    @property
    def context_length(self) -> int:
        return int(self._load().tokenizer.context_length)

    def preprocess(self, image: Any) -> Any:
        """PIL image -> the model's input tensor (thread-safe; runs in decode workers)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"ClipEncoder.preprocess expects a PIL.Image.Image, got {type(image).__name__}")
        return self._load().transform(image)

    def encode_preprocessed(self, batch: Sequence[Any]) -> np.ndarray:
        state = self._load()

        def encode(chunk: Sequence[Any]) -> Any:
            import torch

            x = torch.stack(list(chunk)).to(device=state.plan.device, dtype=state.plan.dtype)
            return state.model.encode_image(x)

        return self._batched(batch, encode)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return self.encode_preprocessed([self.preprocess(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; the tokenizer truncates anything past the context length."""
        _check_texts(texts)
        state = self._load()
        return self._batched(
            texts, lambda chunk: state.encode_text(state.tokenizer(list(chunk)).to(state.plan.device))
        )

    def _batched(self, items: Sequence[Any], encode: Callable[[Sequence[Any]], Any]) -> np.ndarray:
        """``encode`` over ``items`` in batches of ``models.batch_size``: one unit vector per item."""
        state = self._load()
        if len(items) == 0:
            return np.zeros((0, state.dim), dtype=np.float32)
        import torch

        size = self._cfg.batch_size
        with torch.inference_mode():
            out = [_normalise(encode(items[start : start + size])) for start in range(0, len(items), size)]
        return np.concatenate(out, axis=0)

    def _load(self) -> _Loaded:
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._state is None:
                self._state = _load_model(self.spec, resolve_device(self._cfg))
            return self._state

    def __repr__(self) -> str:
        return f"ClipEncoder({self.spec.raw!r}, loaded={self._state is not None})"


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


def register_model_config(config_path: os.PathLike[str] | str) -> str:
    """Register a custom model config with open_clip (by file stem); return the stem.

    Refuses a stem that shadows a built-in open_clip model with a different config.
    Callers that create the model hold ``REGISTRY_LOCK`` across register + create, since
    another config with the same stem may be registered in between.
    """
    import open_clip

    path = Path(config_path)
    wanted = read_config_json(path)
    with REGISTRY_LOCK:
        stem = path.stem
        builtin = open_clip.get_model_config(stem)
        if stem in _builtin_names() and builtin != wanted:
            raise ModelLoadError(
                f"custom CLIP config {path} is named like the built-in open_clip model {stem!r} "
                "but differs from it; rename the file"
            )
        open_clip.add_model_config(path)
        if open_clip.get_model_config(stem) != wanted:
            raise ModelLoadError(f"open_clip did not register the model config {path} under {stem!r}")
        return stem


def _builtin_names() -> set[str]:
    import open_clip

    cfg_dir = Path(open_clip.__file__).parent / "model_configs"
    return {p.stem for p in cfg_dir.glob("*.json")}


def _load_model(spec: ClipSpec, plan: DevicePlan) -> _Loaded:
    configure_threads()
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {spec.describe()}: open_clip is not installed ({exc})") from exc
    with REGISTRY_LOCK:
        name, kwargs = _creation_args(spec)
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                name, precision=plan.precision, device=plan.device, **kwargs
            )
            tokenizer = open_clip.get_tokenizer(name)
        except ModelLoadError:
            raise
        except Exception as exc:  # torch/safetensors/open_clip raise many types for bad files
            raise ModelLoadError(
                f"could not load {spec.describe()}: {type(exc).__name__}: {_short(exc)}. {CLIP_WEIGHTS_HINT}"
            ) from exc
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    dim = _embed_dim(model, name)
    encode_text = _trimmed_text_encoder(model, tokenizer) or model.encode_text
    return _Loaded(
        model=model, transform=transform, tokenizer=tokenizer, plan=plan, dim=dim, encode_text=encode_text
    )


def _trimmed_text_encoder(model: Any, tokenizer: Any) -> Any:
    """``encode_text`` that stops at the batch's last real token, or None where that is not exact.

    CLIP's text tower pads every query to its context length (77 tokens) though a query is
    usually under 15. With a causal attention mask and the pooled feature taken at the
    end-of-text token, no position after that token can change the result, so the tower may
    run on the first ``max(length)`` positions only: 2-3x faster queries on a CPU, same
    vectors up to rounding. Used only for open_clip's own ``CLIP`` text tower with its simple
    tokenizer (pad id 0), and only after a probe agrees with the full-length path.
    """
    import torch
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import text_global_pool

    if not (
        isinstance(model, CLIP)
        and isinstance(tokenizer, SimpleTokenizer)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
    ):
        return None

    def encode(tokens: Any) -> Any:
        length = max(int((tokens != 0).sum(dim=1).max()), 1)
        text = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = text_global_pool(model.ln_final(x), text, "argmax")
        proj = model.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj

    probe = tokenizer(["a photo of a dog", "a red circle on a blue square background"])
    with torch.inference_mode():
        probe = probe.to(next(model.parameters()).device)
        full = torch.nn.functional.normalize(model.encode_text(probe).float(), dim=-1)
        short = torch.nn.functional.normalize(encode(probe).float(), dim=-1)
    if float((full * short).sum(dim=-1).min()) < 0.999:
        return None
    return encode


def _creation_args(spec: ClipSpec) -> tuple[str, dict[str, Any]]:
    """Model name + create_model_and_transforms kwargs for a spec (no weights loaded yet)."""
    if spec.kind == "config":
        assert spec.config is not None and spec.weights is not None
        _require_file(spec, spec.weights)
        return register_model_config(spec.config), {"pretrained": str(spec.weights)}
    _require_model_name(spec)
    if spec.kind == "file":
        assert spec.weights is not None
        _require_file(spec, spec.weights)
        return spec.model_name, {"pretrained": str(spec.weights)}
    path, tag_cfg = _resolve_pretrained(spec)
    kwargs: dict[str, Any] = {"pretrained": path, "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}
    for src, dst in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                     ("resize_mode", "image_resize_mode")):
        if tag_cfg.get(src):
            kwargs[dst] = tag_cfg[src]
    return spec.model_name, kwargs


def _require_file(spec: ClipSpec, path: Any) -> None:
    if not os.path.isfile(path):
        raise ModelLoadError(f"could not load {spec.describe()}: file not found: {path}. {CLIP_WEIGHTS_HINT}")


def _require_model_name(spec: ClipSpec) -> None:
    import open_clip

    known = open_clip.list_models()
    if spec.model_name not in known:
        close = difflib.get_close_matches(spec.model_name, known, n=5)
        raise ModelLoadError(
            f"could not load {spec.describe()}: {spec.model_name!r} is not an open_clip model"
            f"{'; did you mean ' + ', '.join(close) if close else ''}? (open_clip.list_models() has {len(known)})"
        )


def _resolve_pretrained(spec: ClipSpec) -> tuple[str, dict[str, Any]]:
    """Local path of a pretrained tag's weights: cache first, then a probed download."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(spec.model_name, spec.pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(spec.model_name)
        raise ModelLoadError(
            f"could not load {spec.describe()}: unknown pretrained tag; known tags for {spec.model_name}: "
            f"{', '.join(tags) or '(none)'}. {CLIP_WEIGHTS_HINT}"
        )
    if tag_cfg.get("file"):
        return str(tag_cfg["file"]), tag_cfg
    cached = _cached_pretrained(tag_cfg)
    if cached:
        return cached, tag_cfg
    why = hub_offline_reason()
    if why:
        raise ModelLoadError(
            f"could not load {spec.describe()}: the weights are not in the local cache and {why}. {CLIP_WEIGHTS_HINT}"
        )
    try:
        return open_clip.download_pretrained(tag_cfg), tag_cfg
    except Exception as exc:
        raise ModelLoadError(
            f"could not load {spec.describe()}: download failed: {_short(exc)}. {CLIP_WEIGHTS_HINT}"
        ) from exc


def _hub_files(tag_cfg: dict[str, Any]) -> tuple[str, list[str]]:
    """Hub repo and candidate file names, safetensors first (open_clip's own convention)."""
    repo, filename = os.path.split(str(tag_cfg["hf_hub"]))
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename]
    if filename == "open_clip_pytorch_model.bin":
        names.insert(0, "open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _cached_on_hub(tag_cfg: dict[str, Any]) -> str | None:
    """The tag's weights in the local Hugging Face cache, if huggingface_hub is there and has them."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, names = _hub_files(tag_cfg)
    for name in names:
        hit = try_to_load_from_cache(repo_id=repo, filename=name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _cached_pretrained(tag_cfg: dict[str, Any]) -> str | None:
    """Find a tag's weights in the Hugging Face or open_clip URL cache without network."""
    hit = _cached_on_hub(tag_cfg) if tag_cfg.get("hf_hub") else None
    if hit is not None:
        return hit
    url = str(tag_cfg.get("url", ""))
    if url:
        target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    return None


def _embed_dim(model: Any, name: str) -> int:
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    if "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    raise ModelLoadError(f"cannot tell the embedding size of open_clip model {name!r}")


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
