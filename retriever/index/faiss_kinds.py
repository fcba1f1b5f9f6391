"""Which FAISS index to build, and building it.

``IndexIDMap2`` over an index chosen by size: exact (flat) below ``index.flat_threshold``
vectors, HNSW above (or IVF / IVF-PQ / any faiss factory string when configured). Inner
product on L2-normalised vectors. Flat, HNSW and IVF keep vectors as ``index.storage``:
float16 by default, which is lossless because the catalog's durable copy is float16 already
(half the memory of float32 and faster scans; the numbers are in ``docs/tuning.md``).
"""

from __future__ import annotations

import math

import faiss

from retriever.config import IndexConfig
from retriever.errors import ConfigError

__all__ = ["EXACT_KINDS", "build_faiss_index", "choose_kind", "gpus_for", "ivf_lists", "keeps_exact_vectors",
           "untrained_storage"]

_STORAGE = {"fp16": "QT_fp16", "bf16": "QT_bf16", "sq8": "QT_8bit"}  # "fp32": plain float vectors
EXACT_KINDS = ("flat", "hnsw")  # kinds that keep each vector as such (IVF-PQ and factories may not)
_LOSSLESS_STORAGE = ("fp32", "fp16")  # lossless for the catalog's float16 vectors


def gpus_for(cfg: IndexConfig) -> int:
    """How many GPUs the indexes of ``cfg`` search on: faiss's count unless ``index.use_gpu`` is "never"."""
    return 0 if cfg.use_gpu == "never" else int(faiss.get_num_gpus())


def choose_kind(cfg: IndexConfig, n: int, dim: int = 512, gpus: int | None = None) -> str:
    """The index kind for ``n`` vectors of ``dim`` under ``cfg`` ("auto" picks by size and device).

    On the CPU: exact (flat) below ``index.flat_threshold``, HNSW from there. When faiss sees a
    GPU (``gpus``, default ``gpus_for(cfg)``): HNSW has no GPU implementation, so exact search on
    the GPU while the float32 vectors fit ``index.gpu_flat_max_bytes``, and IVF (its GPU version)
    beyond; both remove ids, and the GPU copy is re-made after a change.
    """
    kind = cfg.kind.strip()
    if kind.lower() != "auto":
        return kind
    if (gpus_for(cfg) if gpus is None else gpus) > 0:
        return "flat" if n * dim * 4 <= cfg.gpu_flat_max_bytes else "ivf"
    return "flat" if n < cfg.flat_threshold else "hnsw"


def ivf_lists(n: int) -> int:
    """Inverted lists for an IVF over ``n`` vectors (4 sqrt(n), the usual FAISS guideline)."""
    return int(min(65536, max(16, 4 * math.sqrt(max(n, 1)))))


def keeps_exact_vectors(kind: str, storage: str) -> bool:
    """Whether an index of ``kind`` and ``storage`` gives back exactly the catalog's float16 vectors."""
    return kind.lower() in EXACT_KINDS and storage in _LOSSLESS_STORAGE


def untrained_storage(cfg: IndexConfig) -> str:
    """A storage that needs no training, for the exact fallback of an IVF too small to train."""
    return "fp32" if cfg.storage == "fp32" else "fp16"


def _quantizer_type(storage: str) -> int | None:
    """The faiss scalar-quantizer type for ``storage``, None for plain float32."""
    if storage == "fp32":
        return None
    if storage not in _STORAGE:  # IndexConfig rejects these; a config made without checks may not
        raise ConfigError(f"index storage {storage!r} is not one of fp32, {', '.join(_STORAGE)}")
    return int(getattr(faiss.ScalarQuantizer, _STORAGE[storage]))


def build_faiss_index(
    kind: str, dim: int, cfg: IndexConfig, n_hint: int, storage: str | None = None
) -> faiss.IndexIDMap2:
    """``IndexIDMap2`` over the ``kind`` index, vectors kept as ``storage`` (default ``cfg.storage``)."""
    qt = _quantizer_type(cfg.storage if storage is None else storage)
    low = kind.lower()
    base: faiss.Index
    if low == "flat":
        base = faiss.IndexFlatIP(dim) if qt is None else faiss.IndexScalarQuantizer(dim, qt, faiss.METRIC_INNER_PRODUCT)
    elif low == "hnsw":
        base = _hnsw(dim, cfg, qt)
    elif low == "ivf":
        base = _ivf(dim, cfg, qt, n_hint)
    elif low == "ivfpq":
        m = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)
        base = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, ivf_lists(n_hint), m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        base = _factory(kind, dim)
    if isinstance(base, faiss.IndexIVF):
        base.nprobe = cfg.ivf_nprobe
    return faiss.IndexIDMap2(base)


def _hnsw(dim: int, cfg: IndexConfig, qt: int | None) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    if qt is None:
        hnsw: faiss.IndexHNSW = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip)
    else:  # the stubs type the quantizer as a ScalarQuantizer; faiss takes its QuantizerType (an int)
        hnsw = faiss.IndexHNSWSQ(dim, qt, cfg.hnsw_m, ip)  # type: ignore[arg-type]
    hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
    hnsw.hnsw.efSearch = cfg.hnsw_ef_search
    return hnsw


def _ivf(dim: int, cfg: IndexConfig, qt: int | None, n_hint: int) -> faiss.Index:
    ip = faiss.METRIC_INNER_PRODUCT
    coarse, lists = faiss.IndexFlatIP(dim), ivf_lists(n_hint)
    if qt is None:
        return faiss.IndexIVFFlat(coarse, dim, lists, ip)
    ivf = faiss.IndexIVFScalarQuantizer(coarse, dim, lists, qt, ip)
    ivf.by_residual = qt == faiss.ScalarQuantizer.QT_8bit  # fp16 of the vector itself is lossless
    return ivf


def _factory(kind: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, kind, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(
            f"index kind {kind!r} is neither flat/hnsw/ivf/ivfpq nor a faiss factory string: {exc}"
        ) from None
