"""The settings of the models, the vector indexes, search and generation.

Each section is a frozen dataclass that checks itself when it is made (``__post_init__``),
so a bad value fails when the config is read, naming the setting, the value and what is
allowed. The measurements behind the defaults are in ``docs/tuning.md``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from retriever.config.checks import Problems, normalise, parse_llm_spec
from retriever.errors import ConfigError
from retriever.fusion import FUSIONS, NORMALISATIONS, Fusion, Normalisation

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_TEXT_MODEL",
    "NAMED_INDEX_KINDS",
    "RUN_NAMES",
    "ClipTextScope",
    "GpuUse",
    "IndexConfig",
    "IndexStorage",
    "LlmConfig",
    "ModelsConfig",
    "Precision",
    "SearchConfig",
]

DEFAULT_CLIP_MODEL = "ViT-B-32@laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"

Precision = Literal["auto", "fp32", "bf16", "fp16"]
IndexStorage = Literal["fp32", "fp16", "bf16", "sq8"]
GpuUse = Literal["auto", "never", "always"]
ClipTextScope = Literal["visual", "all"]
NAMED_INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")  # or any faiss factory string
RUN_NAMES = ("clip_text", "clip_image", "text", "bm25")  # the values of retriever.types.RunName
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_BACKEND = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class ModelsConfig:
    """Which models embed items and queries, and where they run."""

    clip: str = DEFAULT_CLIP_MODEL  # "name@pretrained-tag" | "name@/path/weights.pt" | "cfg.json@weights.pt" | "none"
    text: str = DEFAULT_TEXT_MODEL  # sentence-transformers name or local directory
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Precision = "auto"
    batch_size: int = 64
    # CLIP text-tower vectors for text items (the "clip_texts" space): what lets an image query find
    # text chunks; text queries never read them. Off by default: they cost more than the text space
    # itself (ViT-B-32's text tower 64-72 CPU-ms a chunk vs MiniLM's 46-58; docs/tuning.md), so
    # true makes a text ingest ~2.2x slower. Fixed per store when it is created.
    clip_texts: bool = False
    # Encoding one query (a call with one text or image): torch threads (0 = one per core) and
    # precision ("auto" = models.precision; another one loads a second copy of the model). Measured
    # with bench/cold_start.py --encode: docs/tuning.md (model settings).
    query_threads: int = 1
    query_precision: Precision = "auto"
    # keep CLIP weights converted to the precision in use under the cache dir (MMRAG_CACHE), with
    # the result of the load-time text-tower check, so later loads skip conversion and check
    weight_cache: bool = True

    def __post_init__(self) -> None:
        check = Problems("models")
        device = normalise(self, "device", "auto")
        precision = normalise(self, "precision", "auto")
        query_precision = normalise(self, "query_precision", "auto")
        if not (isinstance(device, str) and _DEVICE.match(device)):
            check.add(f"models.device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        check.one_of("precision", precision, get_args(Precision))
        check.one_of("query_precision", query_precision, get_args(Precision))
        for key, value in (("precision", precision), ("query_precision", query_precision)):
            if device == "cpu" and value == "fp16":
                check.add(f"models.{key} 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
        check.at_least("batch_size", self.batch_size, 1, integer=True)
        check.at_least("query_threads", self.query_threads, 0, integer=True)
        check.non_empty("text", self.text)
        check.non_empty("clip", self.clip)
        check.raise_if_any()


@dataclass(frozen=True)
class IndexConfig:
    """The vector indexes: which backend keeps them, and how FAISS builds and searches them.

    The defaults were measured with ``bench/search.py``; see ``docs/tuning.md`` (index settings).
    """

    backend: str = "faiss"  # a name in retriever.index.registry (faiss; more can be registered)
    kind: str = "auto"  # auto | flat | hnsw | ivf | ivfpq | any faiss factory string
    flat_threshold: int = 20_000  # "auto": exact search below this many vectors, HNSW from there
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32  # IVF: 4 sqrt(N) lists, never picked by "auto"
    storage: IndexStorage = "fp16"  # how flat/hnsw/ivf keep vectors (fp16 is lossless for catalog vectors)
    use_gpu: GpuUse = "auto"
    gpu_flat_max_bytes: int = 4 << 30  # with a GPU, "auto": exact search while the float32 vectors fit this
    save_every_items: int = 2_000  # write the index cache after this many new vectors (0: every commit)
    # index.backend = "milvus": the server, and how it builds and searches (docs/scale-out.md)
    milvus_uri: str = ""  # e.g. http://127.0.0.1:19530 (MMRAG_MILVUS_URI)
    milvus_token: str = ""  # "user:password" or an API key, when the server checks them (MMRAG_MILVUS_TOKEN)
    milvus_db: str = ""  # a database on the server ("" : the default one)
    milvus_index: str = "HNSW"  # HNSW | IVF_FLAT | FLAT | any Milvus index type (GPU_CAGRA... on a GPU Milvus)
    milvus_nlist: int = 1024  # IVF kinds: lists (they share ivf_nprobe); HNSW uses hnsw_m / ef_* above
    milvus_consistency: str = "Session"  # searches: Session | Bounded | Eventually | Strong
    # readers rebuild BM25 at most this often while the catalog changes (an ingest in another process);
    # 0 rebuilds on every search that finds the catalog moved
    bm25_refresh_s: float = 2.0

    def __post_init__(self) -> None:
        check = Problems("index")
        backend = normalise(self, "backend", "faiss")
        if not (isinstance(backend, str) and _BACKEND.match(backend)):
            check.add(f"index.backend {self.backend!r} is not a backend name (e.g. 'faiss')")
        check.non_empty("kind", self.kind)
        check.one_of("storage", normalise(self, "storage", "fp16"), get_args(IndexStorage))
        check.one_of("use_gpu", normalise(self, "use_gpu", "auto"), get_args(GpuUse))
        check.at_least("flat_threshold", self.flat_threshold, 0, integer=True)
        check.at_least("hnsw_m", self.hnsw_m, 2, integer=True)
        for name in ("hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            check.at_least(name, getattr(self, name), 1, integer=True)
        check.at_least("save_every_items", self.save_every_items, 0, integer=True)
        check.at_least("bm25_refresh_s", self.bm25_refresh_s, 0)
        check.at_least("milvus_nlist", self.milvus_nlist, 1, integer=True)
        check.at_least("gpu_flat_max_bytes", self.gpu_flat_max_bytes, 0, integer=True)
        check.one_of("milvus_consistency", self.milvus_consistency, ("Session", "Bounded", "Eventually", "Strong"))
        check.raise_if_any()


@dataclass(frozen=True)
class SearchConfig:
    """Fusion settings, set from ``mmrag eval retrieval --sweep`` (2-fold cross-validated) on the
    shared SciFact subset.

    Why each default is what it is (the fusion and its normalisation, rrf_k, depth, weights, the
    CLIP text scope, the modality balance and the text-similarity floor), with the numbers:
    ``docs/tuning.md`` (search settings).
    """

    k: int = 10
    depth: int = 100  # candidates taken from each run before fusion...
    depth_per_k: float = 4.0  # ...and at least this many per result asked for (k=100: 400 a run)
    # "rrf": weighted reciprocal rank fusion; "score": weighted sum of each run's normalised scores
    fusion: Fusion = "rrf"
    rrf_k: int = 10  # fusion "rrf": the rank constant
    score_normalisation: Normalisation = "minmax"  # fusion "score": how a run's scores are put on one scale
    weights: tuple[tuple[str, float], ...] = (("clip_text", 1.0), ("clip_image", 1.0), ("text", 1.0), ("bm25", 1.0))
    clip_text_scope: ClipTextScope = "visual"  # which CLIP items a text query's CLIP run ranks
    # 0..1: scale fused scores by (all runs / runs that could have found the item) ** balance (see
    # Retriever.fuse); 0 is plain RRF; no effect on a store of text alone
    modality_balance: float = 0.6
    # text-space candidates less similar than this to the query (MiniLM cosine) do not count in
    # fusion; -1 turns it off
    min_text_similarity: float = 0.2
    mmr: bool = False
    mmr_lambda: float = 0.7
    # one result per passage, photo or page: copies in other files (``retriever.copies``) are folded
    # into the best-ranked one and listed in its hit's ``copies``
    collapse_copies: bool = True

    def __post_init__(self) -> None:
        check = Problems("search")
        check.at_least("k", self.k, 1, integer=True)
        check.at_least("depth", self.depth, 1, integer=True)
        check.at_least("depth_per_k", self.depth_per_k, 1)
        check.at_least("rrf_k", self.rrf_k, 0)
        check.one_of("fusion", normalise(self, "fusion", "rrf"), FUSIONS)
        check.one_of("score_normalisation", normalise(self, "score_normalisation", "minmax"), NORMALISATIONS)
        unknown = sorted(str(name) for name, _ in self.weights if name not in RUN_NAMES)
        if unknown:
            check.add(f"search.weights names unknown run(s) {', '.join(unknown)}; expected {', '.join(RUN_NAMES)}")
        if any(not isinstance(w, (int, float)) or w < 0 for _, w in self.weights):
            check.add(f"search.weights must be >= 0, got {dict(self.weights)}")
        check.one_of("clip_text_scope", self.clip_text_scope, get_args(ClipTextScope))
        check.between("modality_balance", self.modality_balance, 0.0, 1.0)
        check.between("min_text_similarity", self.min_text_similarity, -1.0, 1.0)
        check.between("mmr_lambda", self.mmr_lambda, 0.0, 1.0)
        check.raise_if_any()

    def weight(self, run: str) -> float:
        """The fusion weight of ``run`` (1 when not set)."""
        return dict(self.weights).get(run, 1.0)

    def candidates(self, k: int, depth: int | None = None) -> int:
        """Candidates each run gives fusion for a query of ``k`` results (``depth``: the query's own)."""
        return max(depth or self.depth, math.ceil(self.depth_per_k * k), k)


_PLACEHOLDERS = ("{question}", "{evidence}")
_LLM_INT_FLOORS = {"max_images": 0, "max_image_px": 16, "max_evidence_chars": 50, "extractive_sentences": 1,
                   "max_tokens": 1, "max_retries": 0}


@dataclass(frozen=True)
class LlmConfig:
    """The answering model and what it is given. Relevance floors: see ``docs/tuning.md``."""

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
    # relevance floors: below them a hit is not evidence; none left -> "not found", no LLM call
    min_text_relevance: float = 0.25  # MiniLM question/chunk cosine
    min_image_relevance: float = 0.2  # CLIP text/image cosine (ViT-B/32 matched pairs ~0.3)
    extractive_sentences: int = 3
    timeout_s: float = 120.0
    max_retries: int = 1

    def __post_init__(self) -> None:
        check = Problems("llm")
        try:
            parse_llm_spec(self.spec)
        except ConfigError as exc:
            check.add(f"llm.spec: {exc}")
        for name, least in _LLM_INT_FLOORS.items():
            check.at_least(name, getattr(self, name), least, integer=True)
        check.at_least("temperature", self.temperature, 0)
        check.above("timeout_s", self.timeout_s, 0)
        check.between("min_text_relevance", self.min_text_relevance, -1.0, 1.0)
        check.between("min_image_relevance", self.min_image_relevance, -1.0, 1.0)
        if isinstance(self.prompt, str) and "{question}" in self.prompt:  # a template, not a file path
            for placeholder in _PLACEHOLDERS:
                if (count := self.prompt.count(placeholder)) != 1:
                    check.add(f"llm.prompt must contain {placeholder} exactly once (found {count})")
        check.raise_if_any()
