"""The GPU paths: FAISS searches on a GPU clone, and ``models.device`` choosing CUDA.

Marked ``gpu`` (deselected by default: ``python -m pytest -m gpu``); each test skips, saying why,
where faiss or torch sees no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from retriever.config import IndexConfig, ModelsConfig
from retriever.index.faiss_index import FaissIndex
from retriever.index.testing import unit_vectors

pytestmark = pytest.mark.gpu


def _faiss_gpus() -> int:
    import faiss

    return int(faiss.get_num_gpus())


def _require_torch_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture
def faiss_gpu() -> None:
    if _faiss_gpus() == 0:
        pytest.skip("faiss sees no GPU (faiss.get_num_gpus() is 0: a CPU build, or no GPU); "
                    "the mmrag[gpu] extra installs a GPU build")


@pytest.mark.parametrize("kind, storage", [("flat", "fp32"), ("flat", "fp16"), ("ivf", "fp32")])
def test_faiss_searches_on_a_gpu_clone_with_the_cpu_results(faiss_gpu: None, kind: str, storage: str) -> None:
    vecs, ids = unit_vectors(4000, 64, seed=1), np.arange(4000, dtype=np.int64)
    on_gpu = FaissIndex(64, IndexConfig(kind=kind, storage=storage, ivf_nprobe=64), n_hint=400)
    on_cpu = FaissIndex(64, IndexConfig(kind=kind, storage=storage, ivf_nprobe=64, use_gpu="never"), n_hint=400)
    for index in (on_gpu, on_cpu):
        index.add(ids, vecs)
    got, want = on_gpu.search(vecs[:100], 10), on_cpu.search(vecs[:100], 10)
    assert on_gpu.uses_gpu() and not on_cpu.uses_gpu()
    assert (got[1][:, 0] == want[1][:, 0]).mean() >= 0.99
    assert np.allclose(got[0][:, 0], want[0][:, 0], atol=1e-3)


def test_a_change_drops_the_gpu_clone_and_searches_see_it(faiss_gpu: None) -> None:
    index = FaissIndex(32, IndexConfig(kind="flat"))
    vecs = unit_vectors(100, 32, seed=2)
    index.add(np.arange(100, dtype=np.int64), vecs)
    index.search(vecs[:1], 1)
    assert index.uses_gpu()
    index.remove(np.arange(10, dtype=np.int64))
    assert not index.uses_gpu()  # the clone is stale: rebuilt on the next search
    _, got = index.search(vecs[:10], 3)
    assert index.uses_gpu() and not set(got.ravel().tolist()) & set(range(10))


def test_auto_kind_on_a_gpu_is_flat_then_ivf_and_removes_work(faiss_gpu: None) -> None:
    vecs, ids = unit_vectors(6000, 64, seed=4), np.arange(6000, dtype=np.int64)
    small = FaissIndex(64, IndexConfig(), n_hint=len(ids))  # fits the default budget: exact on the GPU
    big = FaissIndex(64, IndexConfig(gpu_flat_max_bytes=64 * 4 * 1000, ivf_nprobe=64), n_hint=len(ids))
    assert (small.kind, big.kind) == ("flat", "ivf")
    for index in (small, big):
        index.add(ids, vecs)
        _, got = index.search(vecs[:50], 5)
        assert index.uses_gpu() and (got[:, 0] == ids[:50]).mean() >= 0.95
        assert index.remove(ids[:50]) == 50
        _, got = index.search(vecs[:50], 5)
        assert not set(got.ravel().tolist()) & set(range(50))


def test_hnsw_stays_on_the_cpu(faiss_gpu: None) -> None:
    index = FaissIndex(32, IndexConfig(kind="hnsw"))
    index.add(np.arange(50, dtype=np.int64), unit_vectors(50, 32))
    index.search(unit_vectors(1, 32), 1)
    assert not index.uses_gpu()


def test_auto_device_is_cuda_in_fp16() -> None:
    _require_torch_cuda()
    from retriever.encoders.device import resolve_device

    plan = resolve_device(ModelsConfig())
    assert (plan.device, plan.precision, plan.is_cuda) == ("cuda", "fp16", True)
    assert resolve_device(ModelsConfig(device="cuda:0", precision="bf16")).device == "cuda:0"
    assert resolve_device(ModelsConfig(device="cpu")).device == "cpu"


def test_text_encoder_on_cuda_matches_the_cpu() -> None:
    _require_torch_cuda()
    from retriever.encoders import build_text_encoder

    texts = ["a red bicycle leaning on a wall", "the contract was signed in March"]
    gpu = build_text_encoder(ModelsConfig(device="cuda", precision="fp16"))
    cpu = build_text_encoder(ModelsConfig(device="cpu", precision="fp32"))
    assert gpu.device_plan.is_cuda
    got, want = gpu.encode_texts(texts), cpu.encode_texts(texts)
    assert got.dtype == np.float32 and (np.sum(got * want, axis=1) > 0.999).all()
