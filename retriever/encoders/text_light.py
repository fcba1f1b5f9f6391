"""A sentence-transformers model of the plain kind, run with transformers alone.

Importing ``sentence_transformers`` costs 1.2-2 s of CPU (its trainers, and scikit-learn, pandas
and rich through its similarity helpers), as much as loading MiniLM itself, in every one-shot
``mmrag search``. A model directory whose ``modules.json`` is a Transformer, one Pooling mode
(mean or CLS) and optionally Normalize, with no prompt, lower-casing or extra arguments, is the
same computation in a few lines of transformers: tokenise (pad to the longest, cut at
``max_seq_length``), run the encoder, pool over the attention mask (summed in float32, as
sentence-transformers does). The all-MiniLM-L6-v2 vectors equal sentence-transformers' to 3e-8
in fp32 (tests/retriever/test_cold_start.py). Other models go through sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LightSentenceModel", "light_layout"]

_TYPES = ("Transformer", "Pooling", "Normalize")
_MODEL_TYPES = frozenset({"bert", "distilbert", "mpnet", "roberta", "xlm-roberta"})
_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def light_layout(path: Path) -> dict[str, Any] | None:
    """What ``LightSentenceModel`` needs from a model directory, or None when it is not of the plain kind."""
    try:
        modules = _read(path / "modules.json")
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (list(_TYPES), list(_TYPES[:2])) or modules[0].get("path", "") != "":
            return None
        bert = _read(path / "sentence_bert_config.json")
        st_cfg = _read_optional(path / "config_sentence_transformers.json")
        pool = _read(path / str(modules[1]["path"]) / "config.json")
        model_type = _read(path / "config.json").get("model_type")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
    modes = [mode for key, mode in _POOLING.items() if pool.get(key) is True]
    other = [k for k, v in pool.items() if k.startswith("pooling_mode_") and v is True and k not in _POOLING]
    if (len(modes) != 1 or other or pool.get("include_prompt", True) is not True
            or set(bert) - {"max_seq_length", "do_lower_case"} or bert.get("do_lower_case")
            or st_cfg.get("default_prompt_name") or st_cfg.get("prompts") or model_type not in _MODEL_TYPES):
        return None
    return {"pooling": modes[0], "max_seq_length": bert.get("max_seq_length"),
            "dim": pool.get("word_embedding_dimension")}


class LightSentenceModel:
    """Tokeniser + encoder + pooling of a plain sentence-transformers directory (see ``light_layout``)."""

    def __init__(self, path: Path, layout: dict[str, Any], device: str, dtype: Any) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.device = device
        self.pooling = str(layout["pooling"])
        given = (layout.get("max_seq_length"), getattr(model.config, "max_position_embeddings", None),
                 getattr(self.tokenizer, "model_max_length", None))
        limits = [int(v) for v in given if isinstance(v, int) and v > 0]
        self.max_length = min(limits) if limits else 512
        self.dim = int(layout.get("dim") or model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int) -> Any:
        """Unnormalised float tensor ``(len(texts), dim)``; batches of similar lengths, as sentence-transformers."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out: list[Any] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                pooled = self._pooled([texts[i] for i in idx])
                for row, i in enumerate(idx):
                    out[i] = pooled[row]
        return torch.stack(out)

    def _pooled(self, texts: list[str]) -> Any:
        import torch

        features = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length,
                                  return_tensors="pt").to(self.device)
        tokens = self.model(**features).last_hidden_state
        if self.pooling == "cls":
            return tokens[:, 0]
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        total = (tokens * mask).sum(dim=1, dtype=torch.float32)
        count = torch.clamp(mask.sum(dim=1, dtype=torch.float32), min=1e-9)
        return (total / count).to(tokens.dtype)


def _read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = _read(path)
    return data if isinstance(data, dict) else {}
