"""CLIP model spec strings: what a user writes in ``models.clip`` / ``--clip-model``.

Forms (``@`` separates the architecture from the weights)::

    ViT-B-32@laion2b_s34b_b79k              open_clip name + pretrained tag
    ViT-B-32@/path/to/weights.safetensors   open_clip name + local weights (.pt .pth .bin .safetensors)
    /path/to/model_config.json@/path/w.pt   custom open_clip model config (registered by its stem)
    none                                    no CLIP space

Parsing is pure string work (no model library import). ``ClipSpec.model_id`` is the
identity recorded in the store manifest; for local files it includes the file name,
size and a content hash, so two different weight files never look the same.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from retriever.config.env import offline_requested
from retriever.encoders.fingerprints import sha256_of
from retriever.errors import ConfigError, ModelLoadError

__all__ = [
    "CLIP_WEIGHTS_HINT",
    "WEIGHT_SUFFIXES",
    "ClipSpec",
    "file_fingerprint",
    "hub_offline_reason",
    "parse_clip_spec",
    "read_config_json",
]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
CLIP_WEIGHTS_HINT = (
    "To use local weights, point at them with "
    "MMRAG_CLIP_MODEL=ViT-B-32@/path/to/open_clip_model.safetensors "
    "(or --clip-model ViT-B-32@/path/to/open_clip_model.safetensors); "
    "use 'none' to build a store without the image/CLIP space."
)
_FORMS = (
    "expected one of: 'NAME@TAG' (e.g. ViT-B-32@laion2b_s34b_b79k), "
    "'NAME@/path/to/weights.safetensors', '/path/to/config.json@/path/to/weights.pt', or 'none'"
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/:]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_HUB_HOST = "huggingface.co"
_PROBE_TIMEOUT_S = 3.0
_CONFIG_RE = re.compile(r"^(?P<config>.+?\.json)@(?P<weights>.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP spec. ``kind`` is ``none``, ``pretrained``, ``file`` or ``config``."""

    kind: str
    raw: str
    model_name: str = ""  # open_clip architecture name (config stem for kind=config)
    pretrained: str = ""  # pretrained tag (kind=pretrained)
    weights: Path | None = None  # local weights file (kind=file|config)
    config: Path | None = None  # custom model config JSON (kind=config)

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    @property
    def model_id(self) -> str:
        """Stable identity for the store manifest; hashes local files (cached per mtime)."""
        if self.kind == "none":
            return "none"
        if self.kind == "pretrained":
            return f"open_clip:{self.model_name}@{self.pretrained}"
        assert self.weights is not None
        weights = file_fingerprint(self.weights, what="CLIP weights file")
        if self.kind == "file":
            return f"open_clip:{self.model_name}@{weights}"
        assert self.config is not None
        config = file_fingerprint(self.config, what="CLIP model config")
        return f"open_clip:config={config}@{weights}"

    def describe(self) -> str:
        """Human words for error messages: what was tried."""
        if self.kind == "pretrained":
            return f"open_clip model {self.model_name!r} with pretrained tag {self.pretrained!r}"
        if self.kind == "file":
            return f"open_clip model {self.model_name!r} with weights file {self.weights}"
        if self.kind == "config":
            return f"custom open_clip config {self.config} with weights file {self.weights}"
        return "no CLIP model ('none')"


def parse_clip_spec(spec: str) -> ClipSpec:
    """Parse a spec string; raise ConfigError naming what came and what was expected."""
    if not isinstance(spec, str):
        raise ConfigError(f"CLIP model spec must be a string, got {type(spec).__name__}: {spec!r}; {_FORMS}")
    raw = spec.strip()
    if not raw:
        raise ConfigError(f"CLIP model spec is empty; {_FORMS}")
    if raw.lower() == "none":
        return ClipSpec(kind="none", raw=raw)
    match = _CONFIG_RE.match(raw)
    if match:
        return _parse_config_form(raw, match.group("config"), match.group("weights"))
    name, sep, rest = raw.partition("@")
    if not sep or not name or not rest:
        raise ConfigError(f"CLIP model spec {raw!r} has no '@' between the model and its weights; {_FORMS}")
    if _looks_like_path(name):
        raise ConfigError(
            f"CLIP model spec {raw!r}: {name!r} looks like a path but not a .json model config; {_FORMS}"
        )
    if not _NAME_RE.match(name):
        raise ConfigError(f"CLIP model spec {raw!r}: {name!r} is not a valid open_clip model name; {_FORMS}")
    if _looks_like_path(rest):
        return ClipSpec(kind="file", raw=raw, model_name=name, weights=_abs(rest))
    if not _TAG_RE.match(rest):
        raise ConfigError(
            f"CLIP model spec {raw!r}: {rest!r} is neither a pretrained tag (letters, digits, _ . -) "
            f"nor a weights file path (ending in {', '.join(WEIGHT_SUFFIXES)}); {_FORMS}"
        )
    return ClipSpec(kind="pretrained", raw=raw, model_name=name, pretrained=rest)


def _parse_config_form(raw: str, config: str, weights: str) -> ClipSpec:
    if not _looks_like_path(weights):
        raise ConfigError(
            f"CLIP model spec {raw!r}: a custom config needs a local weights file after '@' "
            f"(ending in {', '.join(WEIGHT_SUFFIXES)}), got {weights!r}"
        )
    cfg_path = _abs(config)
    stem = cfg_path.stem
    if not _TAG_RE.match(stem):
        raise ConfigError(
            f"CLIP model spec {raw!r}: the config file name {cfg_path.name!r} becomes the open_clip "
            "model name, so it must use only letters, digits, '_', '.', '-'"
        )
    return ClipSpec(kind="config", raw=raw, model_name=stem, weights=_abs(weights), config=cfg_path)


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text and not text.startswith(("hf-hub:", "local-dir:"))
        or "\\" in text
        or text.startswith(("~", "."))
        or text.lower().endswith(WEIGHT_SUFFIXES + (".json",))
    )


def _abs(text: str) -> Path:
    return Path(os.path.expanduser(text)).absolute()


def file_fingerprint(path: Path, what: str = "file") -> str:
    """``name:size:sha256[:12]`` of a file; the hash of a large file is remembered between processes
    while its size, mtime, ctime and inode stay the same (``retriever.encoders.fingerprints``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{what} not found: {path}. {CLIP_WEIGHTS_HINT}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what} {path}: {exc}. {CLIP_WEIGHTS_HINT}") from exc
    if not os.path.isfile(path):
        raise ModelLoadError(f"{what} {path} is not a regular file. {CLIP_WEIGHTS_HINT}")
    digest = _sha256_cached(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return f"{Path(path).name}:{st.st_size}:{digest[:12]}"


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, ctime_ns: int, ino: int) -> str:
    return sha256_of(path, os.stat(path))


def read_config_json(path: Path) -> dict:
    """Load and check a custom open_clip model config (needs embed_dim, vision_cfg, text_cfg)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"CLIP model config not found: {path}. {CLIP_WEIGHTS_HINT}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"CLIP model config {path} is not readable JSON: {exc}") from exc
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ModelLoadError(
            f"CLIP model config {path} lacks {', '.join(missing)}; expected an open_clip model config "
            "with embed_dim, vision_cfg and text_cfg (like open_clip/model_configs/ViT-B-32.json)"
        )
    return data


def hub_offline_reason() -> str | None:
    """Why a download cannot work now, or None when the hub answers a quick probe."""
    if offline_requested():
        return "MMRAG_OFFLINE is set (offline mode)"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var} is set (offline mode)"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides reachability; let the download try
    url = urlparse(os.environ.get("HF_ENDPOINT") or f"https://{_HUB_HOST}")
    host, port = url.hostname or _HUB_HOST, url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"the model hub ({host}) is unreachable ({exc})"
