"""Where a CLIP spec's weights are: a pretrained tag in the local caches (the network only when the
hub answers a quick probe), a local file, or a custom model config registered with open_clip.

Nothing here loads a model; ``creation_args`` gives the name and arguments that
``open_clip.create_model_and_transforms`` takes for a spec.
"""

from __future__ import annotations

import difflib
import os
import threading
from pathlib import Path
from typing import Any

from retriever.encoders.spec import CLIP_WEIGHTS_HINT, ClipSpec, hub_offline_reason, read_config_json
from retriever.errors import ModelLoadError

__all__ = ["REGISTRY_LOCK", "creation_args", "register_model_config", "short_error"]

REGISTRY_LOCK = threading.RLock()  # open_clip's config registry is a process-global dict


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


def creation_args(spec: ClipSpec) -> tuple[str, dict[str, Any]]:
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
            f"could not load {spec.describe()}: download failed: {short_error(exc)}. {CLIP_WEIGHTS_HINT}"
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


def short_error(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
