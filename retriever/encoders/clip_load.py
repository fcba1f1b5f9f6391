"""Loading an open_clip model for one device plan, through the converted-weights cache.

The first load of a model in a precision goes the ordinary way (``create_model_and_transforms``
with the weights file, then the text-tower check of ``clip_text``) and stores the result in
``retriever.encoders.weight_cache``. A later load builds the model on the ``meta`` device (no
memory, no random initialisation), assigns the cached tensors as they are and reuses the
check's result: no float32 read, no conversion, no 77-token passes. Anything the cache does not
cover (a tensor left on ``meta``, a shape that differs) falls back to the ordinary load.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.config import ModelsConfig
from retriever.encoders.clip_source import REGISTRY_LOCK, creation_args, short_error
from retriever.encoders.clip_text import trimmed_text_encoder
from retriever.encoders.device import DevicePlan, configure_threads
from retriever.encoders.spec import CLIP_WEIGHTS_HINT, ClipSpec, file_fingerprint
from retriever.encoders.weight_cache import CacheEntry, discard, entry_for, read_entry, write_entry
from retriever.errors import ModelLoadError

__all__ = ["LoadedClip", "cache_entry", "load_clip"]

_BUFFER = "__buffer__."  # prefix of buffers that state_dict leaves out (open_clip's attention mask)
_TRIM_FACT = "text_trim"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedClip:
    model: Any
    transform: Any
    tokenizer: Any
    plan: DevicePlan
    dim: int
    encode_text: Any  # tokens -> features: the model's own, or the trimmed path of clip_text
    from_cache: bool = False


def load_clip(spec: ClipSpec, plan: DevicePlan, models_cfg: ModelsConfig) -> LoadedClip:
    """The model of ``spec`` on ``plan``: from the weights cache when ``models.weight_cache`` has it."""
    configure_threads()
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {spec.describe()}: open_clip is not installed ({exc})") from exc
    with REGISTRY_LOCK:
        name, kwargs = creation_args(spec)
        entry = cache_entry(spec, plan, name, kwargs) if models_cfg.weight_cache else None
        cached = _from_cache(entry, name, kwargs, plan) if entry is not None else None
        model, transform, facts = cached or (*_create(spec, name, kwargs, plan), None)
        tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    known = {"1": True, "0": False}.get((facts or {}).get(_TRIM_FACT, ""))
    encode_text, matched = trimmed_text_encoder(model, tokenizer, verified=known)
    if entry is not None and cached is None:
        write_entry(entry, model_tensors(model), {_TRIM_FACT: "1" if matched else "0"})
    return LoadedClip(model=model, transform=transform, tokenizer=tokenizer, plan=plan, dim=_embed_dim(model, name),
                      encode_text=encode_text or model.encode_text, from_cache=cached is not None)


def cache_entry(spec: ClipSpec, plan: DevicePlan, name: str, kwargs: dict[str, Any]) -> CacheEntry:
    """The weights-cache entry of a model: keyed by everything that changes the loaded tensors."""
    import open_clip
    import torch

    weights = kwargs.get("pretrained")
    identity = {
        "model": spec.model_id,
        "weights": file_fingerprint(Path(weights)) if weights and os.path.isfile(weights) else str(weights),
        "name": name,
        "args": {k: v for k, v in kwargs.items() if k != "pretrained"},
        "precision": plan.precision,
        "device": "cuda" if plan.is_cuda else "cpu",
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    return entry_for(f"clip-{name}-{plan.precision}", identity)


def _create(spec: ClipSpec, name: str, kwargs: dict[str, Any], plan: DevicePlan) -> tuple[Any, Any]:
    """The ordinary load: build, convert to the plan's precision, read the weights file."""
    import open_clip

    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name, precision=plan.precision, device=plan.device, **kwargs
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # torch/safetensors/open_clip raise many types for bad files
        raise ModelLoadError(
            f"could not load {spec.describe()}: {type(exc).__name__}: {short_error(exc)}. {CLIP_WEIGHTS_HINT}"
        ) from exc
    return model, transform


def _from_cache(
    entry: CacheEntry, name: str, kwargs: dict[str, Any], plan: DevicePlan
) -> tuple[Any, Any, dict[str, str]] | None:
    got = read_entry(entry, device=plan.device)
    if got is None:
        return None
    tensors, facts = got
    try:
        model, transform = _empty_model(name, kwargs, plan)
        assign_tensors(model, tensors)
    except Exception as exc:  # the cache does not fit the model open_clip builds now
        log.warning("cached model weights %s do not fit %s (%s: %s); rebuilding them",
                    entry.path, name, type(exc).__name__, short_error(exc))
        discard(entry)
        return None
    return model, transform, facts


def _empty_model(name: str, kwargs: dict[str, Any], plan: DevicePlan) -> tuple[Any, Any]:
    """The model of ``name`` on the ``meta`` device in the plan's precision: structure, no weights."""
    import open_clip
    import torch

    args = {k: v for k, v in kwargs.items() if k != "pretrained"}
    with torch.device("meta"), _skip_init_on_meta(), _without_random_weights_warning():
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=None, load_weights=False, precision=plan.precision, device="meta", **args
        )
    return model, transform


def model_tensors(model: Any) -> dict[str, Any]:
    """Every tensor of ``model`` as it holds them (CPU, contiguous): its state dict and the buffers
    that the state dict leaves out (under ``_BUFFER``)."""
    state = dict(model.state_dict())
    for name, buf in model.named_buffers():
        if name not in state:
            state[_BUFFER + name] = buf
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def assign_tensors(model: Any, tensors: dict[str, Any]) -> None:
    """Put ``tensors`` (from ``model_tensors``) into a model built on ``meta``; raise if any is left out."""
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(_BUFFER)}, strict=True, assign=True)
    for key, value in tensors.items():
        if key.startswith(_BUFFER):
            owner, _, leaf = key[len(_BUFFER):].rpartition(".")
            module = model.get_submodule(owner)
            if leaf not in module._buffers:
                raise KeyError(f"the model has no buffer {key[len(_BUFFER):]!r}")
            module._buffers[leaf] = value
    missing = _still_meta(model)
    if missing:
        raise ValueError(f"no cached tensor for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")


def _still_meta(model: Any) -> list[str]:
    import torch

    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    for owner, module in model.named_modules():
        left += [f"{owner}.{k}".lstrip(".") for k, v in vars(module).items()
                 if isinstance(v, torch.Tensor) and v.is_meta]
    return left


def _skip_init_on_meta() -> Any:
    """A torch function mode (this thread only) that turns weight initialisers and value fills on
    ``meta`` tensors into no-ops: on ``meta`` they compute nothing, but run as Python reference code
    (half a second for ViT-B/32: its text tower's init and causal mask), and the cached tensors
    replace their results anyway."""
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    skipped = {getattr(init, n) for n in dir(init) if n.endswith("_") and not n.startswith("_")}
    # value-only in-place ops (never ones that change a shape, a dtype or requires_grad)
    skipped |= {getattr(torch.Tensor, n) for n in ("normal_", "uniform_", "fill_", "zero_", "triu_", "tril_")}

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            first = args[0] if args else (kwargs or {}).get("tensor")  # nn.init passes it by name
            if func in skipped and isinstance(first, torch.Tensor) and first.is_meta:
                return first
            return func(*args, **(kwargs or {}))

    return SkipInit()


@contextlib.contextmanager
def _without_random_weights_warning() -> Iterator[None]:
    """open_clip warns "No pretrained weights loaded" for a model that is about to get its weights."""
    root = logging.getLogger()
    drop: Callable[[logging.LogRecord], bool] = lambda r: "No pretrained weights loaded" not in r.getMessage()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _embed_dim(model: Any, name: str) -> int:
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    if "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    raise ModelLoadError(f"cannot tell the embedding size of open_clip model {name!r}")
